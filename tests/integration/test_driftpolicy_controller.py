"""The DriftPolicy reconciler on a real API server. No kubelet runs here, so the test plays both the
kubelet (a serving pod turns Running and Ready) and the pod's HTTP side (its /metrics counters and its
reference profile), and checks what the operator concludes and creates."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.cli import main
from regrow.controller.kube import Kube, path
from regrow.drift.profile import Profile, fit_profile
from regrow.manifests.common import PodDefaults
from tests.cluster import free_port
from tests.conftest import Operator
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.unit.test_api import _example, _with

pytestmark = pytest.mark.usefixtures("no_kubelet")
FEATURES = ["a", "b", "c"]


POD_METRICS = f"10.1.2.3:{PodDefaults.metrics_port}"  # where the operator reads the serving pod's /metrics


class FakePod:
    """A serving pod's HTTP answers: its profile and its cumulative bin counters."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.counts = np.zeros(int(profile.sizes.sum()), dtype=np.int64)
        self.lock = threading.Lock()

    def send(self, rows: np.ndarray) -> None:
        with self.lock:
            self.counts = self.counts + self.profile.bin_counts(rows)

    def fetch(self, address: str, url_path: str) -> bytes | None:
        assert address == POD_METRICS  # the pod's port named metrics
        return self.answer(url_path)

    def answer(self, url_path: str) -> bytes:
        """What the pod answers at ``url_path``: its reference profile or its /metrics."""
        if url_path == "/v2/models/iris/profile":
            return self.profile.to_json()
        assert url_path == "/metrics"
        with self.lock:
            parts = self.profile.split(self.counts)
        lines = ["# TYPE regrow_feature_bin_total counter"]
        for feature, part in zip(self.profile.features, parts, strict=True):
            for label, value in zip(feature.labels, part.tolist(), strict=True):
                labels = f'bin="{label}",feature="{feature.name}",model="iris",version="v1"'
                lines.append(f"regrow_feature_bin_total{{{labels}}} {value}.0")
        return ("\n".join(lines) + "\n").encode()


def _custom(api: client.ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _drift(api: client.ApiClient, namespace: str, status: str, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get_custom(api, namespace, DRIFT_POLICY.plural, "iris")
        cond = condition(obj, "DriftDetected")
        return obj if cond and (cond["status"], cond["reason"]) == (status, reason) else None

    return wait_for(probe, 120, f"DriftDetected={status} ({reason})")


def _serve_v1(api: client.ApiClient, namespace: str, version: str = "v1", pod_ip: str = "10.1.2.3") -> None:
    """The ModelDeployment iris serving ``version`` from one Running, Ready pod at ``pod_ip`` (the kubelet's
    part played here)."""
    _custom(api, namespace, MODEL_DEPLOYMENT.plural, _example("ModelDeployment"))
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, "iris",
        {"status": {"model": {"uri": f"file:///var/lib/regrow/registry/iris/versions/{version}", "version": version}}},
    )  # fmt: skip
    pods = wait_for(
        lambda: Kube(api).list(path("v1", "pods", namespace), "regrow.dev/modeldeployment=iris"), 30, "a pod"
    )
    running = {"phase": "Running", "podIP": pod_ip, "conditions": [{"type": "Ready", "status": "True"}]}
    client.CoreV1Api(api).patch_namespaced_pod_status(pods[0]["metadata"]["name"], namespace, {"status": running})


def _policy(**spec: Any) -> dict[str, Any]:
    policy = _example("DriftPolicy")
    for key, value in spec.items():
        policy = _with(policy, f"spec.{key.replace('__', '.')}", value)
    return policy


def test_drift_is_detected_and_retrains_once(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    def policy_status() -> dict[str, Any]:
        return get_custom(api, namespace, DRIFT_POLICY.plural, "iris").get("status") or {}

    rng = np.random.default_rng(0)
    pod = FakePod(fit_profile(rng.normal(0, 1, (5000, 3)), FEATURES))
    policy = _policy(interval="1s", window="10m", minSamples=200, consecutiveBreaches=2,
                     tests=[{"type": "psi", "threshold": "0.2"}, {"type": "ks"}])  # set, and calibrated  # fmt: skip
    metrics_port = free_port()
    with operator(fetch=pod.fetch, metrics_port=metrics_port, metrics_address="127.0.0.1"):
        _serve_v1(api, namespace)

        _custom(api, namespace, DRIFT_POLICY.plural, policy)
        wait_for(lambda: policy_status().get("conditions"), 30, "a first reading")
        pod.send(rng.normal(0, 1, (400, 3)))  # in distribution
        obj = _drift(api, namespace, "False", "NoDrift")
        assert obj["status"]["lastCheck"]["version"] == "v1"
        assert obj["status"]["lastCheck"]["samples"] >= 400

        shifted = rng.normal(0, 1, (4000, 3))
        shifted[:, :2] += 2.0  # two of three features move by 2 sigma
        pod.send(shifted)
        obj = _drift(api, namespace, "True", "DriftDetected")
        wait_for(
            lambda: get_custom(api, namespace, DRIFT_POLICY.plural, "iris")["status"].get("trainingJobs"),
            30,
            "a retrain",
        )
        pod.send(shifted)  # drift goes on: the cooldown holds any second retrain back
        wait_for(lambda: policy_status().get("consecutiveBreaches", 0) >= 2, 30, "more breaches")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.read().decode())
                for s in family.samples
            }

    obj = get_custom(api, namespace, DRIFT_POLICY.plural, "iris")
    features = {f["name"]: f for f in obj["status"]["lastCheck"]["features"]}
    assert features["a"]["drifted"] and features["b"]["drifted"]
    assert float(features["a"]["scores"]["psi"]) > 0.2 > float(features["c"]["scores"]["psi"])
    assert {f["thresholds"]["psi"] for f in features.values()} == {"0.2"}
    ks_a = float(features["a"]["thresholds"]["ks"])  # calibrated to 5,000 reference rows and the window's
    assert 0 < ks_a < 0.1 < float(features["a"]["scores"]["ks"])
    tjs = Kube(api).list(path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, namespace), "regrow.dev/driftpolicy=iris")
    assert [tj["metadata"]["name"] for tj in tjs] == ["iris-retrain-1"]
    assert [r["name"] for r in obj["status"]["trainingJobs"]] == ["iris-retrain-1"]
    (tj,) = tjs
    assert tj["metadata"]["ownerReferences"][0]["kind"] == "DriftPolicy"
    assert tj["metadata"]["labels"]["team"] == "ml-platform"
    assert tj["spec"]["model"]["algorithm"] == "randomForest"
    lineage = json.loads(tj["metadata"]["annotations"]["regrow.dev/drift-check"])
    assert lineage["version"] == "v1" and lineage["drifted"] and set(lineage["drifted"]) <= {"a", "b"}
    assert all("psi" in scores for scores in lineage["drifted"].values())
    assert any(e[:2] == ("Normal", "Retraining") for e in events_for(api, namespace, "iris"))

    _operator_metrics(metrics, namespace, ks_a)


def _operator_metrics(metrics: dict[tuple[str, Any], float], namespace: str, ks_a: float) -> None:
    """The operator's /metrics after the check that drifted and retrained."""
    ids = (("deployment", "iris"), ("namespace", namespace), ("policy", "iris"))
    assert metrics[("regrow_retrains_total", ids)] == 1
    assert metrics[("regrow_drift_detected", ids)] == 1  # as the DriftDetected condition said just before
    outcomes = {dict(k)["outcome"]: v for (name, k), v in metrics.items() if name == "regrow_retrain_outcomes_total"}
    assert outcomes == dict.fromkeys(["Failed", "Rejected", "Published", "RolledBack", "Serving", "Deleted"], 0)
    assert metrics[("regrow_operator_leader", ())] == 1

    def series(name: str, test: str) -> float:
        return metrics[(name, tuple(sorted((*ids, ("version", "v1"), ("feature", "a"), ("test", test)))))]

    assert series("regrow_drift_score", "psi") > 0.2
    assert series("regrow_drift_threshold", "psi") == 0.2
    assert series("regrow_drift_threshold", "ks") == ks_a
    assert metrics[("regrow_operator_reconciles_total", (("kind", "DriftPolicy"), ("result", "ok")))] >= 3


def test_a_manual_retrain_waits_for_regrow_approve(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    def policy_status() -> dict[str, Any]:
        return get_custom(api, namespace, DRIFT_POLICY.plural, "iris").get("status") or {}

    def retrains() -> list[str]:
        tjs = path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, namespace)
        return [tj["metadata"]["name"] for tj in Kube(api).list(tjs, "regrow.dev/driftpolicy=iris")]

    rng = np.random.default_rng(1)
    pod = FakePod(fit_profile(rng.normal(0, 1, (5000, 3)), FEATURES))
    policy = _policy(interval="1s", minSamples=200, consecutiveBreaches=1, retrain__approval="Manual")
    approve = ["approve", "iris", "--namespace", namespace]
    with operator(fetch=pod.fetch):
        _serve_v1(api, namespace)
        _custom(api, namespace, DRIFT_POLICY.plural, policy)
        wait_for(lambda: policy_status().get("conditions"), 30, "a first reading")
        assert main(approve) == 1  # nothing waits yet

        shifted = rng.normal(0, 1, (2000, 3)) + 2.0
        pod.send(shifted)
        wait_for(lambda: policy_status().get("pendingApproval") == "iris-retrain-1", 30, "a pending retrain")
        pod.send(shifted)
        wait_for(lambda: policy_status().get("consecutiveBreaches", 0) >= 2, 30, "another check")
        assert retrains() == []  # drift goes on, and still nothing is created without approval
        assert any(e[1] == "ApprovalPending" for e in events_for(api, namespace, "iris"))

        assert main(approve) == 0
        wait_for(lambda: retrains() == ["iris-retrain-1"], 30, "the approved retrain")
        wait_for(lambda: "pendingApproval" not in policy_status(), 30, "the approval consumed")
    assert policy_status()["retrains"] == 1
