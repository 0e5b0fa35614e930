"""The canary's pure parts: traffic shares, what is read from a pod's counters, the gates, how a step is
judged, and the rollout's moves from one reconcile to the next."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.api.modeldeployment import (
    CanaryAnalysis,
    CanaryStep,
    GateStatus,
    RetryRequest,
    RolloutSpec,
    RolloutStatus,
)
from regrow.contracts import Graded, Quality
from regrow.controller import canary
from regrow.controller.canary import Plan, Seen
from regrow.controller.kube import Obj
from regrow.controller.metrics import RolloutCollector
from regrow.drift.profile import PREDICTION, FeatureProfile, prediction_profile
from regrow.serving.feedback import MAX_PREDICTED_ROWS
from regrow.telemetry import LATENCY_BUCKETS

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
CLASSES = FeatureProfile(PREDICTION, (), (10, 10, 10), ("setosa", "versicolor", "virginica"))


@pytest.mark.parametrize(
    ("weight", "stable", "most", "pods", "percent"),
    [(25, 3, 10, 1, 25), (50, 3, 10, 3, 50), (20, 4, 10, 1, 20), (10, 1, 10, 1, 50), (75, 1, 10, 3, 75),
     (90, 2, 5, 5, 71), (50, 0, 10, 1, 100)],
)  # fmt: skip
def test_the_candidates_pods_give_the_nearest_share(
    weight: int, stable: int, most: int, pods: int, percent: int
) -> None:
    assert canary.canary_replicas(weight, stable, most) == pods
    assert canary.share(pods, stable) == percent


@given(st.integers(1, 99), st.integers(1, 50))
def test_no_whole_number_of_pods_comes_nearer_the_weight(weight: int, stable: int) -> None:
    pods = canary.canary_replicas(weight, stable, 1000)
    error = abs(pods / (pods + stable) - weight / 100)
    assert all(error <= abs(c / (c + stable) - weight / 100) + 1e-12 for c in range(1, 1000))


def _metrics(version: str, codes: dict[int, int], latencies: list[float], predictions: dict[str, int]) -> str:
    lines = ["# TYPE regrow_inference_requests_total counter"]
    lines += [f'regrow_inference_requests_total{{model="iris",version="{version}",protocol="v2",code="{c}"}} {n}'
              for c, n in codes.items()]  # fmt: skip
    lines.append("# TYPE regrow_inference_request_duration_seconds histogram")
    for bound in (*LATENCY_BUCKETS, math.inf):
        le = "+Inf" if math.isinf(bound) else str(bound)
        n = sum(1 for s in latencies if s <= bound)
        lines.append(
            f'regrow_inference_request_duration_seconds_bucket{{model="iris",version="{version}",le="{le}"}} {n}'
        )
    lines.append(
        f'regrow_inference_request_duration_seconds_count{{model="iris",version="{version}"}} {len(latencies)}'
    )
    lines.append("# TYPE regrow_feature_bin_total counter")
    for label, n in predictions.items():
        labels = f'model="iris",version="{version}",feature="{PREDICTION}",bin="{label}"'
        lines.append(f"regrow_feature_bin_total{{{labels}}} {n}")
    lines.append(f'regrow_feature_bin_total{{model="iris",version="{version}",feature="a",bin="b0"}} 99')
    return "\n".join(lines) + "\n"


def test_a_pods_counters_are_read_for_one_version_without_refused_requests() -> None:
    text = _metrics("v2", {200: 90, 400: 5, 413: 1, 429: 40, 500: 3, 503: 2}, [0.001] * 90 + [0.3] * 5,
                    {"setosa": 7})  # fmt: skip
    text += _metrics("v1", {200: 1000}, [0.001] * 1000, {"setosa": 1000})  # another version in the same pod
    text += 'regrow_feedback_labelled_rows_total{model="iris",version="v2"} 30.0\n'
    text += 'regrow_feedback_correct_rows_total{model="iris",version="v2"} 27.0\n'
    vector = canary.read_version(text, "iris", "v2", CLASSES)
    assert vector[canary.LABELLED] == 0 and vector[canary.GRADED] == 0  # labels: from the quality query alone
    assert vector[canary.ANSWERED] == 95 and vector[canary.ERRORS] == 5  # 4xx (429s among them) are neither
    assert canary.requests(vector, vector) == 95
    buckets = vector[canary.BUCKETS : canary.SHADOW_BUCKETS]
    assert buckets[-1] == 95 and buckets[LATENCY_BUCKETS.index(0.001)] == 90
    assert vector[canary.PREDICTED :].tolist() == [7, 0, 0]
    assert canary.read_version("", "iris", "v2", None).tolist() == [0] * canary.size(None)


@given(st.lists(st.floats(0.0001, 3.0), min_size=1, max_size=400), st.sampled_from([0.5, 0.9, 0.99]))
@settings(max_examples=200)
def test_the_quantile_lies_in_the_bucket_of_the_true_one(latencies: list[float], q: float) -> None:
    """Like Prometheus' histogram_quantile: inside the bucket that holds the true quantile (+Inf past the
    last bound)."""
    cumulative = np.array([sum(1 for s in latencies if s <= b) for b in (*LATENCY_BUCKETS, math.inf)], dtype=np.int64)
    found = canary.quantile(q, cumulative)
    rank = math.ceil(q * len(latencies))
    true = sorted(latencies)[rank - 1]
    bounds = (0.0, *LATENCY_BUCKETS, math.inf)
    i = next(i for i in range(1, len(bounds)) if true <= bounds[i])
    if math.isinf(bounds[i]):
        assert math.isinf(found)
    else:
        assert bounds[i - 1] <= found <= bounds[i]


@given(st.lists(st.floats(-50, 50), min_size=20, max_size=300), st.lists(st.floats(-50, 50), min_size=20, max_size=300),
       st.lists(st.floats(-80, 80), min_size=1, max_size=20))  # fmt: skip
@settings(max_examples=100)
def test_rebinning_a_regressors_predictions_keeps_every_count(
    train_a: list[float], train_b: list[float], live: list[float]
) -> None:
    mine, theirs = prediction_profile(train_a, []), prediction_profile(train_b, [])
    counts = mine.count(np.asarray([*live, float("nan")]))
    moved = canary.rebin(counts, mine, theirs)
    assert moved.sum() == pytest.approx(counts.sum()) and moved[-1] == 1  # missing stays missing
    assert len(moved) == len(theirs.labels)
    if len(set(train_a)) == 1 == len(set(train_b)) and train_a[0] == train_b[0]:
        assert moved.tolist() == pytest.approx(counts.tolist())


def test_divergence_is_zero_for_the_same_predictions_and_one_for_disjoint_or_incomparable() -> None:
    same = np.array([50, 30, 20])
    assert canary.divergence(same, same, CLASSES, CLASSES) == pytest.approx(0.0)
    other = FeatureProfile(PREDICTION, (), (1, 1), ("cat", "dog"))
    assert canary.divergence(np.array([40, 60]), same, other, CLASSES) == pytest.approx(1.0)  # no class shared
    regressor = prediction_profile(np.linspace(0, 1, 100), [])
    assert canary.divergence(np.ones(len(regressor.labels), dtype=np.int64), same, regressor, CLASSES) == 1.0
    swapped = canary.divergence(np.array([20, 30, 50]), same, CLASSES, CLASSES)
    assert 0.2 < swapped < 0.4


def _vector(
    answered: int, errors: int, latency: float, predictions: list[int], labelled: int = 0, graded: int = 0,
    mirrored: tuple[int, ...] = (0, 0, 0, 0, 0, 0), mirror_latency: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """A version's vector; ``mirrored``: sampled, answered, failed, rows compared, agreed (or the absolute
    differences) and the stable magnitudes, as read_version lays them out; the answered and failed ones each
    took ``mirror_latency``."""
    buckets = [answered if latency <= b else 0 for b in (*LATENCY_BUCKETS, math.inf)]
    tried = mirrored[1] + mirrored[2]
    timed = [tried if mirror_latency <= b else 0 for b in (*LATENCY_BUCKETS, math.inf)]
    return np.array([answered, errors, labelled, graded, *mirrored, *buckets, *timed, *predictions], dtype=np.int64)


def test_a_versions_labels_at_a_step_are_summed_over_its_pods_quality_answers() -> None:
    """Each pod grades the ids it issued since the step began; the operator sums the version's, in millionths
    for a regressor's errors, and a pod whose answer is not one (an older pod's 404 page, nothing) adds none."""
    answers = [
        Quality(since=5, complete=True, versions={"v2": Graded(ids=3, rows=4, graded=3.5)}).model_dump_json().encode(),
        Quality(since=5, complete=True, versions={"v2": Graded(ids=1, rows=2, graded=1),
                                                  "v1": Graded(ids=9, rows=9, graded=9)}).model_dump_json().encode(),
        b'{"error": "no such endpoint"}', None, b"",
        Quality(since=5, complete=False, versions={"v2": Graded(ids=50, rows=50, graded=0)}).to_json().encode(),
    ]  # fmt: skip
    assert canary.graded(answers, "v2", classifier=True) == (6, 4)
    assert canary.graded(answers, "v2", classifier=False) == (6, 4_500_000)
    assert canary.graded(answers, "v3", classifier=True) == (0, 0)  # an incomplete answer counts nothing either
    huge = Quality(since=5, complete=True, versions={"v2": Graded(ids=1, rows=1, graded=1e30)}).to_json().encode()
    assert canary.graded([huge], "v2", classifier=False) == (1, canary.MOST)  # fits the vector


def test_live_quality_is_compared_once_both_versions_have_enough_labels() -> None:
    analysis = CanaryAnalysis(max_prediction_divergence=None, max_quality_drop="0.05", min_labels=50)
    classes = canary.Predictions(CLASSES, CLASSES)

    def drop(mine: tuple[int, int], theirs: tuple[int, int], predictions: canary.Predictions = classes) -> GateStatus:
        candidate, stable = _vector(100, 0, 0, [0, 0, 0], *mine), _vector(100, 0, 0, [0, 0, 0], *theirs)
        return canary.gates(analysis, candidate, stable, predictions)[-1]

    assert drop((60, 57), (200, 180)) == GateStatus(name="qualityDrop", threshold="0.05", value="-0.05", passed=True)
    assert drop((60, 45), (200, 180)).passed is False  # 75% right where the stable version gets 90%
    assert drop((49, 49), (200, 180)).value is None  # too few labels yet
    regressor = prediction_profile(np.linspace(0, 10, 100), [])
    by_error = canary.Predictions(regressor, regressor)
    mae = 1_000_000  # absolute errors are read in millionths
    assert drop((100, 110 * mae), (100, 100 * mae), by_error).value == "0.1"  # its mean error 10% higher
    assert drop((100, 0), (100, 0), by_error).value == "0"
    assert drop((100, 5), (100, 0), by_error).value == "+Inf"


def test_the_gates_measure_what_the_analysis_sets_and_wait_for_evidence() -> None:
    analysis = CanaryAnalysis(max_error_share="0.02", max_p99_seconds="0.05", max_prediction_divergence="0.3")
    both = canary.Predictions(CLASSES, CLASSES)
    good = canary.gates(
        analysis, _vector(1000, 10, 0.004, [300, 300, 400]), _vector(5000, 0, 0.004, [1600, 1700, 1700]), both
    )
    assert [(g.name, g.passed) for g in good] == [
        ("errorShare", True),
        ("p99Seconds", True),
        ("predictionDivergence", True),
    ]
    assert good[0].value == "0.01" and good[0].threshold == "0.02"
    bad = canary.gates(analysis, _vector(100, 5, 0.7, [100, 0, 0]), _vector(5000, 0, 0.004, [1600, 1700, 1700]), both)
    assert [g.passed for g in bad] == [False, False, False]
    slowest = canary.gates(analysis, _vector(100, 0, 9.0, [40, 30, 30]), _vector(100, 0, 0.0, [40, 30, 30]), both)
    assert (slowest[1].value, slowest[1].passed) == ("+Inf", False)  # past the last bucket: no bound passes
    nothing = canary.gates(analysis, _vector(0, 0, 0, [0, 0, 0]), _vector(10, 0, 0, [5, 5, 0]), both)
    assert all(g.value is None and g.passed is None for g in nothing)
    no_divergence = CanaryAnalysis(max_prediction_divergence=None)
    unknown = canary.Predictions(None, None)
    only_errors = canary.gates(no_divergence, _vector(10, 0, 0, []), _vector(1, 0, 0, []), unknown)
    assert [g.name for g in only_errors] == ["errorShare"]


def _gate(passed: bool | None) -> GateStatus:
    return GateStatus(name="errorShare", threshold="0.01", value=None if passed is None else "0", passed=passed)


@pytest.mark.parametrize(
    ("step", "elapsed", "requests", "gate", "action"),
    [
        (CanaryStep(weight=20, min_requests=100), 5, 50, True, "wait"),  # too few requests to judge
        (CanaryStep(weight=20, min_requests=100), 5, 100, True, "next"),
        (CanaryStep(weight=20, min_requests=100), 5, 100, False, "rollback"),  # at once, with the evidence
        (CanaryStep(weight=20, min_requests=100, pause="1m"), 5, 500, True, "wait"),  # the pause is not over
        (CanaryStep(weight=20, min_requests=100, pause="1m"), 5, 500, False, "rollback"),
        (CanaryStep(weight=20, pause="1m"), 30, 500, False, "wait"),  # judged when the pause is over
        (CanaryStep(weight=20, pause="1m"), 60, 500, False, "rollback"),
        (CanaryStep(weight=20, pause="1m"), 60, 500, None, "wait"),  # not measurable yet
        (CanaryStep(weight=20, pause="1m", max_wait="2m"), 120, 0, None, "rollback"),
        (CanaryStep(weight=20, min_requests=100, max_wait="2m"), 120, 99, True, "rollback"),
    ],
)
def test_a_step_is_judged_once_it_has_its_evidence(
    step: CanaryStep, elapsed: float, requests: int, gate: bool | None, action: str
) -> None:
    assert canary.judge(step, elapsed, requests, [_gate(gate)]).action == action


def test_a_track_sums_increases_since_its_baseline_across_restarts_and_new_pods() -> None:
    track = canary.Track()
    assert track.add({"a": np.array([10, 1])}) is None  # the baseline
    assert track.add({"a": np.array([15, 1])}).tolist() == [5, 0]  # type: ignore[union-attr]
    assert track.add({"a": np.array([3, 0]), "b": np.array([4, 4])}).tolist() == [12, 4]  # type: ignore[union-attr]
    empty = canary.Track()
    assert empty.add({}) is None and empty.add({"c": np.array([2, 2])}).tolist() == [2, 2]  # type: ignore[union-attr]


def test_a_track_whose_bins_became_known_begins_again_from_that_scrape() -> None:
    """The first scrapes of a step can come before the version's pods are ready, so before its profile (and the
    prediction bins its counts include) is read: the counts then grow longer, and are a new baseline."""
    track = canary.Track()
    assert track.add({"a": np.array([10, 1])}) is None
    assert track.add({"a": np.array([12, 1, 0, 0])}) is None  # a new baseline, not a broadcast error
    assert track.add({"a": np.array([15, 2, 1, 0]), "b": np.array([1, 0, 0, 1])}).tolist() == [4, 1, 1, 1]  # type: ignore[union-attr]


SPEC = RolloutSpec(
    strategy="Canary", steps=[CanaryStep(weight=25, min_requests=100), CanaryStep(weight=50, pause="1m")]
)
PASSED = [_gate(True)]


def _seen(**changes: Any) -> Seen:
    fields: dict[str, Any] = dict(stable="v1", target="v2", stable_replicas=3, canary_problem=None, promoted=False,
                                  decision=None, measured=(0, [_gate(None)]), now=T0)  # fmt: skip
    return Seen(**{**fields, **changes})


def _after(moves: Plan, seconds: float = 0) -> tuple[RolloutStatus, datetime]:
    assert moves.rollout is not None
    return moves.rollout, T0 + timedelta(seconds=seconds)


def test_a_better_candidate_goes_through_every_step_to_every_pod() -> None:
    started = canary.plan(SPEC, 10, None, [], _seen())
    assert started.stable == "v1" and started.canary == ("v2", 1) and started.rollout is not None
    assert (started.rollout.step, started.rollout.weight) == (1, 25)
    assert [e.reason for e in started.events] == ["CanaryStarted"]
    again = canary.plan(SPEC, 10, started.rollout, [], _seen(now=T0 + timedelta(seconds=5)))
    assert again.rollout is not None and again.rollout.step == 1 and not again.events  # waiting: idempotent
    first, at = _after(again, 10)
    second = canary.plan(SPEC, 10, first, [], _seen(measured=(150, PASSED), now=at))
    assert second.canary == ("v2", 3) and second.rollout is not None
    assert (second.rollout.step, second.rollout.weight, second.rollout.requests) == (2, 50, 0)
    assert [e.reason for e in second.events] == ["StepPassed"]
    rollout, at = _after(second, 40)
    pausing = canary.plan(SPEC, 10, rollout, [], _seen(measured=(400, PASSED), now=at))
    assert pausing.rollout is not None and pausing.rollout.step == 2  # its pause is not over
    rollout, at = _after(pausing, 75)
    promoting = canary.plan(SPEC, 10, rollout, [], _seen(measured=(900, PASSED), now=at))
    assert promoting.rollout is not None and promoting.rollout.step == 3
    rollout, at = _after(promoting, 80)
    replacing = canary.plan(SPEC, 10, rollout, [], _seen(now=at))
    assert replacing.stable == "v2" and replacing.canary == ("v2", 3)  # the candidate serves until the stable rolled
    assert canary.progressing(SPEC, replacing.rollout, "v2").reason == "Promoting"  # type: ignore[union-attr]
    rollout, at = _after(replacing, 90)
    done = canary.plan(SPEC, 10, rollout, [], _seen(promoted=True, now=at))
    assert done.stable == "v2" and done.canary is None and done.rollout is not None
    assert done.rollout.outcome == "Promoted" and done.rollout.finished == "2026-12-01T12:01:30Z"
    assert [e.reason for e in done.events] == ["Promoted"]
    assert [(r.step, r.weight, r.requests, r.gates) for r in done.rollout.passed] == [(1, 25, 150, PASSED),
                                                                                      (2, 50, 900, PASSED)]  # fmt: skip
    after = canary.plan(SPEC, 10, done.rollout, [], _seen(stable="v2", target="v2", now=at))
    assert after.stable == "v2" and after.canary is None and after.rollout == done.rollout and not after.events
    assert canary.progressing(SPEC, after.rollout, "v2") is None


def test_a_failed_gate_rolls_back_once_and_the_version_is_not_tried_again() -> None:
    started = canary.plan(SPEC, 10, None, ["v0"], _seen())
    failing = [GateStatus(name="errorShare", threshold="0.01", value="0.2", passed=False)]
    rolled = canary.plan(
        SPEC, 10, started.rollout, ["v0"], _seen(measured=(120, failing), now=T0 + timedelta(seconds=20))
    )
    assert rolled.stable == "v1" and rolled.canary is None and rolled.restore == ("v2", "v1")
    assert rolled.rejected == ["v0", "v2"] and rolled.rollout is not None
    assert rolled.rollout.outcome == "RolledBack" and rolled.rollout.gates == failing
    assert "errorShare 0.2 exceeds 0.01" in rolled.rollout.message
    assert [(e.type, e.reason) for e in rolled.events] == [("Warning", "RolledBack")]
    cond = canary.progressing(SPEC, rolled.rollout, "v1")
    assert cond is not None and (cond.status, cond.reason) == ("False", "RolledBack")
    # the alias still points at v2 until the Job moves it back: nothing starts again
    later = canary.plan(SPEC, 10, rolled.rollout, rolled.rejected, _seen(now=T0 + timedelta(seconds=30)))
    assert later.canary is None and later.restore is None and not later.events and later.stable == "v1"
    newer = canary.plan(SPEC, 10, rolled.rollout, rolled.rejected, _seen(target="v3"))
    assert newer.canary == ("v3", 1)  # a newer version is tried


def test_a_step_that_cannot_be_measured_fails_at_its_max_wait_and_pods_that_cannot_start_at_once() -> None:
    started = canary.plan(SPEC, 10, None, [], _seen())
    waited = canary.plan(SPEC, 10, started.rollout, [], _seen(measured=(3, PASSED), now=T0 + timedelta(minutes=10)))
    assert waited.rollout is not None and waited.rollout.outcome == "RolledBack"
    assert "not judged within maxWait 10m: 3 of 100 requests" in waited.rollout.message
    crashing = canary.plan(SPEC, 10, started.rollout, [], _seen(canary_problem=("CrashLoopBackOff", "back-off")))
    assert (
        crashing.rollout is not None and crashing.rollout.outcome == "RolledBack" and crashing.restore == ("v2", "v1")
    )


def test_a_manual_rollout_waits_after_its_last_step_for_a_persons_decision() -> None:
    manual = SPEC.model_copy(update={"approval": "Manual"})
    started = "2026-12-01T11:58:00Z"
    running = RolloutStatus(candidate="v2", stable="v1", started=started, step=3, weight=50,
                            step_started="2026-12-01T12:00:00Z")  # fmt: skip
    waiting = canary.plan(manual, 10, running, [], _seen())
    assert waiting.stable == "v1" and waiting.canary == ("v2", 3)
    assert canary.progressing(manual, waiting.rollout, "v1").reason == "WaitingForApproval"  # type: ignore[union-attr]
    promote = canary.Decision(action="Promote", candidate="v2", started=started, actor="ana", reason="looks good",
                              time="2026-12-01T12:01:00Z")  # fmt: skip
    for void in (
        promote.model_copy(update={"candidate": "v9"}),
        promote.model_copy(update={"started": T0.isoformat()}),
    ):
        # another version's, or one on an earlier canary of this version
        assert canary.decision({canary.DECISION_ANNOTATION: void.model_dump_json(by_alias=True)}, running) is None
    found = canary.decision({canary.DECISION_ANNOTATION: promote.model_dump_json(by_alias=True)}, running)
    assert found == promote
    going = canary.plan(manual, 10, running, [], _seen(decision=found))
    assert going.stable == "v2" and going.rollout is not None and going.rollout.decision is not None
    assert going.rollout.decision.actor == "ana"
    abort = canary.Decision(action="Rollback", candidate="v2", started=started, actor="bo", time="2026-12-01T12:01:00Z")
    back = canary.plan(manual, 10, running, [], _seen(decision=abort))
    assert back.rollout is not None and back.rollout.outcome == "RolledBack" and back.restore == ("v2", "v1")
    assert back.rollout.message == "rolled back by bo"
    assert canary.decision({canary.DECISION_ANNOTATION: "{not json"}, running) is None
    oversized = json.loads(promote.model_dump_json(by_alias=True)) | {"reason": "x" * 2000}
    assert canary.decision({canary.DECISION_ANNOTATION: json.dumps(oversized)}, running) is None  # not into status


def test_the_alias_moving_mid_canary_ends_it_or_replaces_the_candidate() -> None:
    started = canary.plan(SPEC, 10, None, [], _seen())
    back = canary.plan(SPEC, 10, started.rollout, [], _seen(target="v1"))
    assert back.rollout is not None and back.rollout.outcome == "RolledBack" and back.restore is None
    assert back.rejected == []  # a person moved it: not the analysis' verdict
    newer = canary.plan(SPEC, 10, started.rollout, [], _seen(target="v3"))
    assert newer.canary == ("v3", 1) and newer.rollout is not None and newer.rollout.candidate == "v3"


def test_a_canary_starts_once_no_old_stable_pod_is_left_answering() -> None:
    waiting = canary.plan(SPEC, 10, None, [], _seen(draining=2))
    assert waiting == Plan("v1", None, None, [])  # the stable version stays pinned; nothing starts
    started = canary.plan(SPEC, 10, None, [], _seen(draining=0))
    assert started.canary == ("v2", 1) and started.rollout is not None
    going = canary.plan(SPEC, 10, started.rollout, [], _seen(draining=1))  # a running canary is not held back
    assert going.rollout is not None and going.rollout.outcome is None and going.canary == ("v2", 1)


def test_nothing_to_roll_out_without_a_stable_version_or_a_new_target() -> None:
    assert canary.plan(SPEC, 10, None, [], _seen(stable=None)) == Plan("v2", None, None, [])  # the first version
    assert canary.plan(SPEC, 10, None, [], _seen(target="v1")) == Plan("v1", None, None, [])


def test_the_operator_exports_the_running_canary_and_how_canaries_ended() -> None:
    running = RolloutStatus(
        candidate="v2", stable="v1", started="2026-12-01T12:00:00Z", step=2, weight=50,
        step_started="2026-12-01T12:01:00Z", requests=120,
        gates=[GateStatus(name="errorShare", threshold="0.01", value="0.002", passed=True),
               GateStatus(name="p99Seconds", threshold="0.25", value="+Inf", passed=False),
               GateStatus(name="predictionDivergence", threshold="0.5")],
    )  # fmt: skip
    objects: dict[tuple[str, str, str], Obj] = {
        ("modeldeployments", "ml", "iris"): {"status": {"rollout": running.to_wire(), "promotions": 3, "rollbacks": 1}},
        ("modeldeployments", "ml", "wine"): {"status": {"rollout": {**running.to_wire(), "outcome": "Promoted"}}},
        ("driftpolicies", "ml", "iris"): {"status": {}},
    }
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in RolloutCollector(objects).collect() for s in family.samples}  # fmt: skip
    ids = (("candidate", "v2"), ("deployment", "iris"), ("namespace", "ml"), ("stable", "v1"))
    assert samples[("regrow_rollout_step", ids)] == 2 and samples[("regrow_rollout_weight", ids)] == 50
    assert samples[("regrow_rollout_gate_value", _gate_ids(ids, "errorShare"))] == 0.002
    assert samples[("regrow_rollout_gate_threshold", _gate_ids(ids, "p99Seconds"))] == 0.25
    assert ("regrow_rollout_gate_value", _gate_ids(ids, "p99Seconds")) not in samples  # +Inf
    assert ("regrow_rollout_gate_value", _gate_ids(ids, "predictionDivergence")) not in samples
    ended = {k: v for k, v in samples.items() if k[0] == "regrow_rollouts_total"}
    assert ended == {
        ("regrow_rollouts_total", (("deployment", "iris"), ("namespace", "ml"), ("outcome", "Promoted"))): 3,
        ("regrow_rollouts_total", (("deployment", "iris"), ("namespace", "ml"), ("outcome", "RolledBack"))): 1,
        ("regrow_rollouts_total", (("deployment", "wine"), ("namespace", "ml"), ("outcome", "Promoted"))): 0,
        ("regrow_rollouts_total", (("deployment", "wine"), ("namespace", "ml"), ("outcome", "RolledBack"))): 0,
    }
    assert not any(k[0] == "regrow_rollout_step" and ("deployment", "wine") in k[1] for k in samples)  # it ended


def _gate_ids(ids: tuple[tuple[str, str], ...], gate: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*ids, ("gate", gate))))


def test_finished_canaries_are_tallied_once() -> None:
    started = canary.plan(SPEC, 10, None, [], _seen())
    assert canary.tally(started, {"promotions": 2}) == {"promotions": 2, "rollbacks": 0}
    failing = [GateStatus(name="errorShare", threshold="0.01", value="0.2", passed=False)]
    rolled = canary.plan(SPEC, 10, started.rollout, [], _seen(measured=(120, failing)))
    assert canary.tally(rolled, {"promotions": 2}) == {"promotions": 2, "rollbacks": 1}
    after = canary.plan(SPEC, 10, rolled.rollout, rolled.rejected, _seen())
    assert canary.tally(after, {"promotions": 2, "rollbacks": 1}) == {"promotions": 2, "rollbacks": 1}


def test_a_retry_is_taken_once_per_request() -> None:
    request = RetryRequest(version="v2", actor="ana", reason="fixed", time="2026-12-01T12:05:00Z")
    annotations = {canary.RETRY_ANNOTATION: request.model_dump_json(by_alias=True)}
    assert canary.retry(annotations, None) == request
    assert canary.retry(annotations, request.to_wire()) is None  # taken already: a later rollback holds
    newer = request.model_copy(update={"time": "2026-12-01T13:00:00Z"})
    assert canary.retry({canary.RETRY_ANNOTATION: newer.model_dump_json(by_alias=True)}, request.to_wire()) == newer
    assert canary.retry({canary.RETRY_ANNOTATION: '{"version": "V2!"}'}, None) is None
    assert canary.retry({}, None) is None


SHADOWED = RolloutSpec(
    strategy="Canary",
    steps=[
        CanaryStep(mirror=100, min_requests=100),
        CanaryStep(mirror=30, pause="1m"),
        CanaryStep(weight=50, pause="1m"),
    ],
)


def test_a_shadowed_candidate_answers_no_client_until_its_shadow_steps_pass() -> None:
    started = canary.plan(SHADOWED, 10, None, [], _seen())
    assert started.canary is None and started.shadow == ("v2", 3, 100)  # as many pods as the stable ones, no weight
    assert started.rollout is not None and (started.rollout.weight, started.rollout.mirror) == (0, 100)
    assert "shadowing 100% of its requests" in started.events[0].message
    cond = canary.progressing(SHADOWED, started.rollout, "v1")
    assert cond is not None and cond.reason == "ShadowStep" and "v2 shadowing v1 on 100%" in cond.message
    first, at = _after(started, 10)
    waiting = canary.plan(SHADOWED, 10, first, [], _seen(measured=(40, PASSED), mirrored=44, now=at))
    assert waiting.shadow == ("v2", 3, 100) and waiting.canary is None and waiting.rollout is not None
    assert (waiting.rollout.requests, waiting.rollout.mirrored) == (40, 44)
    second = canary.plan(SHADOWED, 10, first, [], _seen(measured=(150, PASSED), mirrored=152, now=at))
    assert second.shadow == ("v2", 1, 30) and second.canary is None and second.rollout is not None  # ceil(3 x 30%)
    assert (second.rollout.step, second.rollout.weight, second.rollout.mirror, second.rollout.mirrored) == (2, 0, 30, 0)
    assert [(r.step, r.mirror, r.requests, r.mirrored) for r in second.rollout.passed] == [(1, 100, 150, 152)]
    rollout, at = _after(second, 80)
    weighted = canary.plan(SHADOWED, 10, rollout, [], _seen(measured=(60, PASSED), mirrored=61, now=at))
    assert weighted.shadow is None and weighted.canary == ("v2", 3) and weighted.rollout is not None
    assert (weighted.rollout.step, weighted.rollout.weight, weighted.rollout.mirror) == (3, 50, None)


def test_a_shadow_only_rollout_promotes_without_candidate_pods_and_a_disagreeing_one_rolls_back() -> None:
    shadow_only = RolloutSpec(strategy="Canary", steps=[CanaryStep(mirror=50, min_requests=100)])
    started = canary.plan(shadow_only, 10, None, [], _seen())
    assert started.shadow == ("v2", 2, 50)
    rollout, at = _after(started, 10)
    passed = canary.plan(shadow_only, 10, rollout, [], _seen(measured=(100, PASSED), now=at))
    assert passed.rollout is not None and passed.rollout.step == 2 and passed.shadow is None and passed.canary is None
    rollout, at = _after(passed, 20)
    replacing = canary.plan(shadow_only, 10, rollout, [], _seen(now=at))
    assert replacing.stable == "v2" and replacing.canary is None and replacing.shadow is None
    disagreeing = [GateStatus(name="disagreement", threshold="0.2", value="0.64", passed=False)]
    rolled = canary.plan(shadow_only, 10, started.rollout, [], _seen(measured=(100, disagreeing), now=at))
    assert rolled.stable == "v1" and rolled.shadow is None and rolled.canary is None and rolled.restore == ("v2", "v1")
    assert rolled.rollout is not None and "disagreement 0.64 exceeds 0.2" in rolled.rollout.message


def test_the_shadow_counters_are_read_for_the_candidate_they_name() -> None:
    ids = 'model="iris",version="v1",candidate="v2"'
    text = _metrics("v1", {200: 10}, [0.001] * 10, {})
    text += "".join(f'regrow_shadow_requests_total{{{ids},outcome="{o}"}} {n}\n'
                    for o, n in (("answered", 90), ("failed", 4), ("dropped", 5), ("unreachable", 1)))  # fmt: skip
    text += f'regrow_shadow_compared_rows_total{{{ids},output="label"}} 200\n'
    text += f'regrow_shadow_agreed_rows_total{{{ids},output="label"}} 150\n'
    text += 'regrow_shadow_requests_total{model="iris",version="v1",candidate="v3",outcome="answered"} 70\n'
    vector = canary.read_version(text, "iris", "v1", None, candidate="v2")
    assert vector[[canary.MIRRORED, canary.MIRROR_ANSWERED, canary.MIRROR_FAILED]].tolist() == [100, 90, 4]
    assert vector[[canary.COMPARED, canary.AGREED, canary.MAGNITUDE]].tolist() == [200, 150, 0]
    assert vector[canary.ANSWERED] == 10
    assert not canary.read_version(text, "iris", "v1", None)[canary.MIRRORED : canary.BUCKETS].any()  # not shadowing
    regressor = 'model="iris",version="v1",candidate="v2",output="value"'
    text = (f"regrow_shadow_compared_rows_total{{{regressor}}} 10\n"
            f"regrow_shadow_absolute_difference_total{{{regressor}}} 2.5\n"
            f"regrow_shadow_stable_magnitude_total{{{regressor}}} 50.0\n")  # fmt: skip
    vector = canary.read_version(text, "iris", "v1", None, candidate="v2")
    assert vector[[canary.COMPARED, canary.AGREED, canary.MAGNITUDE]].tolist() == [10, 2_500_000, 50_000_000]


def test_a_shadow_step_gates_errors_as_the_stable_pods_saw_them_latency_and_disagreement() -> None:
    analysis = CanaryAnalysis(max_error_share="0.05", max_p99_seconds="0.05", max_disagreement="0.2",
                              max_quality_drop="0.1")  # fmt: skip
    # The shadow pods' own counters count whatever reached them (anyone may send the shadow Service requests):
    # here 6,000 fast ones, which neither meet the step's evidence nor dilute its latency.
    candidate = _vector(6000, 0, 0.0004, [0, 0, 0])
    classes = canary.Predictions(CLASSES, CLASSES)

    def shadow(mirrored: tuple[int, ...], predictions: canary.Predictions = classes, took: float = 0.004) -> list[Any]:
        stable = _vector(1000, 0, 0.004, [0, 0, 0], mirrored=mirrored, mirror_latency=took)
        assert canary.requests(candidate, stable, shadow=True) == mirrored[1] + mirrored[2]
        measured = canary.gates(analysis, candidate, stable, predictions, shadow=True)
        return [(g.name, g.value, g.passed) for g in measured]

    assert shadow((100, 96, 4, 480, 450, 0)) == [("errorShare", "0.04", True), ("p99Seconds", "0.004975", True),
                                                ("disagreement", "0.0625", True)]  # fmt: skip
    assert shadow((100, 96, 4, 480, 450, 0), took=0.16)[1] == ("p99Seconds", "0.2485", False)
    assert shadow((100, 0, 0, 0, 0, 0))[1] == ("p99Seconds", None, None)  # mirrored, none answered yet
    assert shadow((100, 80, 20, 400, 100, 0))[::2] == [("errorShare", "0.2", False), ("disagreement", "0.75", False)]
    assert shadow((10, 10, 0, 49, 49, 0))[2] == ("disagreement", None, None)  # too few rows compared yet
    assert shadow((0, 0, 0, 0, 0, 0))[0] == ("errorShare", None, None)
    regressor = prediction_profile(np.linspace(0, 10, 100), [])
    by_value = canary.Predictions(regressor, regressor)
    assert shadow((100, 100, 0, 100, 5_000_000, 50_000_000), by_value)[2] == ("disagreement", "0.1", True)
    assert shadow((100, 100, 0, 100, 5, 0), by_value)[2] == ("disagreement", "+Inf", False)
    assert shadow((100, 100, 0, 100, 0, 0), by_value)[2] == ("disagreement", "0", True)
    unknown = canary.Predictions(None, None)  # no prediction bins: a regressor counts magnitudes, a classifier none
    assert shadow((100, 100, 0, 100, 5_000_000, 50_000_000), unknown)[2][1] == "0.1"
    assert shadow((100, 100, 0, 100, 60, 0), unknown)[2][1] == "0.4"


def test_the_quality_gate_says_which_requests_it_can_grade() -> None:
    described = CanaryAnalysis.model_fields["max_quality_drop"].description or ""
    assert f"at most {MAX_PREDICTED_ROWS} rows" in described  # as many as a prediction id carries predictions of
