"""The TrainingJob builder and reconciler as pure logic, with a fake API in place of a cluster."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from regrow.api import TrainingJobSpec, parse_spec
from regrow.api.trainingjob import TrainingJobStatus
from regrow.controller import conditions
from regrow.controller.conditions import Cond
from regrow.controller.kube import Conflict, Obj
from regrow.controller.trainingjob import finished, outcome, reconcile, status_for
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.training import training_job
from tests.unit.test_api import _example, _with

OWNER = Owner("TrainingJob", "iris-v1", "ml", "uid-1")
IMAGES = PodDefaults(runtime="regrow-serving:test", pull_policy="Never")


def _spec(**changes: Any) -> TrainingJobSpec:
    body = _example("TrainingJob")
    for path, value in changes.items():
        body = _with(body, path.replace("__", "."), value)
    return parse_spec(TrainingJobSpec, body["spec"])


def restricted_violations(pod: Obj) -> list[str]:
    """Breaches of the Pod Security Standards "restricted" profile in a pod spec."""
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    if any(v.get("hostPath") for v in pod.get("volumes") or []):
        problems.append("hostPath volume")
    for c in pod["containers"]:
        ctx = c.get("securityContext") or {}
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if (ctx.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities.drop")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccompProfile")
        if ctx.get("privileged") or ctx.get("runAsUser") == 0 or pod_ctx.get("runAsUser") == 0:
            problems.append(f"{c['name']}: root or privileged")
    return problems


def test_job_manifest() -> None:
    job = training_job(OWNER, _spec(), IMAGES)
    assert job["metadata"]["name"] == "iris-v1-train"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "regrow.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "iris-v1",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert job["metadata"]["labels"]["regrow.dev/trainingjob"] == "iris-v1"
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == [] and pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "regrow-serving:test" and container["imagePullPolicy"] == "Never"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["REGROW_TRAINING_SPEC"]) == _spec().to_wire()
    assert (env["REGROW_RUN_NAMESPACE"], env["REGROW_RUN_NAME"], env["REGROW_RUN_UID"]) == ("ml", "iris-v1", "uid-1")
    assert container["envFrom"] == []
    assert training_job(OWNER, _spec(), IMAGES) == job  # deterministic


def test_a_spec_without_resources_gets_the_defaults() -> None:
    unset = training_job(OWNER, _spec(spec__resources=...), IMAGES)["spec"]["template"]["spec"]["containers"][0]
    assert unset["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    own = training_job(OWNER, _spec(), IMAGES)["spec"]["template"]["spec"]["containers"][0]
    assert own["resources"] == _spec().resources.to_wire()  # type: ignore[union-attr]  # the spec's win


def test_job_manifest_with_s3_credentials_and_own_image() -> None:
    spec = _spec(
        spec__storage={"endpointUrl": "http://minio:9000", "region": "eu-west-1", "secretRef": {"name": "s3"}},
        spec__image="example.com/trainer:1",
        spec__activeDeadlineSeconds=...,
    )
    job = training_job(OWNER, spec, IMAGES)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.com/trainer:1"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"} in container["env"]
    assert "activeDeadlineSeconds" not in job["spec"]
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
    assert not any("AWS_SECRET" in json.dumps(e) for e in container["env"])  # credentials only by reference


def test_long_names_are_shortened_deterministically() -> None:
    long_a = Owner("TrainingJob", "a" * 100, "ml", "u")
    long_b = Owner("TrainingJob", "a" * 99 + "b", "ml", "u")
    assert len(long_a.child_name("train")) <= 63
    assert long_a.child_name("train").endswith("-train")
    assert long_a.child_name("train") == long_a.child_name("train") != long_b.child_name("train")


def test_conditions_keep_transition_time_until_status_flips() -> None:
    first = conditions.merge([], [Cond("Succeeded", "Unknown", "Pending")], 1, "T1")
    same = conditions.merge(first, [Cond("Succeeded", "Unknown", "Running", "1 pod")], 2, "T2")
    flipped = conditions.merge(same, [Cond("Succeeded", "True", "Completed")], 2, "T3")
    assert first[0]["lastTransitionTime"] == "T1"
    assert (same[0]["lastTransitionTime"], same[0]["reason"], same[0]["observedGeneration"]) == ("T1", "Running", 2)
    assert flipped[0]["lastTransitionTime"] == "T3"
    other = conditions.merge([{"type": "Other", "status": "True"}], [Cond("Succeeded", "True", "X")], 1, "T")
    assert [c["type"] for c in other] == ["Other", "Succeeded"]


def _job(*conds: tuple[str, str], active: int = 0) -> Obj:
    status: Obj = {"conditions": [{"type": t, "status": "True", "reason": r, "message": f"{r}!"} for t, r in conds]}
    if active:
        status["active"] = active
    return {"metadata": {"name": "iris-v1-train"}, "status": status}


def _pod(message: str, finished_at: str = "2026-01-01T00:00:00Z") -> Obj:
    terminated = {"exitCode": 0, "message": message, "finishedAt": finished_at}
    return {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}


REPORT = {"succeeded": True, "version": "v1", "uri": "u", "metrics": {}}
GATE = {"alias": "champion", "metric": "accuracy", "candidateScore": "0.9"}


@pytest.mark.parametrize(
    ("job", "pods", "expected"),
    [
        (_job(), [], ("Unknown", "Pending")),
        (_job(active=1), [], ("Unknown", "Running")),
        (_job(("Complete", "")), [_pod(json.dumps(REPORT))], ("True", "Completed")),
        (
            _job(("Complete", "")),
            [_pod(json.dumps({**REPORT, "promotion": {**GATE, "outcome": "Rejected", "message": "0.9 < 0.95"}}))],
            ("True", "GateRejected"),
        ),
        (_job(("Complete", "")), [], ("False", "NoReport")),
        (_job(("Failed", "DeadlineExceeded")), [], ("False", "DeadlineExceeded")),
        (
            _job(("Failed", "BackoffLimitExceeded")),
            [_pod('{"succeeded": false, "reason": "ParityFailed", "message": "m"}')],
            ("False", "ParityFailed"),
        ),
    ],
)
def test_outcome_of_a_job(job: Obj, pods: list[Obj], expected: tuple[str, str]) -> None:
    cond = outcome(job, pods).cond
    assert (cond.status, cond.reason) == expected


@pytest.mark.parametrize(
    ("previous", "gate", "expected"),
    [
        ("v0", "better", "version v1 is now champion: better"),
        ("v1", "the same model was trained again", "version v1 stays champion: the same model was trained again"),
    ],
)
def test_a_promotion_says_whether_the_alias_moved(previous: str, gate: str, expected: str) -> None:
    promotion = {**GATE, "outcome": "Promoted", "previousVersion": previous, "message": gate}
    cond = outcome(_job(("Complete", "")), [_pod(json.dumps({**REPORT, "promotion": promotion}))]).cond
    assert (cond.status, cond.reason, cond.message) == ("True", "Promoted", expected)


def test_the_promotion_reaches_status_through_its_model() -> None:
    """Which rows graded each part of the gate, as the trainer reported them; a report that does not fit
    the trainer's report model is not read at all: nothing of it is copied into status."""
    check = {"holdout": "curated", "rows": 38, "candidateScore": "0.58", "currentScore": "0.39",
             "baselineScore": "0.89", "limit": "0.05", "passed": False}  # fmt: skip
    promotion = {"outcome": "Rejected", "alias": "champion", "metric": "accuracy", "candidateScore": "0.85",
                 "message": "beyond", "regression": check,
                 "improvement": {**check, "holdout": "live", "rows": 60}}  # fmt: skip
    body = {"metadata": {"generation": 1}, "status": {}}
    job = _job(("Complete", ""))
    feedback = {"model": "iris", "rows": 300, "predictions": 50, "unlabelled": 0, "dropped": {},
                "anonymousLabels": 20, "sources": [{"name": "desk", "rows": 300}], "outsideSupport": 200,
                "outsideSupportShare": "0.4", "leftOut": 200}  # fmt: skip
    result = outcome(job, [_pod(json.dumps({**REPORT, "promotion": promotion, "feedback": feedback}))])
    status = status_for(body, job, result)
    assert status["promotion"]["regression"] == check and status["promotion"]["improvement"]["rows"] == 60
    assert status["feedback"] == feedback  # the live rows read, by labeller, and outside the curated support
    TrainingJobStatus.model_validate(status)
    for forged in ({**REPORT, "promotion": {**promotion, "outcome": "Maybe"}}, {**REPORT, "extra": "x"},
                   {**REPORT, "version": None}, {**REPORT, "succeeded": "yes"}, [REPORT]):  # fmt: skip
        result = outcome(job, [_pod(json.dumps(forged))])
        assert (result.cond.status, result.cond.reason) == ("False", "NoReport")
        assert status_for(body, job, result).keys() == {"observedGeneration", "conditions", "jobName"}


def test_a_dataset_that_failed_validation_says_which_checks() -> None:
    checks = [{"check": "columns", "passed": False, "message": "1 of v1's 4 feature columns missing ('b')"},
              {"check": "ranges", "passed": True, "message": "0 feature(s) outside"}]  # fmt: skip
    failure = {
        "succeeded": False,
        "reason": "DataValidationFailed",
        "message": "1 of 2 checks failed",
        "validation": checks,
    }
    job = _job(("Failed", "BackoffLimitExceeded"))
    result = outcome(job, [_pod(json.dumps(failure))])
    assert (result.cond.status, result.cond.reason) == ("False", "DataValidationFailed")
    status = status_for({"metadata": {"generation": 1}, "status": {}}, job, result)
    assert status["validation"] == checks and "artifact" not in status


def test_a_crash_reports_the_log_tail_of_the_newest_attempt() -> None:
    pods = [_pod("old crash", "2026-01-01T00:00:00Z"), _pod("Traceback ...\nMemoryError", "2026-01-01T00:05:00Z")]
    cond = outcome(_job(("Failed", "BackoffLimitExceeded")), pods).cond
    assert cond.reason == "BackoffLimitExceeded"
    assert cond.message == "BackoffLimitExceeded!; trainer said: Traceback ...\nMemoryError"


class FakeApi:
    def __init__(self, existing: Obj | None = None, conflict: bool = False) -> None:
        self.jobs: dict[str, Obj] = {} if existing is None else {existing["metadata"]["name"]: existing}
        self.created: list[Obj] = []
        self.conflict = conflict

    def get(self, path: str) -> Obj | None:
        return self.jobs.get(path.rsplit("/", 1)[1])

    def create(self, path: str, body: Obj) -> Obj:
        assert path == "/apis/batch/v1/namespaces/ml/jobs"
        if self.conflict:  # another writer got there first
            self.jobs[body["metadata"]["name"]] = body
            raise Conflict(path)
        self.created.append(body)
        self.jobs[body["metadata"]["name"]] = body
        return body

    def patch(self, path: str, body: Obj) -> Obj:
        raise AssertionError("the reconciler patches nothing")

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        assert label_selector == "job-name=iris-v1-train"
        return []


def _body(spec: Obj | None = None, status: Obj | None = None, generation: int = 1) -> Obj:
    meta = {"name": "iris-v1", "namespace": "ml", "uid": "uid-1", "generation": generation}
    return {"kind": "TrainingJob", "metadata": meta, "spec": spec or _example("TrainingJob")["spec"], "status": status}


def test_reconcile_creates_the_job_once() -> None:
    api = FakeApi()
    first = reconcile(_body(), api, IMAGES)
    second = reconcile(_body(status=first.status), api, IMAGES)
    assert len(api.created) == 1
    assert [e.reason for e in first.events] == ["Created"] and second.events == []
    assert second.status["jobName"] == "iris-v1-train"
    assert second.status["conditions"][0]["reason"] == "Pending"


def test_reconcile_survives_losing_the_race_to_create() -> None:
    result = reconcile(_body(), FakeApi(conflict=True), IMAGES)
    assert result.status["jobName"] == "iris-v1-train" and result.events == []


def test_reconcile_refuses_a_job_it_does_not_own() -> None:
    stranger = {"metadata": {"name": "iris-v1-train", "ownerReferences": [{"uid": "someone-else"}]}}
    result = reconcile(_body(), FakeApi(existing=stranger), IMAGES)
    assert result.status["conditions"][0]["reason"] == "JobConflict"


def test_invalid_specs_are_final_until_the_spec_changes() -> None:
    bad = _with(_example("TrainingJob"), "spec.model.algorithm", "magic")["spec"]
    result = reconcile(_body(spec=bad), FakeApi(), IMAGES)
    cond = result.status["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "spec.model.algorithm" in cond["message"]
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]
    assert finished(_body(spec=bad, status=result.status))
    assert not finished(_body(spec=bad, status=result.status, generation=2))
    assert not finished(_body())


def test_a_spec_may_name_only_the_images_the_operator_allows() -> None:
    allowing = replace(IMAGES, allowed_images=("registry.example/ml/", "ghcr.io/acme/trainer:", "quay.io/x/y@"))
    for image in ("registry.example/ml/trainer:2", "ghcr.io/acme/trainer:1.4", "quay.io/x/y@sha256:ab", IMAGES.runtime):
        allowing.check_image(image)
    refused = ["registry.example/mlx/trainer:1", "ghcr.io/acme/trainer-evil:1", "ghcr.io/acme/trainer", "busybox"]
    for image in refused:
        with pytest.raises(ValueError, match="allowedImages"):
            allowing.check_image(image)
    api = FakeApi()
    body = _body(spec=_with(_example("TrainingJob"), "spec.image", "busybox")["spec"])
    cond = reconcile(body, api, IMAGES).status["conditions"][0]  # none allowed but the runtime image
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec") and "image busybox" in cond["message"]
    assert api.created == []  # no Job runs it
