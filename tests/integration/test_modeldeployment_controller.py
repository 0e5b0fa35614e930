"""The ModelDeployment reconciler on a real API server with the real Deployment controller (no kubelet:
the test plays its part where pods must fail)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.controller.kube import Kube, path
from tests.conftest import TEST_IMAGE, Operator
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.unit.test_api import _example, _with
from tests.unit.test_trainingjob_reconciler import restricted_violations

pytestmark = pytest.mark.usefixtures("no_kubelet")
LABEL = "regrow.dev/modeldeployment=iris"


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, body
    )


def _children(api: client.ApiClient, namespace: str) -> dict[str, list[dict[str, Any]]]:
    kube = Kube(api)
    found = {
        "Deployment": kube.list(path("apps/v1", "deployments", namespace), LABEL),
        "Service": kube.list(path("v1", "services", namespace), LABEL),
        "HorizontalPodAutoscaler": kube.list(path("autoscaling/v2beta2", "horizontalpodautoscalers", namespace), LABEL),
        "PodDisruptionBudget": kube.list(path("policy/v1beta1", "poddisruptionbudgets", namespace), LABEL),
    }
    return found


def _status(api: client.ApiClient, namespace: str, type_: str, want: str, reason: str | None = None) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")
        cond = condition(obj, type_)
        return obj if cond and cond["status"] == want and reason in (None, cond["reason"]) else None

    return wait_for(probe, 60, f"iris {type_}={want} {reason or ''}")


def test_children_are_built_once_and_follow_the_spec(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    with operator():
        _create(api, namespace, _example("ModelDeployment"))
        obj = _status(api, namespace, "Ready", "Unknown", "Starting")
        assert obj["status"]["url"] == f"http://iris-predictor.{namespace}.svc.cluster.local/v2/models/iris"
        assert condition(obj, "Progressing")["reason"] == "RollingOut"  # type: ignore[index]
        assert obj["status"]["observedGeneration"] == 1
    with operator():  # a restart finds everything in place
        wait_for(lambda: all(len(v) == 1 for v in _children(api, namespace).values()), 30, "the four children")
    children = _children(api, namespace)
    assert {k: len(v) for k, v in children.items()} == {
        "Deployment": 1,
        "Service": 1,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
    }
    for kind, (child,) in children.items():
        assert child["metadata"]["name"] == "iris-predictor", kind
        assert child["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    deployment = children["Deployment"][0]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    assert container["image"] == TEST_IMAGE and container["args"] == ["serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REGROW_MODEL_ALIAS"] == "champion" and "REGROW_MODEL_VERSION" not in env
    assert env["REGROW_REGISTRY"] == "file:///var/lib/regrow/registry"
    hpa = children["HorizontalPodAutoscaler"][0]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert children["Service"][0]["spec"]["ports"][0]["targetPort"] == "http"
    # The key that signs prediction ids: made once (a restart keeps it), owned, read by the pods from the Secret.
    secret = Kube(api).get(path("v1", "secrets", namespace, "iris-feedback-key")) or {}
    assert len(base64.b64decode(secret["data"]["key"])) >= 43
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    key_ref = {e["name"]: e.get("valueFrom") for e in container["env"]}["REGROW_FEEDBACK_KEY"]
    assert key_ref == {"secretKeyRef": {"name": "iris-feedback-key", "key": "key"}}

    with operator():
        patch = {"spec": {"replicas": {"max": 6}, "model": {"alias": None, "version": "0123456789abcdef"}}}
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, "iris", patch
        )
        wait_for(
            lambda: _children(api, namespace)["HorizontalPodAutoscaler"][0]["spec"]["maxReplicas"] == 6, 30, "HPA max 6"
        )
    deployment = _children(api, namespace)["Deployment"][0]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["regrow.dev/model-version"] == "0123456789abcdef"
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env["REGROW_MODEL_VERSION"] == "0123456789abcdef" and "REGROW_MODEL_ALIAS" not in env


def test_crashing_pods_make_it_not_ready(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    core = client.CoreV1Api(api)
    with operator():
        _create(api, namespace, _example("ModelDeployment"))
        pods = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector=LABEL).items, 30, "a pod")
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container=server"}
        status = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 3,
                    "image": TEST_IMAGE,
                    "imageID": "",
                    "state": {"waiting": waiting},
                }
            ],
        }
        core.patch_namespaced_pod_status(str(pods[0].metadata.name), namespace, {"status": status})  # type: ignore[union-attr]
        obj = _status(api, namespace, "Ready", "False", "CrashLoopBackOff")
    assert condition(obj, "Ready")["message"] == waiting["message"]  # type: ignore[index]
    assert condition(obj, "Available")["reason"] == "CrashLoopBackOff"  # type: ignore[index]
    assert ("Warning", "CrashLoopBackOff", waiting["message"]) in events_for(api, namespace, "iris")


def test_an_invalid_spec_is_reported_not_retried(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    with operator():
        _create(api, namespace, _with(_example("ModelDeployment"), "spec.replicas.min", 9))
        obj = _status(api, namespace, "Ready", "False", "InvalidSpec")
    assert "replicas.min (9) must not exceed replicas.max (4)" in condition(obj, "Ready")["message"]  # type: ignore[index]
    assert any(e[:2] == ("Warning", "InvalidSpec") for e in events_for(api, namespace, "iris"))
    assert all(v == [] for v in _children(api, namespace).values())
