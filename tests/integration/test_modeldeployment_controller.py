"""The ModelDeployment reconciler on a real API server with the real Deployment controller (no kubelet:
the test plays its part where pods must fail)."""

from __future__ import annotations

import base64
import collections
import time
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT, ModelDeploymentSpec, parse_spec
from regrow.api.pod import PodOptions
from regrow.cli import main
from regrow.contracts import key_fingerprint
from regrow.controller.children import HASH_ANNOTATION, LEGACY_HASH_ANNOTATION, LEGACY_MANAGER, holds, object_path
from regrow.controller.kube import Kube, path
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.serving import autoscaler, deployment, disruption_budget, service
from tests.cluster import Cluster, free_port
from tests.conftest import TEST_IMAGE, Operator
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.unit.test_api import _example, _with
from tests.unit.test_pod_options import POD
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


def _key_env(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    (live,) = _children(api, namespace)["Deployment"]
    env = live["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "FEEDBACK" in e["name"]}


def _fingerprint(api: client.ApiClient, namespace: str, name: str) -> str:
    secret = Kube(api).get(path("v1", "secrets", namespace, name)) or {}
    return key_fingerprint(base64.b64decode(secret["data"]["key"]))


def test_the_key_is_regrows_own_and_a_missing_or_rotated_one_is_made_anew(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """A Secret of the key's name that regrow did not make is never used (before, it was adopted as it was);
    the key regrow makes is recorded by its fingerprint; one a pod cannot find (deleted to revoke it: pods
    could not start, forever) and `regrow rotate-key` each make the next, and the pods keep the key before."""
    core, secrets = client.CoreV1Api(api), path("v1", "secrets", namespace)
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iris-feedback-key"},
               "stringData": {"key": "a key someone else chose, 32 bytes or more"}}  # fmt: skip
    Kube(api).create(secrets, foreign)
    with operator():
        assert main(["rotate-key", "iris", "--namespace", namespace]) == 1  # no ModelDeployment yet
        _create(api, namespace, _example("ModelDeployment"))
        made = wait_for(lambda: get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris").get("status", {})
                        .get("feedbackKey"), 30, "regrow's own key")  # fmt: skip
        assert made["secretName"] == "iris-feedback-key-2" and made["generation"] == 2
        assert made["fingerprint"] == _fingerprint(api, namespace, "iris-feedback-key-2")
        assert "FeedbackKeyConflict" in [reason for _, reason, _ in events_for(api, namespace, "iris")]
        wait_for(lambda: _children(api, namespace)["Deployment"], 30, "the Deployment")
        assert _key_env(api, namespace) == {"REGROW_FEEDBACK_KEY": {"name": "iris-feedback-key-2", "key": "key"}}

        core.delete_namespaced_secret("iris-feedback-key-2", namespace)  # revoked: new pods cannot start
        pod = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector=LABEL).items, 30, "a pod")[0]
        waiting = {"reason": "CreateContainerConfigError", "message": 'secret "iris-feedback-key-2" not found'}
        status = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [
            {"name": "server", "ready": False, "restartCount": 0, "image": TEST_IMAGE, "imageID": "",
             "state": {"waiting": waiting}}]}  # fmt: skip
        core.patch_namespaced_pod_status(str(pod.metadata.name), namespace, {"status": status})  # type: ignore[union-attr]
        wait_for(lambda: _key_env(api, namespace)["REGROW_FEEDBACK_KEY"]["name"] == "iris-feedback-key-3", 30,
                 "a new key")  # fmt: skip
        assert _key_env(api, namespace)["REGROW_FEEDBACK_PREVIOUS_KEY"] == {
            "name": "iris-feedback-key-2", "key": "key", "optional": True}  # fmt: skip

        assert main(["rotate-key", "iris", "--namespace", namespace]) == 0
        wait_for(lambda: _key_env(api, namespace)["REGROW_FEEDBACK_KEY"]["name"] == "iris-feedback-key-4", 30,
                 "the rotated key")  # fmt: skip
        record = get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")["status"]["feedbackKey"]
    assert record["previousFingerprint"] == _fingerprint(api, namespace, "iris-feedback-key-3")
    assert record["fingerprint"] == _fingerprint(api, namespace, "iris-feedback-key-4") and record["generation"] == 4
    assert _fingerprint(api, namespace, "iris-feedback-key") == key_fingerprint(
        b"a key someone else chose, 32 bytes or more"
    )
    reasons = [reason for _, reason, _ in events_for(api, namespace, "iris")]
    assert reasons.count("FeedbackKeyCreated") == 1 and reasons.count("FeedbackKeyRotated") == 2


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


def test_a_deleted_child_is_put_back_by_its_watch_and_a_resync_writes_nothing(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a resync period of an hour, a child deleted by someone else comes back within seconds: its watch
    wakes the owner. Then, with a resync every second, looking again at a ModelDeployment that nothing changed
    writes nothing: no status, no child, no Event."""
    monkeypatch.setenv("REGROW_RESYNC_SECONDS", "3600")
    with operator():
        _create(api, namespace, _example("ModelDeployment"))
        wait_for(lambda: all(len(v) == 1 for v in _children(api, namespace).values()), 30, "the four children")
        _status(api, namespace, "Ready", "Unknown", "Starting")
        for kind in ("Service", "Deployment"):
            (gone,) = _children(api, namespace)[kind]
            started = time.monotonic()
            cluster.kubectl("delete", kind.lower(), "iris-predictor", "-n", namespace, "--wait=false")

            def back(kind: str = kind, uid: str = gone["metadata"]["uid"]) -> bool:
                return any(c["metadata"]["uid"] != uid for c in _children(api, namespace)[kind])

            wait_for(back, 10, f"the {kind} put back")
            print(f"\n{kind} deleted and put back in {time.monotonic() - started:.2f}s")
    monkeypatch.setenv("REGROW_RESYNC_SECONDS", "1")
    port = free_port()
    with operator(metrics_port=port, metrics_address="127.0.0.1"):
        time.sleep(3)  # the restart's first look
        before = _counted(port)
        time.sleep(6)
        after = _counted(port)
    assert after["reconciles"] - before["reconciles"] >= 4  # it did look again, every second or so
    assert [after[verb] - before[verb] for verb in ("POST", "PATCH", "APPLY")] == [0, 0, 0]  # and wrote nothing


def _counted(port: int) -> dict[str, float]:
    """The ModelDeployment reconciles the operator on ``port`` has finished without error, and its requests to
    the API server by verb (the Lease's renewals aside)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counted: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "regrow_operator_reconciles_total" and s.labels == {"kind": "ModelDeployment", "result": "ok"}:
                counted["reconciles"] += s.value
            if s.name == "regrow_operator_api_requests_total" and s.labels["resource"] != "leases":
                counted[s.labels["verb"]] += s.value
    return counted


def _live(api: client.ApiClient, namespace: str, kind: str) -> dict[str, Any]:
    (child,) = _children(api, namespace)[kind]
    return child


def _limits(deployment: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    return limits


def test_children_converge_on_what_regrow_sets_and_leave_the_rest_alone(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server-side apply: a field regrow sets and someone edited is set back (by the watch: the resync is an
    hour away); a field someone else added stays; replicas scaled as the autoscaler would are never reset;
    a field regrow no longer sets is removed."""
    monkeypatch.setenv("REGROW_RESYNC_SECONDS", "3600")
    with operator():
        _create(api, namespace, _example("ModelDeployment"))
        wait_for(lambda: all(len(v) == 1 for v in _children(api, namespace).values()), 30, "the four children")
        kubectl = ("-n", namespace)
        cluster.kubectl("patch", "hpa", "iris-predictor", *kubectl, "--type=merge", "-p", '{"spec":{"maxReplicas":9}}')
        cluster.kubectl("label", "deployment", "iris-predictor", *kubectl, "team=ml")
        cluster.kubectl("scale", "deployment", "iris-predictor", *kubectl, "--replicas=3")
        wait_for(lambda: _live(api, namespace, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 4, 10, "max 4")
        patch = {"spec": {"resources": {"limits": {"memory": None}}}}  # regrow no longer sets a memory limit
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, "iris", patch
        )

        def applied() -> dict[str, Any] | None:
            live = _live(api, namespace, "Deployment")
            return live if "memory" not in _limits(live) else None

        live = wait_for(applied, 15, "the Deployment without a memory limit")
    assert live["spec"]["replicas"] == 3  # the autoscaler's (here kubectl's), not reset to replicas.min
    assert live["metadata"]["labels"]["team"] == "ml"
    assert _limits(live) == {"cpu": "1"}


def test_children_made_by_merge_patches_are_taken_over_without_a_roll(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """Children as the operator made them before server-side apply (created and merge-patched under the
    client's default field manager, with a digest annotation), replicas scaled since: the operator takes them
    over without rolling the pods or resetting replicas, and from then on removes what it no longer sets."""
    _create(api, namespace, _example("ModelDeployment"))
    md = get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")
    owner, spec = Owner.of(md), parse_spec(ModelDeploymentSpec, md["spec"])
    legacy = Kube(api)
    hpa, pdb = autoscaler(owner, spec, "autoscaling/v2beta2"), disruption_budget(owner, "policy/v1beta1")
    manifests = (deployment(owner, spec, PodDefaults(), None), service(owner), hpa, pdb)
    for manifest in manifests:
        manifest["metadata"].setdefault("annotations", {})[LEGACY_HASH_ANNOTATION] = "0123456789abcdef"
        legacy._call("POST", object_path(manifest).rsplit("/", 1)[0], manifest)  # no fieldManager, as before
    cluster.kubectl("scale", "deployment", "iris-predictor", "-n", namespace, "--replicas=3")
    before = _live(api, namespace, "Deployment")
    with operator():

        def taken_over(kind: str) -> bool:
            annotations = _live(api, namespace, kind)["metadata"].get("annotations") or {}
            return HASH_ANNOTATION in annotations and LEGACY_HASH_ANNOTATION not in annotations

        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            wait_for(lambda kind=kind: taken_over(kind), 30, f"the {kind} taken over")  # type: ignore[misc]
        after = _live(api, namespace, "Deployment")
        assert after["spec"]["template"] == before["spec"]["template"]  # nothing rolls
        assert after["spec"]["replicas"] == 3
        managers = {(e["manager"], e["operation"]) for e in after["metadata"]["managedFields"]}
        assert ("regrow", "Apply") in managers and not any(m == LEGACY_MANAGER for m, _ in managers)
        patch = {"spec": {"resources": {"limits": {"memory": None}}}}
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, "iris", patch
        )
        wait_for(lambda: "memory" not in _limits(_live(api, namespace, "Deployment")), 15, "no memory limit")
    assert _live(api, namespace, "Deployment")["spec"]["replicas"] == 3


def test_pod_options_reach_the_pods_as_the_api_server_takes_them_and_only_as_the_chart_allows(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """spec.pod on a real API server: the Deployment it makes is accepted with every option in its pod template;
    a service account the operator does not allow is InvalidSpec, and the pods stay as they were."""
    allowed = PodDefaults(allowed_service_accounts=(f"{namespace}/s3-reader",), allowed_tolerations=("dedicated",))
    with operator(pod_defaults=allowed):
        _create(api, namespace, _with(_example("ModelDeployment"), "spec.pod", POD))
        live = wait_for(lambda: _children(api, namespace)["Deployment"], 30, "the Deployment")[0]
        template = live["spec"]["template"]
        assert holds(template["spec"], PodOptions.model_validate(POD).template())  # kept as the operator wrote it
        assert template["spec"]["automountServiceAccountToken"] is True
        assert template["metadata"]["labels"].items() >= POD["labels"].items()
        assert template["metadata"]["annotations"].items() >= POD["annotations"].items()
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            MODEL_DEPLOYMENT.plural,
            "iris",
            {"spec": {"pod": {"serviceAccountName": "admin"}}},
        )
        obj = _status(api, namespace, "Ready", "False", "InvalidSpec")
    assert "pod.serviceAccountName admin is not one the operator allows" in condition(obj, "Ready")["message"]  # type: ignore[index]
    assert _children(api, namespace)["Deployment"][0]["spec"]["template"] == template
