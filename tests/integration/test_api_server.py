"""The CRDs on a real kube-apiserver: installed, accepting the examples, rejecting bad objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regrow import GROUP, VERSION
from regrow.api import KINDS, MODEL_DEPLOYMENT, InvalidSpec, validate_object
from regrow.api.common import Condition
from regrow.api.modeldeployment import ModelDeploymentStatus, ServingModelStatus
from tests.cluster import Cluster
from tests.unit.test_api import _example, _with

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("crds")


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    kind = next(k for k in KINDS if k.kind == body["kind"])
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, body)
    return cast(dict[str, Any], created)


def test_crds_are_established_and_structural(cluster: Cluster, api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for kind in KINDS:
        crd = ext.read_custom_resource_definition(kind.crd_name)
        assert crd.status is not None
        conditions = {c.type: c.status for c in crd.status.conditions or []}
        assert conditions.get("Established") == "True"
        assert conditions.get("NonStructuralSchema") is None
    names = cluster.kubectl("api-resources", "--api-group", GROUP, "-o", "name").stdout.split()
    assert sorted(names) == sorted(k.crd_name for k in KINDS)


def test_every_example_is_accepted(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples"))
    listed = yaml.safe_load(cluster.kubectl("get", "-n", namespace, "regrow", "-o", "yaml").stdout)
    for item in listed["items"]:
        validate_object(item)  # what the server stored, defaults included, still parses
    assert sorted(i["kind"] for i in listed["items"]) == ["DriftPolicy", "ModelDeployment", "TrainingJob"]
    stored = next(i for i in listed["items"] if i["kind"] == "ModelDeployment")
    assert stored["spec"]["rollout"] == {"strategy": "RollingUpdate", "maxSurge": 1, "approval": "Automatic"}


# Each case: the API server and pydantic both reject it; the server's message names the field.
REJECTED = [
    ("TrainingJob", "spec.dataset", ..., "spec.dataset: Required value"),
    ("TrainingJob", "spec.model.algorithm", "xgboost", 'spec.model.algorithm: Unsupported value: "xgboost"'),
    ("TrainingJob", "spec.promote.minImprovement", 0.01, "spec.promote.minImprovement: Invalid value"),
    ("TrainingJob", "spec.evaluation.holdoutPercent", 90, "should be less than or equal to 50"),
    (
        "ModelDeployment",
        "spec.replicas.min",
        -1,
        "spec.replicas.min in body should be greater than or equal to 1",
    ),
    ("ModelDeployment", "spec.model.version", "abc123", "must validate one and only one schema (oneOf)"),
    ("ModelDeployment", "spec.model.registry", "http://x", "spec.model.registry in body should match"),
    ("DriftPolicy", "spec.driftShare", "1.5", "spec.driftShare in body should match"),
    ("DriftPolicy", "spec.tests", [], "spec.tests in body should have at least 1 items"),
]


@pytest.mark.parametrize(("kind", "path", "value", "message"), REJECTED)
def test_invalid_objects_are_rejected_by_the_api_server(
    api: client.ApiClient, namespace: str, kind: str, path: str, value: Any, message: str
) -> None:
    body = _with(_example(kind), path, value)
    with pytest.raises(ApiException) as caught:
        _create(api, namespace, body)
    assert caught.value.status == 422
    assert message in json.loads(str(caught.value.body))["message"]
    with pytest.raises(InvalidSpec):
        validate_object(body)


def test_unknown_fields_are_rejected_by_kubectl(cluster: Cluster, namespace: str) -> None:
    body = _with(_example("ModelDeployment"), "spec.model.bogus", 1)
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body), check=False)
    assert proc.returncode != 0
    assert 'unknown field "bogus"' in proc.stderr


def test_min_above_max_is_caught_by_the_operator_side_validation(api: client.ApiClient, namespace: str) -> None:
    # Kubernetes 1.20 cannot compare two fields in a CRD schema (CEL rules arrived in 1.25), so the
    # server stores it; pydantic is the layer that refuses it, and the reconciler reports InvalidSpec.
    body = _with(_example("ModelDeployment"), "spec.replicas.min", 9)
    stored = _create(api, namespace, body)
    with pytest.raises(InvalidSpec, match=r"replicas.min \(9\) must not exceed replicas.max \(4\)"):
        validate_object(stored)


def test_status_from_the_models_is_accepted_and_shown_by_kubectl(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    md = _create(api, namespace, _example("ModelDeployment"))
    status = ModelDeploymentStatus(
        observed_generation=md["metadata"]["generation"],
        conditions=[
            Condition(
                type="Ready",
                status="True",
                observed_generation=1,
                last_transition_time="2026-11-23T12:00:00Z",
                reason="Available",
                message="2/2 replicas serve iris 3f2a9c1d",
            )
        ],
        model=ServingModelStatus(uri="file:///var/lib/regrow/registry/iris/versions/3f2a9c1d", version="3f2a9c1d"),
        replicas=2,
        ready_replicas=2,
        url="http://iris.default.svc.cluster.local",
    )
    objects = client.CustomObjectsApi(api)
    name = md["metadata"]["name"]
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, name, {"status": status.to_wire()}
    )
    stored = cast(
        dict[str, Any],
        objects.get_namespaced_custom_object(GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, name),
    )
    assert ModelDeploymentStatus.model_validate(stored["status"]) == status

    table = cluster.kubectl("get", "md", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "MODEL",
        "ALIAS",
        "VERSION",
        "READY",
        "REPLICAS",
        "REASON",
        "URL",
        "AGE",
    ]
    row = table[1].split()
    assert row[:7] == ["iris", "iris", "champion", "3f2a9c1d", "True", "2", "Available"]
    assert row[7] == "http://iris.default.svc.cluster.local"
