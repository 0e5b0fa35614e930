"""The TrainingJob reconciler on a real API server, with the real Job controller.

No kubelet runs here, so the test plays its part: it moves the trainer pod to its end the way a
kubelet would, with the trainer's report as the container's termination message. The node-cluster
end-to-end test runs the real trainer instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import TRAINING_JOB, TrainingJobSpec
from regrow.controller.kube import Kube, path
from tests.conftest import TEST_IMAGE, Operator
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.unit.test_api import _example, _with
from tests.unit.test_trainingjob_reconciler import restricted_violations

JOB_LABEL = "regrow.dev/trainingjob"
pytestmark = pytest.mark.usefixtures("no_kubelet")


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, body)


def _jobs(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return Kube(api).list(path("batch/v1", "jobs", namespace), f"{JOB_LABEL}={name}")


def _pod_of(api: client.ApiClient, namespace: str, job: str) -> str:
    pods = lambda: Kube(api).list(path("v1", "pods", namespace), f"job-name={job}")  # noqa: E731
    return str(wait_for(pods, 30, f"a pod of Job {job}")[0]["metadata"]["name"])


def _finish_pod(api: client.ApiClient, namespace: str, pod: str, exit_code: int, message: str) -> None:
    """What a kubelet reports when the trainer container exits."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "startTime": now,
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "restartCount": 0,
                "image": TEST_IMAGE,
                "imageID": "docker://sha256:0",
                "state": {
                    "terminated": {"exitCode": exit_code, "startedAt": now, "finishedAt": now, "message": message}
                },
            }
        ],
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, {"status": status})


def _succeeded(api: client.ApiClient, namespace: str, name: str, status: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get_custom(api, namespace, TRAINING_JOB.plural, name)
        cond = condition(obj, "Succeeded")
        return obj if cond and cond["status"] == status else None

    return wait_for(probe, 60, f"{name} Succeeded={status}")


def test_one_job_with_the_right_pod_template_across_restarts(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    body = _example("TrainingJob")
    with operator():
        _create(api, namespace, body)
        obj = _succeeded(api, namespace, "iris-v1", "Unknown")
    assert obj["status"]["jobName"] == "iris-v1-train"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Succeeded")["reason"] in ("Pending", "Running")  # type: ignore[index]
    with operator():  # a restarted operator finds the Job and creates no other
        time.sleep(3)
    jobs = _jobs(api, namespace, "iris-v1")
    assert [j["metadata"]["name"] for j in jobs] == ["iris-v1-train"]

    job = jobs[0]
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingJob",
        "iris-v1",
        obj["metadata"]["uid"],
        True,
    )
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == TEST_IMAGE and container["args"] == ["train"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    stored_spec = TrainingJobSpec.model_validate(json.loads(env["REGROW_TRAINING_SPEC"]))
    assert stored_spec == TrainingJobSpec.model_validate(body["spec"])
    assert env["REGROW_RUN_UID"] == obj["metadata"]["uid"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {"store": "regrow-store"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/var/lib/regrow"}


def test_status_follows_the_job_to_a_promoted_model(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    report = {
        "succeeded": True,
        "model": "iris",
        "version": "0123456789abcdef",
        "uri": "file:///var/lib/regrow/registry/iris/versions/0123456789abcdef",
        "metric": "accuracy",
        "metrics": {"accuracy": "0.973684", "f1": "0.973333"},
        "promotion": {
            "alias": "champion",
            "outcome": "Promoted",
            "metric": "accuracy",
            "candidateScore": "0.973684",
            "message": "champion did not exist",
        },
    }
    with operator():
        _create(api, namespace, _example("TrainingJob"))
        _finish_pod(api, namespace, _pod_of(api, namespace, "iris-v1-train"), 0, json.dumps(report))
        obj = _succeeded(api, namespace, "iris-v1", "True")
    cond = condition(obj, "Succeeded")
    assert cond is not None and cond["reason"] == "Promoted"
    assert "0123456789abcdef is now champion" in cond["message"]
    assert obj["status"]["artifact"] == {
        "uri": report["uri"],
        "version": "0123456789abcdef",
        "metrics": report["metrics"],
    }
    assert obj["status"]["promotion"] == report["promotion"]
    assert obj["status"]["completionTime"]
    events = events_for(api, namespace, "iris-v1")
    assert ("Normal", "Created", "Created Job iris-v1-train") in events
    assert any(e[:2] == ("Normal", "Promoted") for e in events)


def test_a_failed_run_reports_the_trainers_reason(api: client.ApiClient, namespace: str, operator: Operator) -> None:
    body = _with(_example("TrainingJob"), "spec.backoffLimit", 0)
    report = {
        "succeeded": False,
        "reason": "InvalidDataset",
        "message": "target column 'species' is not in the dataset",
    }
    with operator():
        _create(api, namespace, body)
        _finish_pod(api, namespace, _pod_of(api, namespace, "iris-v1-train"), 1, json.dumps(report))
        obj = _succeeded(api, namespace, "iris-v1", "False")
    cond = condition(obj, "Succeeded")
    assert cond is not None and (cond["reason"], cond["message"]) == ("InvalidDataset", report["message"])
    assert ("Warning", "InvalidDataset", report["message"]) in events_for(api, namespace, "iris-v1")


def test_an_invalid_spec_gets_a_condition_and_an_event_then_recovers_when_fixed(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    body = _with(_example("TrainingJob"), "spec.storage", ...)  # file:// URIs with no claim to reach them
    with operator():
        _create(api, namespace, body)
        obj = _succeeded(api, namespace, "iris-v1", "False")
        cond = condition(obj, "Succeeded")
        assert cond is not None and cond["reason"] == "InvalidSpec"
        assert "needs storage.volumeClaimName" in cond["message"]
        assert any(e[:2] == ("Warning", "InvalidSpec") for e in events_for(api, namespace, "iris-v1"))
        time.sleep(2)
        assert _jobs(api, namespace, "iris-v1") == []

        fix = {"spec": {"storage": {"volumeClaimName": "regrow-store"}}}
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, TRAINING_JOB.plural, "iris-v1", fix
        )
        obj = _succeeded(api, namespace, "iris-v1", "Unknown")
    assert obj["status"]["jobName"] == "iris-v1-train"
    assert len(_jobs(api, namespace, "iris-v1")) == 1
