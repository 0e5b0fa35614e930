"""`regrow status`: what a ModelDeployment serves and how it got there, read from the objects' status."""

from __future__ import annotations

import json

from regrow.controller.kube import Obj
from regrow.controller.lineage import lineage


def _md(**status: object) -> Obj:
    ready = {"type": "Ready", "status": "True", "reason": "Serving", "message": "3 replica(s) serving version v2"}
    return {"metadata": {"name": "iris", "namespace": "ml"}, "status": {"conditions": [ready], **status}}


RETRAIN = {
    "metadata": {
        "name": "iris-retrain-2",
        "labels": {"regrow.dev/driftpolicy": "iris"},
        "annotations": {"regrow.dev/drift-check": json.dumps({
            "time": "2026-12-01T12:00:00Z", "version": "v1", "samples": 900, "driftedFeatures": 1,
            "drifted": {"petal_length": {"psi": "0.41", "ks": "0.3"}}})},
    },
    "status": {"completionTime": "2026-12-01T12:02:00Z", "artifact": {"version": "v2", "metrics": {"accuracy": "0.97"}},
               "promotion": {"outcome": "Promoted", "message": "beat v1 by 0.04"}},
}  # fmt: skip
GATES = [{"name": "errorShare", "threshold": "0.01", "value": "0", "passed": True},
         {"name": "predictionDivergence", "threshold": "0.5", "value": "0.08", "passed": True}]  # fmt: skip


def _step(step: int, weight: int, requests: int, passed: str) -> Obj:
    return {"step": step, "weight": weight, "requests": requests, "gates": GATES, "passed": passed}


def test_the_lineage_runs_from_the_version_to_the_drift_check_and_through_the_canary() -> None:
    rollout = {"candidate": "v2", "stable": "v1", "started": "2026-12-01T12:02:05Z", "step": 3, "weight": 50,
               "stepStarted": "2026-12-01T12:03:00Z", "outcome": "Promoted", "finished": "2026-12-01T12:04:00Z",
               "message": "every step passed, v1 replaced",
               "passed": [_step(1, 25, 312, "2026-12-01T12:02:40Z"),
                          _step(2, 50, 640, "2026-12-01T12:03:00Z")]}  # fmt: skip
    md = _md(model={"version": "v2", "uri": "file:///r/iris/versions/v2"}, rollout=rollout, rejectedVersions=["v9"])
    other = {"metadata": {"name": "iris-v1"}, "status": {"artifact": {"version": "v1"}}}
    lines = lineage(md, [other, RETRAIN])
    assert lines[0] == "ModelDeployment ml/iris: Ready=True (Serving: 3 replica(s) serving version v2)"
    assert lines[1] == "serves v2 from file:///r/iris/versions/v2"
    assert lines[2].startswith("  made by TrainingJob iris-retrain-2 at 2026-12-01T12:02:00Z: accuracy 0.97")
    assert "Promoted: beat v1 by 0.04" in lines[2]
    assert lines[3] == ("  after DriftPolicy iris's check at 2026-12-01T12:00:00Z of v1: 900 samples, 1 features "
                        "drifted (petal_length psi=0.41 ks=0.3)")  # fmt: skip
    assert lines[4].startswith("last canary: v2 beside v1, started 2026-12-01T12:02:05Z: Promoted at")
    assert lines[5].startswith("  step 1 at 25%, passed 2026-12-01T12:02:40Z after 312 requests: errorShare 0 (max ")
    assert "predictionDivergence 0.08 (max 0.5, passed)" in lines[6]
    assert lines[-1] == "rolled back, not tried again: v9"


def test_a_rolled_back_canary_shows_the_gate_that_failed_and_a_plain_deployment_its_version() -> None:
    failed = [{"name": "errorShare", "threshold": "0.01", "value": "0.2", "passed": False},
              {"name": "p99Seconds", "threshold": "0.25"}]  # fmt: skip
    rollout = {"candidate": "v3", "stable": "v2", "started": "t0", "step": 1, "weight": 25, "stepStarted": "t0",
               "requests": 120, "gates": failed, "outcome": "RolledBack", "finished": "t1",
               "message": "step 1 failed: errorShare 0.2 exceeds 0.01",
               "decision": None}  # fmt: skip
    lines = lineage(_md(model={"version": "v2", "uri": "u"}, rollout=rollout, rejectedVersions=["v3"]), [])
    assert "  made by no TrainingJob of this namespace" in lines
    assert ("  step 1 at 25% with 120 requests: errorShare 0.2 (max 0.01, FAILED), p99Seconds - (max 0.25, "
            "not measured)") in lines  # fmt: skip
    assert lines[-1] == "rolled back, not tried again: v3"
    agreed = [{"name": "disagreement", "threshold": "0.2", "value": "0.05", "passed": True}]
    passed = {"step": 1, "weight": 0, "mirror": 50, "requests": 480, "mirrored": 500, "passed": "t1", "gates": agreed}
    shadowed = {**rollout, "step": 2, "weight": 25, "mirror": None, "passed": [passed]}
    lines = lineage(_md(model={"version": "v2", "uri": "u"}, rollout=shadowed), [])
    assert ("  step 1 shadowing 50%, passed t1 after 480 of 500 mirrored requests: disagreement 0.05 (max 0.2, "
            "passed)") in lines  # fmt: skip
    assert "  step 2 at 25% with 120 requests: errorShare 0.2 (max 0.01, FAILED), p99Seconds - (max 0.25, not " \
           "measured)" in lines  # fmt: skip
    assert lineage({"metadata": {"name": "iris", "namespace": "ml"}}, [])[1] == "serves no version yet"


def test_a_roll_just_done_says_what_still_shuts_down_and_where_the_alias_points() -> None:
    alias = {"ref": "s3://models/prod/iris@champion", "version": "v2", "generation": 7}
    lines = lineage(_md(model={"version": "v2", "uri": "u"}, terminatingReplicas=2, alias=alias), [])
    assert lines[1] == "serves v2 from u (2 old pod(s) still shutting down)"
    assert "s3://models/prod/iris@champion points at v2 (generation 7, as last read)" in lines
