"""DriftPolicy decisions without a cluster: when a check is due, and the retrain guardrails."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from regrow.api import DriftPolicySpec, InvalidSpec, parse_spec
from regrow.clock import now
from regrow.controller.driftpolicy import (
    APPROVE_ANNOTATION,
    SourceNotAllowed,
    _retrain,
    allowing,
    dot_segments,
    follow_retrains,
    next_check_in,
    retrain_outcome,
)
from regrow.controller.kube import Conflict, Obj
from regrow.controller.loop import Kind, wait_for
from regrow.controller.result import Result
from regrow.manifests.common import Owner
from tests.unit.test_api import _example, _with

OWNER = Owner("DriftPolicy", "iris", "ml", "uid-3")


def _unused(body: Obj) -> Result:
    raise AssertionError("not reconciled here")


POLICY = Kind("DriftPolicy", "driftpolicies", _unused, next_check_in)
CHECK = {"time": "2026-11-23T12:00:00Z", "version": "v1", "samples": 900, "driftedFeatures": 2}


def _spec(**changes: Any) -> DriftPolicySpec:
    body = _example("DriftPolicy")
    for key, value in changes.items():
        body = _with(body, key.replace("__", "."), value)
    return parse_spec(DriftPolicySpec, body["spec"])


class Jobs:
    def __init__(self, running: int = 0, conflict: bool = False) -> None:
        self.running = running
        self.conflict = conflict
        self.created: list[Obj] = []

    def get(self, path: str) -> Obj | None:
        return None

    def create(self, path: str, body: Obj) -> Obj:
        if self.conflict:
            raise Conflict(path)
        self.created.append(body)
        return body

    def patch(self, path: str, body: Obj) -> Obj:
        raise AssertionError("nothing is patched")

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        assert label_selector == "regrow.dev/driftpolicy=iris"
        return [{"status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}]}}] * self.running


def _body(annotations: dict[str, str] | None = None) -> Obj:
    return {"metadata": {"name": "iris", "generation": 1, "annotations": annotations or {}}, "spec": {}}


def test_a_check_is_due_every_interval_at_once_after_a_spec_change_and_on_approval() -> None:
    body: Obj = {"metadata": {"generation": 2}, "spec": {"interval": "1m"}}
    assert next_check_in(body) == 0  # never checked
    body["status"] = {"observedGeneration": 2, "lastCheck": {"time": now()}}
    assert 58 <= next_check_in(body) <= 60
    assert 58 <= (wait_for(POLICY, body) or 0) <= 60  # generation observed: the interval
    body["status"]["lastCheck"]["time"] = "2026-01-01T00:00:00Z"
    assert next_check_in(body) == 0
    body["status"] = {"observedGeneration": 1, "lastCheck": {"time": now()}}
    assert wait_for(POLICY, body) == 0  # the spec changed
    body["status"] = {"observedGeneration": 2, "lastCheck": {"time": now()}, "pendingApproval": "iris-retrain-1"}
    assert next_check_in(body) > 0
    body["metadata"]["annotations"] = {APPROVE_ANNOTATION: "iris-retrain-1"}
    assert next_check_in(body) == 0


def test_checks_come_no_faster_than_the_operator_allows_and_waiting_backs_off() -> None:
    body: Obj = {"metadata": {"generation": 1}, "spec": {"interval": "1s"},
                 "status": {"observedGeneration": 1, "lastCheck": {"time": now()}}}  # fmt: skip
    assert 9 <= next_check_in(body) <= 10  # the operator's floor, 10 s by default
    assert next_check_in(body, minimum=1.0) <= 1
    body["spec"]["interval"] = "5m"
    for waited, wait in ((0, 2.0), (60, 30.0), (3600, 300.0)):  # half the wait so far, 2 s to one interval
        stamp = datetime.fromtimestamp(time.time() - waited, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": "Unknown", "reason": "WaitingForPods", "lastTransitionTime": stamp}
        body["status"] = {"observedGeneration": 1, "conditions": [ready]}
        assert next_check_in(body) == pytest.approx(wait, abs=1.0)


def test_an_interval_under_a_second_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="interval must be 1s at least"):
        _spec(spec__interval="0s")


def test_retrain_creates_one_job_and_records_it() -> None:
    api = Jobs()
    fields: Obj = {"consecutiveBreaches": 3}
    events = _retrain(_body(), api, _spec(), OWNER, CHECK, fields)
    (job,) = api.created
    assert job["metadata"]["name"] == "iris-retrain-1"
    assert job["metadata"]["labels"] == {"team": "ml-platform", "regrow.dev/driftpolicy": "iris"}
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-3"
    assert [e.reason for e in events] == ["Retraining"]
    assert [r["name"] for r in fields["trainingJobs"]] == ["iris-retrain-1"]
    assert fields["lastRetrainTime"] and fields["consecutiveBreaches"] == 3  # drift goes on; the cooldown rules
    again = _retrain(_body(), api, _spec(), OWNER, CHECK, fields)
    assert again == [] and len(api.created) == 1  # the cooldown (1h) holds


def test_retrain_names_keep_counting_past_the_records_kept() -> None:
    api = Jobs()
    records = [{"name": f"iris-retrain-{n}", "created": "2026-01-01T00:00:00Z", "checkTime": "2026-01-01T00:00:00Z"}
               for n in range(31, 51)]  # fmt: skip
    fields: Obj = {"retrains": 50, "trainingJobs": records, "lastRetrainTime": "2026-01-01T00:00:00Z"}
    _retrain(_body(), api, _spec(), OWNER, CHECK, fields)
    assert [j["metadata"]["name"] for j in api.created] == ["iris-retrain-51"]
    assert fields["retrains"] == 51 and len(fields["trainingJobs"]) == 20
    assert fields["trainingJobs"][-1]["name"] == "iris-retrain-51"


def test_retrain_respects_max_concurrent_and_dedupes_after_a_restart() -> None:
    busy = Jobs(running=1)
    assert _retrain(_body(), busy, _spec(), OWNER, CHECK, {}) == []
    assert busy.created == []
    fields: Obj = {}
    lost_status = Jobs(conflict=True)  # created before a restart, status not written then
    assert _retrain(_body(), lost_status, _spec(), OWNER, CHECK, fields) == []
    assert [r["name"] for r in fields["trainingJobs"]] == ["iris-retrain-1"]


def test_manual_approval_waits_for_the_annotation() -> None:
    spec = _spec(spec__retrain__approval="Manual")
    api = Jobs()
    fields: Obj = {}
    events = _retrain(_body(), api, spec, OWNER, CHECK, fields)
    assert fields["pendingApproval"] == "iris-retrain-1" and api.created == []
    assert [e.reason for e in events] == ["ApprovalPending"]
    assert _retrain(_body(), api, spec, OWNER, CHECK, fields) == []
    approved = _body({"regrow.dev/approve": "iris-retrain-1"})
    _retrain(approved, api, spec, OWNER, CHECK, fields)
    assert [j["metadata"]["name"] for j in api.created] == ["iris-retrain-1"] and fields["pendingApproval"] is None


def test_only_the_prometheus_urls_the_settings_allow_are_queried() -> None:
    asked: list[str] = []

    def answer(url: str, promql: str) -> bytes:
        asked.append(url)
        return b"{}"

    query = allowing(["http://prometheus.monitoring:9090", "https://thanos.example/prom/", " "], answer)
    for url in ("http://prometheus.monitoring:9090", "http://prometheus.monitoring:9090/",
                "https://thanos.example/prom", "https://thanos.example/prom/tenant-a"):  # fmt: skip
        assert query(url, "up") == b"{}"
    refused = ["http://prometheus.monitoring:9091", "http://prometheus.monitoring:9090.evil.example",
               "https://thanos.example/prometheus", "http://thanos.example/prom", "https://thanos.example"]  # fmt: skip
    for url in refused:
        with pytest.raises(SourceNotAllowed, match=r"drift\.prometheusUrls"):
            query(url, "up")
    assert len(asked) == 4
    with pytest.raises(
        SourceNotAllowed, match=r"\(the chart's drift.prometheusUrls: none\)"
    ):  # nothing allowed by default
        allowing([])("http://prometheus.monitoring:9090", "up")


def test_a_prometheus_url_with_a_dot_segment_is_refused_however_it_is_encoded() -> None:
    """A server that resolves ``..`` would take a URL under an allowed one anywhere on its host."""
    query = allowing(["https://thanos.example/prom"], lambda url, promql: b"{}")
    for segment in ("..", ".", "%2e%2e", "%2E%2e", ".%2E", "%2e", "%252e%252e", "%25252e%25252e"):
        for url in (f"https://thanos.example/prom/{segment}/admin", f"https://thanos.example/prom/tenant/{segment}"):
            assert dot_segments(url), url
            with pytest.raises(SourceNotAllowed):
                query(url, "up")
    for fine in (
        "https://thanos.example/prom/v1.2",
        "https://thanos.example/prom/...",
        "https://thanos.example/prom/.a",
    ):
        assert not dot_segments(fine) and query(fine, "up") == b"{}"


def test_a_prometheus_url_has_no_user_query_or_fragment() -> None:
    for url in ("http://prometheus.monitoring:9090", "https://thanos.example/prom/tenant-a", "http://[::1]:9090"):
        assert _spec(spec__source={"type": "Prometheus", "prometheus": {"url": url}}).source.prometheus is not None
    invalid = ["http://user:pw@prometheus:9090", "http://prometheus:9090/?x=1", "http://prometheus:9090#a",
               "http://prometheus:9090/api/v1/query?query=up#", "file:///etc/passwd", "http://prom etheus"]  # fmt: skip
    for url in invalid:
        with pytest.raises(InvalidSpec):
            _spec(spec__source={"type": "Prometheus", "prometheus": {"url": url}})


def _tj(succeeded: str | None, reason: str = "", version: str = "v2") -> Obj:
    conditions = [{"type": "Succeeded", "status": succeeded, "reason": reason}] if succeeded else []
    return {"status": {"conditions": conditions, "artifact": {"version": version}}}


SERVING_V1 = {"status": {"model": {"version": "v1"}}}


@pytest.mark.parametrize(
    ("tj", "target", "expected"),
    [
        (None, SERVING_V1, (None, "Deleted")),
        (_tj(None), SERVING_V1, ("v2", None)),  # still training
        (_tj("Unknown", "Running"), SERVING_V1, ("v2", None)),
        (_tj("False", "InvalidDataset"), SERVING_V1, ("v2", "Failed")),
        (_tj("True", "GateRejected"), SERVING_V1, ("v2", "Rejected")),
        (_tj("True", "Completed"), SERVING_V1, ("v2", "Published")),
        (_tj("True", "Promoted"), SERVING_V1, ("v2", None)),  # promoted, not rolled out yet
        (_tj("True", "Promoted"), {"status": {"model": {"version": "v2"}}}, ("v2", "Serving")),
        (
            _tj("True", "Promoted"),
            {"status": {"model": {"version": "v1"}, "rejectedVersions": ["v2"]}},
            ("v2", "RolledBack"),
        ),
        (
            _tj("True", "Promoted"),
            {"status": {"rollout": {"candidate": "v2", "outcome": "RolledBack"}}},
            ("v2", "RolledBack"),
        ),
        (_tj("True", "Promoted"), None, ("v2", None)),  # the target is gone: not known
    ],
)
def test_a_retrain_ends_as_its_job_and_the_targets_canary_say(
    tj: Obj | None, target: Obj | None, expected: tuple[str | None, str | None]
) -> None:
    assert retrain_outcome(tj, target) == expected


class Retrains:
    """TrainingJobs by name and the target ModelDeployment, read by the DriftPolicy."""

    def __init__(self, jobs: dict[str, Obj], target: Obj) -> None:
        self.jobs, self.target, self.reads = jobs, target, 0

    def get(self, path: str) -> Obj | None:
        self.reads += 1
        name = path.rsplit("/", 1)[1]
        return self.target if "/modeldeployments/" in path else self.jobs.get(name)


def test_retrains_are_followed_to_their_end_once_and_counted() -> None:
    records = [{"name": "iris-retrain-1", "created": "t", "checkTime": "t", "version": "v1", "outcome": "Serving"},
               {"name": "iris-retrain-2", "created": "t", "checkTime": "t"},
               {"name": "iris-retrain-3", "created": "t", "checkTime": "t"}]  # fmt: skip
    api = Retrains({"iris-retrain-2": _tj("True", "Promoted"), "iris-retrain-3": _tj(None, version="v3")},
                   {"status": {"model": {"version": "v1"}, "rejectedVersions": ["v2"]}})  # fmt: skip
    fields: Obj = {"trainingJobs": records, "retrainOutcomes": {"Serving": 1}}
    events = follow_retrains(api, OWNER, _spec(), fields)  # type: ignore[arg-type]
    assert [(r.get("version"), r.get("outcome")) for r in fields["trainingJobs"]] == [
        ("v1", "Serving"), ("v2", "RolledBack"), ("v3", None)]  # fmt: skip
    assert fields["retrainOutcomes"] == {"Serving": 1, "RolledBack": 1}
    assert [(e.type, e.reason) for e in events] == [("Warning", "RetrainRolledBack")]
    api.reads = 0
    settled: Obj = {"trainingJobs": [fields["trainingJobs"][0], fields["trainingJobs"][1]]}
    assert follow_retrains(api, OWNER, _spec(), settled) == []  # type: ignore[arg-type]
    assert api.reads == 0  # nothing left to follow
