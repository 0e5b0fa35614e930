"""The closed loop on a cluster with a real kubelet: a weak champion serves; in-distribution traffic
leaves the policy quiet; shifted traffic makes it detect drift and retrain; the retrained model wins the
gate, the alias moves, and the ModelDeployment rolls to it."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB, TrainingJobSpec, parse_spec
from regrow.controller.kube import Kube, path
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train
from tests.conftest import Operator
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, get_custom, wait_for
from tests.unit.test_api import _example, _with


def _post(host: str, rows: list[list[float]]) -> int:
    body = json.dumps({"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]})
    connection = http.client.HTTPConnection(host, 80, timeout=5)
    connection.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
    status = connection.getresponse().status
    connection.close()
    return status


def test_drift_retrains_and_the_better_model_rolls_out(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    data = node_store / "datasets" / "iris.csv"
    data.parent.mkdir()
    data.write_bytes(sample_csv("iris"))
    weak = parse_spec(TrainingJobSpec, {
        "dataset": {"uri": "file:///var/lib/regrow/datasets/iris.csv", "target": "species"},
        "model": {"algorithm": "logisticRegression", "params": {"C": "0.0001", "max_iter": 20}},
        "evaluation": {"holdoutPercent": 25, "seed": 7},
        "output": {"registry": "file:///var/lib/regrow/registry", "modelName": "iris"},
        "promote": {"alias": "champion"},
    })  # fmt: skip
    registry = Registry(open_store(f"file://{node_store}/registry"))
    v1 = train(weak, data.read_bytes(), registry, {}).version
    own_like_a_trainer_pod(node_store)

    policy = _example("DriftPolicy")
    for key, value in {"interval": "2s", "window": "10m", "minSamples": 300, "consecutiveBreaches": 2,
                       "tests": [{"type": "psi", "threshold": "0.2"}, {"type": "ks", "threshold": "0.15"}],
                       "retrain.template.spec.evaluation": {"holdoutPercent": 25, "seed": 7}}.items():  # fmt: skip
        policy = _with(policy, f"spec.{key}", value)
    objects = client.CustomObjectsApi(node_api)
    rng = np.random.default_rng(0)
    frame = np.loadtxt(data, delimiter=",", skiprows=1, usecols=range(4))

    def dp() -> dict[str, Any]:
        return get_custom(node_api, node_namespace, DRIFT_POLICY.plural, "iris")

    def drift(reason: str) -> bool:
        cond = condition(dp(), "DriftDetected")
        return cond is not None and cond["reason"] == reason

    def finished(name: str) -> dict[str, Any] | None:
        obj = get_custom(node_api, node_namespace, TRAINING_JOB.plural, name)
        return obj if (condition(obj, "Succeeded") or {}).get("status") in ("True", "False") else None

    def serving() -> str | None:
        md = get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris")
        return ((md.get("status") or {}).get("model") or {}).get("version")

    with node_operator():
        md = _with(_example("ModelDeployment"), "spec.model.refreshInterval", "2s")
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, md)
        wait_for(lambda: serving() == v1, 180, f"{v1} serving")
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, DRIFT_POLICY.plural, policy)
        host = str(
            (Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor")) or {})["spec"]["clusterIP"]
        )

        wait_for(lambda: condition(dp(), "Ready"), 60, "the policy's first reading")
        for _ in range(20):  # 640 rows like the training data
            assert _post(host, frame[rng.integers(0, len(frame), 32)].tolist()) == 200
        wait_for(lambda: drift("NoDrift"), 60, "a quiet check")
        assert not Kube(node_api).list(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, node_namespace))

        first_drifted = time.monotonic()
        shifted = frame[rng.integers(0, len(frame), (40, 32))] + frame.std(axis=0) * np.array([2.0, 2.0, 0, 0])
        for rows in shifted:
            assert _post(host, rows.tolist()) == 200
        wait_for(lambda: drift("DriftDetected") or dp()["status"].get("trainingJobs"), 120, "drift")
        detected = time.monotonic() - first_drifted
        wait_for(lambda: dp()["status"].get("trainingJobs"), 60, "a retrain")
        created = time.monotonic() - first_drifted
        tj = wait_for(lambda: finished("iris-retrain-1"), 300, "the retrain to finish")
        cond = condition(tj, "Succeeded")
        assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Promoted"), cond
        v2 = tj["status"]["artifact"]["version"]
        assert v2 != v1 and registry.resolve("iris", "champion") == v2
        wait_for(lambda: serving() == v2, 180, f"{v2} serving")
        rolled = time.monotonic() - first_drifted
    lineage = dp()["status"]["trainingJobs"][0]
    assert lineage["name"] == "iris-retrain-1"
    print(f"\nfirst drifted request -> DriftDetected {detected:.1f}s, -> TrainingJob created {created:.1f}s, "
          f"-> v2 serving {rolled:.1f}s; promotion: {tj['status']['promotion']['message']}")  # fmt: skip
