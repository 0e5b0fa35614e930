"""The closed loop on a cluster with a real kubelet: a weak champion serves and logs its predictions;
in-distribution traffic leaves the policy quiet; shifted traffic, labelled by its clients through
/feedback, makes it detect drift; once a person approves (`regrow approve`), the retrain trains on the data
set plus the labelled live traffic, wins the gate, the alias moves, and the ModelDeployment rolls to it."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB, TrainingJobSpec, parse_spec
from regrow.cli import main
from regrow.controller.driftpolicy import http_query
from regrow.controller.kube import Kube, path
from regrow.controller.modeldeployment import serving_pods
from regrow.manifests.serving import metrics_address
from regrow.serving.labellers import HEADER
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train
from tests.conftest import Operator
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, get_custom, wait_for
from tests.integration.test_driftpolicy_prometheus import _series
from tests.unit.test_api import _example, _with


def _post(host: str, url_path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(host, 80, timeout=5)
    connection.request("POST", url_path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def _infer(host: str, rows: list[list[float]]) -> str:
    """The id the server issued, and logged the prediction under."""
    status, answer = _post(host, "/v2/models/iris/infer", {"id": "client-1", "inputs": [
        {"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]})  # fmt: skip
    assert status == 200, answer
    assert answer["id"] == "client-1"  # the request's id, echoed: never what feedback names
    return str(answer["parameters"]["prediction_id"])


def labeller(api: client.ApiClient, namespace: str) -> dict[str, str]:
    """The examples' labeller Secret, made in ``namespace`` (their ModelDeployment names it), and the header
    its token rides in."""
    secret = _example("Secret")
    Kube(api).create(path("v1", "secrets", namespace), secret)
    return {HEADER.decode(): next(iter(secret["stringData"].values()))}


def _send_labelled(host: str, frame: np.ndarray, species: np.ndarray, picks: np.ndarray,
                   token: dict[str, str]) -> None:  # fmt: skip
    """Requests of the rows ``picks`` names, two features moved by 2 sigma; each client then labels what
    it asked about, through the named labeller (``token``)."""
    shifted = frame[picks] + frame.std(axis=0) * np.array([2.0, 2.0, 0, 0])
    for rows, truth in zip(shifted, species[picks], strict=True):
        label = {"id": _infer(host, rows.tolist()), "label": truth.tolist()}
        status, answer = _post(host, "/v2/models/iris/feedback", label, token)
        assert status == 202 and answer["accepted"] == 1, answer
    status, answer = _post(host, "/v2/models/iris/feedback", label)  # no token: labellers are named
    assert status == 401, answer
    forged = {"id": "client-1", "label": ["virginica"] * 32}  # an id the server did not issue
    status, answer = _post(host, "/v2/models/iris/feedback", forged, token)
    assert status == 400 and "not a prediction id" in answer["error"], answer


def _logged(root: Path, kind: str) -> int:
    return sum(len(f.read_text().splitlines()) for f in (root / "registry" / "iris" / kind).rglob("*.jsonl"))


def _weak_champion(node_store: Path) -> tuple[Path, Registry, str]:
    """The iris data set in the store, and a weak model trained on it as the champion."""
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

    return data, registry, v1


def _policy() -> dict[str, Any]:
    policy = _example("DriftPolicy")
    for key, value in {"interval": "2s", "window": "10m", "minSamples": 300, "consecutiveBreaches": 2,
                       "tests": [{"type": "psi", "threshold": "0.2"}, {"type": "ks", "threshold": "0.15"}],
                       "retrain.template.spec.evaluation": {"holdoutPercent": 25, "seed": 7},
                       "retrain.template.spec.dataset.feedback": {}, "retrain.approval": "Manual"}.items():  # fmt: skip
        policy = _with(policy, f"spec.{key}", value)
    return policy


def _prometheus_source(
    api: client.ApiClient, namespace: str, prometheus: Callable[[list[str], dict[str, str]], str]
) -> dict[str, Any]:
    """A Prometheus on this node scraping the serving pods, as a PodMonitor would, as the policy's source."""
    pods = serving_pods(Kube(api), namespace, "iris")
    url = prometheus([metrics_address(p) for p in pods], {"namespace": namespace})
    wait_for(lambda: _series(url, "regrow_feature_bin_total"), 30, "a first scrape of the zero counters")
    return {"type": "Prometheus", "prometheus": {"url": url}}


def _poison(host: str, frame: np.ndarray, rng: np.random.Generator, token: dict[str, str]) -> None:
    """A hostile client with a labeller's token: 160 setosa-like rows, in four requests, labelled virginica."""
    for _ in range(4):
        rows = frame[rng.integers(0, 50, 40)] + rng.normal(0, 0.05, (40, 4))
        status, answer = _post(host, "/v2/models/iris/feedback",
                               {"id": _infer(host, rows.tolist()), "label": ["virginica"] * 40}, token)  # fmt: skip
        assert status == 202, answer


def _feature(policy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in policy["status"]["lastCheck"]["features"] if f["name"] == name)


def _promoted(tj: dict[str, Any], registry: Registry, v1: str, poisoned: bool) -> str | None:
    """The retrain's version if the gate promoted it; None when it refused the one a poisoner labelled."""
    cond = condition(tj, "Succeeded")
    promotion = tj["status"]["promotion"]
    assert promotion["improvement"]["holdout"] == "live" and promotion["regression"]["holdout"] == "curated"
    if poisoned:
        assert cond is not None and (cond["status"], cond["reason"]) == ("True", "GateRejected"), cond
        assert not promotion["regression"]["passed"] and registry.resolve("iris", "champion") == v1
        print(f"\npoisoned: {promotion['message']}")
        return None
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Promoted"), cond
    v2 = str(tj["status"]["artifact"]["version"])
    assert v2 != v1 and registry.resolve("iris", "champion") == v2
    return v2


@pytest.mark.parametrize(("source", "poisoned"), [("Pods", False), ("Prometheus", False), ("Pods", True)],
                         ids=["Pods", "Prometheus", "Pods-poisoned"])  # fmt: skip
def test_drift_retrains_and_the_better_model_rolls_out(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path, source: str,
    poisoned: bool, prometheus: Callable[[list[str], dict[str, str]], str],
) -> None:  # fmt: skip
    """The loop closes on drift, labelled by the examples' named labeller; with a poisoning client holding its
    token, the retrain trained on its labels loses too much on the curated holdout, which no client labels,
    and is not promoted."""
    data, registry, v1 = _weak_champion(node_store)
    policy = _policy()
    objects = client.CustomObjectsApi(node_api)
    rng = np.random.default_rng(0)
    frame = np.loadtxt(data, delimiter=",", skiprows=1, usecols=range(4))
    species = np.loadtxt(data, delimiter=",", skiprows=1, usecols=4, dtype=str)

    def dp() -> dict[str, Any]:
        return get_custom(node_api, node_namespace, DRIFT_POLICY.plural, "iris")

    def drift(reason: str) -> bool:
        return bool((condition(dp(), "DriftDetected") or {}).get("reason") == reason)

    def finished(name: str) -> dict[str, Any] | None:
        obj = Kube(node_api).get(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, node_namespace, name)) or {}
        return obj if (condition(obj, "Succeeded") or {}).get("status") in ("True", "False") else None

    def serving() -> str | None:
        md = get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris")
        return ((md.get("status") or {}).get("model") or {}).get("version")

    with node_operator(query=http_query):  # the Prometheus this test starts is the one it allows
        token = labeller(node_api, node_namespace)
        md = _with(_with(_example("ModelDeployment"), "spec.model.refreshInterval", "2s"), "spec.predictionLog",
                   {"samplePercent": 100})  # fmt: skip
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, md)
        wait_for(lambda: serving() == v1, 180, f"{v1} serving")
        if source == "Prometheus":
            policy["spec"]["source"] = _prometheus_source(node_api, node_namespace, prometheus)
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, DRIFT_POLICY.plural, policy)
        host = str(
            (Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor")) or {})["spec"]["clusterIP"]
        )

        wait_for(lambda: condition(dp(), "Ready"), 60, "the policy's first reading")
        for _ in range(20):  # 640 rows like the training data
            _infer(host, frame[rng.integers(0, len(frame), 32)].tolist())
        wait_for(lambda: drift("NoDrift"), 60, "a quiet check")
        assert not Kube(node_api).list(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, node_namespace))

        first_drifted = time.monotonic()
        _send_labelled(host, frame, species, rng.integers(0, len(frame), (40, 32)), token)
        if poisoned:
            _poison(host, frame, rng, token)
        wait_for(lambda: drift("DriftDetected"), 120, "drift")
        detected = time.monotonic() - first_drifted
        assert "psi" in _feature(dp(), "__prediction__")["scores"]  # the predicted classes, scored like a feature
        wait_for(lambda: dp()["status"].get("pendingApproval") == "iris-retrain-1", 30, "a retrain to approve")
        assert not Kube(node_api).list(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, node_namespace))
        wait_for(lambda: _logged(node_store, "feedback") >= 40 + 4 * poisoned, 60, "the labels written to the registry")
        approved = time.monotonic()
        assert main(["approve", "iris", "--namespace", node_namespace]) == 0
        tj = wait_for(lambda: finished("iris-retrain-1"), 300, "the retrain to finish")
        v2 = _promoted(tj, registry, v1, poisoned)
        if v2 is None:
            assert serving() == v1
            return
        wait_for(lambda: serving() == v2, 180, f"{v2} serving")
        rolled = time.monotonic() - approved
    lineage = dp()["status"]["trainingJobs"][0]
    assert lineage["name"] == "iris-retrain-1"
    live = json.loads((node_store / "registry/iris/versions" / v2 / "metadata.json").read_text())["dataset"]["feedback"]
    assert live["rows"] == 40 * 32 and live["unlabelled"] == live["predictions"] - 40
    message = tj["status"]["promotion"]["message"]
    print(f"\n{source}: first drifted request -> DriftDetected {detected:.1f}s; approval -> v2 serving {rolled:.1f}s; "
          f"v2 trained on 150 + {live['rows']} live rows; promotion: {message}")  # fmt: skip
