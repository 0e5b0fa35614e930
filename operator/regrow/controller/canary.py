"""Canary rollouts on plain Deployments: what is measured, how a step is judged, and what happens next.

The candidate runs in a Deployment of its own (``<name>-canary``) beside the stable one, and the Service
selects both, so the candidate's share of the traffic is its share of the pods: kube-proxy spreads
connections evenly over them. This is what Argo Rollouts does without a mesh. It is coarse with few pods
(beside one stable pod the least share is a half; ``status.rollout.weight`` says what was reached), but the
stable pods never run the candidate: one that is slow, crashes or hangs harms only the connections that
reach it, and rolling back is scaling its Deployment to zero. A split inside the serving pods would reach
exact weights, but the candidate would share the stable pods' process and event loop.

Each step is judged on the two versions' own counters (requests by code, the latency histogram, the
predictions in their reference profile's bins), scraped from the pods at every reconcile and summed per pod
since the step began, restarts counted as Prometheus counts counter resets (``Track``), and on what their
labels graded: each pod's answer to the quality query for the ids it issued since the step began, each id
graded once (``graded``; see regrow.serving.labels). The counts are kept in memory: after an operator restart
a step's measurement starts again, its clock does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pydantic
from prometheus_client.parser import text_string_to_metric_families

from regrow import GROUP
from regrow.api.common import parse_duration
from regrow.api.modeldeployment import (
    CanaryAnalysis,
    CanaryStep,
    GateStatus,
    RetryRequest,
    RolloutDecision,
    RolloutSpec,
    RolloutStatus,
    StepRecord,
)
from regrow.clock import stamp
from regrow.contracts import Quality
from regrow.controller.conditions import Cond
from regrow.controller.result import Event
from regrow.drift.profile import PREDICTION, FeatureProfile
from regrow.drift.stats import jensen_shannon
from regrow.drift.window import Vector
from regrow.telemetry import LATENCY_BUCKETS, answered

# A version's flat vector: requests answered (2xx) or failed (5xx) and the 5xx, rows a label graded and the grade
# (rows right, or the absolute errors summed in millionths); what the stable pods mirrored to a shadow candidate
# (requests sampled, answered and failed, rows compared, and the rows that agreed or the absolute differences,
# and the stable predictions' magnitudes, both in millionths); the cumulative latency buckets of its answers,
# then of the shadow candidate's answers as the stable pods timed them; then its predictions in its bins.
ANSWERED, ERRORS, LABELLED, GRADED = 0, 1, 2, 3
MIRRORED, MIRROR_ANSWERED, MIRROR_FAILED, COMPARED, AGREED, MAGNITUDE, BUCKETS = 4, 5, 6, 7, 8, 9, 10
LATENCY = len(LATENCY_BUCKETS) + 1
SHADOW_BUCKETS = BUCKETS + LATENCY
PREDICTED = SHADOW_BUCKETS + LATENCY
MICRO = 1_000_000
MOST = 2**62  # a count in a vector, at most (int64)
_BOUNDS = {bound: i for i, bound in enumerate((*LATENCY_BUCKETS, math.inf))}  # a bucket's le: its place
MIN_PREDICTIONS = 50  # rows each version predicted at the step before their predictions are compared
_COUNTERS = {  # counters summed as they are: their place in the vector, and their scale
    "regrow_shadow_compared_rows_total": (COMPARED, 1),
    "regrow_shadow_agreed_rows_total": (AGREED, 1),
    "regrow_shadow_absolute_difference_total": (AGREED, MICRO),
    "regrow_shadow_stable_magnitude_total": (MAGNITUDE, MICRO),
}
_HISTOGRAMS = {  # cumulative latency buckets: where in the vector they start
    "regrow_inference_request_duration_seconds_bucket": BUCKETS,
    "regrow_shadow_request_duration_seconds_bucket": SHADOW_BUCKETS,
}


def canary_replicas(weight: int, stable: int, most: int) -> int:
    """Candidate pods whose share beside ``stable`` pods is nearest ``weight`` percent (fewer on a tie): at
    least one, at most ``most``."""
    stable = max(1, stable)
    ideal = weight * stable / (100 - weight)  # c / (stable + c) = weight / 100
    options = {max(1, min(most, n)) for n in (math.floor(ideal), math.ceil(ideal))}
    return min(options, key=lambda c: (abs(c / (stable + c) - weight / 100), c))


def shadow_replicas(percent: int, stable: int, most: int) -> int:
    """Shadow pods for ``percent`` of the requests of ``stable`` pods: as many as the stable pods would need
    for that share (at least one, at most ``most``)."""
    return max(1, min(most, math.ceil(max(1, stable) * percent / 100)))


def share(canary: int, stable: int) -> int:
    """The candidate's percent of the pods."""
    return round(100 * canary / (canary + stable)) if canary + stable else 0


def size(prediction: FeatureProfile | None) -> int:
    return PREDICTED + (len(prediction.labels) if prediction else 0)


def graded(answers: list[bytes | None], version: str, classifier: bool) -> tuple[int, int]:
    """A version's labelled rows at a step and their grade (rows right, or the absolute errors summed in
    millionths), summed over its pods' answers to the quality query (``regrow.contracts.Quality``): each id
    graded once, by the pod that issued it, and only the ids issued since the step began. An answer that does
    not parse (a pod of an older regrow: a 404) counts nothing, nor one that is incomplete (the pod forgot some of
    those ids: what it holds would be a sample that someone could have chosen)."""
    rows, grade = 0, 0.0
    for raw in answers:
        try:
            quality = Quality.model_validate_json(raw) if raw else None
        except pydantic.ValidationError:
            continue
        found = quality.versions.get(version) if quality is not None and quality.complete else None
        if found is not None:
            rows, grade = rows + found.rows, grade + found.graded
    return rows, min(round(grade if classifier else grade * MICRO), MOST)


def read_version(text: str, model: str, version: str, prediction: FeatureProfile | None,
                 candidate: str | None = None) -> Vector:  # fmt: skip
    """One pod's counters of ``model``/``version`` as a flat vector (see ANSWERED): requests it refused (4xx,
    429 from load shedding included) are left out, so that no client sending bad requests dilutes the gates;
    5xx count as answered and as errors. Any pod may grade a version's
    predictions (a label reaches whichever pod the Service picks), so every pod is read for each version.
    With ``candidate``, also what ``version``'s pods mirrored to that shadow candidate and how it compared."""
    out = np.zeros(size(prediction), dtype=np.int64)
    bins = {label: i for i, label in enumerate(prediction.labels)} if prediction else {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("version") != version or not math.isfinite(sample.value):
                continue
            if sample.name.startswith("regrow_shadow_") and (candidate is None or labels.get("candidate") != candidate):
                continue
            if sample.name in _COUNTERS:
                where, scale = _COUNTERS[sample.name]
                out[where] += round(sample.value * scale)
            elif sample.name == "regrow_shadow_requests_total":
                out[MIRRORED] += round(sample.value)
                counted = {"answered": MIRROR_ANSWERED, "failed": MIRROR_FAILED}.get(labels.get("outcome", ""))
                out[counted] += round(sample.value) if counted is not None else 0
            elif sample.name == "regrow_inference_requests_total" and labels.get("code", "").isdigit():
                code = int(labels["code"])
                if answered(code):
                    out[ANSWERED] += round(sample.value)
                    out[ERRORS] += round(sample.value) if code >= 500 else 0
            elif sample.name in _HISTOGRAMS:
                bound = _BOUNDS.get(float(labels.get("le", "nan")))
                if bound is not None:
                    out[_HISTOGRAMS[sample.name] + bound] = round(sample.value)
            elif sample.name == "regrow_feature_bin_total" and labels.get("feature") == PREDICTION:
                place = bins.get(labels.get("bin", ""))
                if place is not None:
                    out[PREDICTED + place] = round(sample.value)
    return out


def disagreement(stable: Vector, prediction: FeatureProfile | None) -> float:
    """How far a shadow candidate's answers strayed from the stable version's on the rows compared: the share
    labelled otherwise (a classifier), or the summed absolute differences over the stable predictions' summed
    magnitudes (a regressor). Which it is, the stable version's prediction bins say (without them: a classifier
    counts no magnitudes)."""
    classifier = bool(prediction.categories) if prediction is not None else not stable[MAGNITUDE]
    if classifier:
        return float(1 - stable[AGREED] / stable[COMPARED])
    if stable[MAGNITUDE] == 0:
        return 0.0 if stable[AGREED] == 0 else math.inf
    return float(stable[AGREED] / stable[MAGNITUDE])


def quantile(q: float, cumulative: npt.NDArray[np.int64]) -> float:
    """``histogram_quantile`` over cumulative bucket counts (LATENCY_BUCKETS, then +Inf): linear within the
    bucket the rank falls in; +Inf when it falls past the last bound."""
    total = int(cumulative[-1])
    rank = q * total
    i = int(np.searchsorted(cumulative, rank, side="left"))
    if i >= len(LATENCY_BUCKETS):
        return math.inf
    lower, below = (LATENCY_BUCKETS[i - 1], int(cumulative[i - 1])) if i else (0.0, 0)
    inside = int(cumulative[i]) - below
    return lower + (LATENCY_BUCKETS[i] - lower) * ((rank - below) / inside if inside else 1.0)


def _bin(value: float, edges: npt.NDArray[np.float64]) -> int:
    """The bin ``value`` falls in among ``edges`` as a profile bins it (0: underflow; len(edges): overflow)."""
    return int((value >= edges).sum()) - int(value == edges[-1])


def rebin(counts: npt.NDArray[np.int64], source: FeatureProfile, target: FeatureProfile) -> npt.NDArray[np.float64]:
    """Counts in ``source``'s prediction bins moved into ``target``'s, so that two versions' predictions can
    be compared: classes by name (a class the target lacks goes to one extra bin); a regressor's bins by
    overlap, the mass of each spread evenly over it, under- and overflow as points just past the outer edges."""
    if source.categories or target.categories:
        if not (source.categories and target.categories):
            raise ValueError("one version classifies and the other regresses")
        index = {c: i for i, c in enumerate(target.categories)}
        out = np.zeros(len(target.categories) + 1)
        for category, n in zip(source.categories, counts.tolist(), strict=True):
            out[index.get(category, len(target.categories))] += n
        return out
    edges, mine = np.asarray(target.edges, dtype=np.float64), np.asarray(source.edges, dtype=np.float64)
    bounds = np.concatenate([[-np.inf], edges, [np.inf]])
    out = np.zeros(len(edges) + 2)  # underflow, the regular bins, overflow, then missing
    under, *regular, over, missing = counts.tolist()
    out[_bin(float(np.nextafter(mine[0], -np.inf)), edges)] += under
    out[_bin(float(np.nextafter(mine[-1], np.inf)), edges)] += over
    out[-1] += missing
    for low, high, n in zip(mine[:-1], mine[1:], regular, strict=True):
        if high > low:
            overlap = np.clip(np.minimum(high, bounds[1:]) - np.maximum(low, bounds[:-1]), 0.0, None)
            out[:-1] += n * overlap / (high - low)
        else:
            out[_bin(float(low), edges)] += n
    return out


def divergence(
    candidate: npt.NDArray[np.int64], stable: npt.NDArray[np.int64], mine: FeatureProfile, theirs: FeatureProfile
) -> float:
    """The Jensen-Shannon distance between the candidate's predictions and the stable version's, in the stable
    version's bins (1: a classifier against a regressor)."""
    try:
        moved = rebin(candidate, mine, theirs)
    except ValueError:
        return 1.0
    reference = np.concatenate([stable.astype(np.float64), np.zeros(len(moved) - len(stable))])
    mask = np.ones((1, len(moved)), dtype=bool)
    return float(jensen_shannon(reference[None, :], moved[None, :], mask)[0])


def _fmt(value: float) -> str:
    return "+Inf" if math.isinf(value) else f"{value:.6f}".rstrip("0").rstrip(".")


def _gate(name: Literal["errorShare", "p99Seconds", "predictionDivergence", "qualityDrop", "disagreement"],
          threshold: str, value: float | None) -> GateStatus:  # fmt: skip
    if value is None:
        return GateStatus(name=name, threshold=threshold)
    passed = not math.isinf(value) and Decimal(_fmt(value)) <= Decimal(threshold)
    return GateStatus(name=name, threshold=threshold, value=_fmt(value), passed=passed)


@dataclass(frozen=True)
class Predictions:
    """Both versions' prediction bins (None: a version's profile has none)."""

    candidate: FeatureProfile | None
    stable: FeatureProfile | None


def gates(analysis: CanaryAnalysis, candidate: Vector, stable: Vector, predictions: Predictions,
          shadow: bool = False) -> list[GateStatus]:  # fmt: skip
    """Every gate the analysis sets, measured over the step's counts (unset value: not measurable yet). At a
    shadow step: the candidate's errors as the stable pods saw them (an answer other than 200, late or
    unreadable), its latency as they timed it, and its disagreement with the stable version; predictions and
    labels are not gated there (it serves no client, and none labels its answers)."""
    tried = requests(candidate, stable, shadow)
    failed = stable[MIRROR_FAILED] if shadow else candidate[ERRORS]
    out = [_gate("errorShare", analysis.max_error_share, failed / tried if tried else None)]
    if analysis.max_p99_seconds is not None:
        timed = stable[SHADOW_BUCKETS:PREDICTED] if shadow else candidate[BUCKETS:SHADOW_BUCKETS]
        p99 = quantile(0.99, timed) if timed[-1] else None
        out.append(_gate("p99Seconds", analysis.max_p99_seconds, p99))
    if shadow:
        if analysis.max_disagreement is not None:
            value = disagreement(stable, predictions.stable) if stable[COMPARED] >= MIN_PREDICTIONS else None
            out.append(_gate("disagreement", analysis.max_disagreement, value))
        return out
    if analysis.max_prediction_divergence is not None:
        mine, theirs = candidate[PREDICTED:], stable[PREDICTED:]
        known = predictions.candidate is not None and predictions.stable is not None
        enough = known and min(int(mine.sum()), int(theirs.sum())) >= MIN_PREDICTIONS
        value = (
            divergence(mine, theirs, predictions.candidate, predictions.stable)  # type: ignore[arg-type]
            if enough
            else None
        )
        out.append(_gate("predictionDivergence", analysis.max_prediction_divergence, value))
    if analysis.max_quality_drop is not None:
        classifier = predictions.stable is not None and bool(predictions.stable.categories)
        drop = quality_drop(candidate, stable, classifier) if min(candidate[LABELLED], stable[LABELLED]) >= (
            analysis.min_labels
        ) else None  # fmt: skip
        out.append(_gate("qualityDrop", analysis.max_quality_drop, drop))
    return out


def requests(candidate: Vector, stable: Vector, shadow: bool = False) -> int:
    """The candidate's requests at a step, the evidence its gates are judged on: those its pods answered or
    failed (2xx, 5xx), or at a shadow step those the stable pods mirrored to it and got an answer to or
    failed on (what reaches the shadow pods by any other way is no evidence)."""
    return int(stable[MIRROR_ANSWERED] + stable[MIRROR_FAILED] if shadow else candidate[ANSWERED])


def quality_drop(candidate: Vector, stable: Vector, classifier: bool) -> float:
    """How much worse the candidate did on the labels than the stable version at this step: accuracy lost (a
    classifier's), or the mean absolute error's relative increase (a regressor's); negative when better."""
    mine, theirs = candidate[GRADED] / candidate[LABELLED], stable[GRADED] / stable[LABELLED]
    if classifier:
        return float(theirs - mine)
    if theirs == 0:
        return 0.0 if mine == 0 else math.inf
    return float((mine - theirs) / theirs)


@dataclass(frozen=True)
class Verdict:
    action: Literal["wait", "next", "rollback"]
    message: str


def judge(step: CanaryStep, elapsed: float, requests: int, measured: list[GateStatus]) -> Verdict:
    """A step is judged once it has its evidence (its minRequests, else its pause over): a failed gate then
    rolls back at once, and the step passes once every gate passes and its pause is over. By maxWait it has
    passed or it fails."""
    pause = parse_duration(step.pause) if step.pause else 0
    evidence = requests >= step.min_requests if step.min_requests is not None else elapsed >= pause
    failed = [g for g in measured if g.passed is False]
    unmeasured = [g.name for g in measured if g.passed is None]
    if evidence and failed:
        return Verdict("rollback", "; ".join(f"{g.name} {g.value} exceeds {g.threshold}" for g in failed))
    if evidence and not unmeasured and elapsed >= pause:
        return Verdict("next", f"passed at {step.describe()} with {requests} requests")
    missing = [f"{requests} of {step.min_requests} requests"] if not evidence and step.min_requests else []
    missing += [f"{name} not measurable" for name in unmeasured]
    if elapsed >= parse_duration(step.max_wait):
        return Verdict("rollback", f"not judged within maxWait {step.max_wait}: {', '.join(missing) or 'waiting'}")
    return Verdict("wait", ", ".join(missing) or f"pausing {step.pause}")


@dataclass
class Track:
    """One version's counts since its step began, summed over its pods: each pod's increase between scrapes,
    a counter that went down counted from zero (the pod restarted), a pod first seen after the first scrape
    counted whole (it started within the step). The first scrape is the baseline."""

    last: dict[str, Vector] = field(default_factory=dict)
    total: Vector | None = None
    started: bool = False

    def add(self, pods: dict[str, Vector]) -> Vector | None:
        """One scrape of the track's pods; the counts since the step began (None: this was the baseline). A
        scrape whose counts have another shape than the last (the version's prediction bins were read in
        between: its pods were not ready before) is a new baseline."""
        if len({v.shape for v in [*pods.values(), *self.last.values()]}) > 1:
            self.last, self.total, self.started = {}, None, False
        baseline, self.started = not self.started, True
        for pod, counts in pods.items():
            before, self.last[pod] = self.last.get(pod), counts
            if baseline:
                continue
            grown = counts if before is None or (counts < before).any() else counts - before
            self.total = grown if self.total is None else self.total + grown
        return None if baseline else self.total


@dataclass
class StepCounts:
    """The counts of one step of one rollout, per track (candidate and stable)."""

    candidate: str
    step: int
    tracks: dict[str, Track] = field(default_factory=dict)


@dataclass
class Memory:
    """What the ModelDeployment reconciler keeps between reconciles: the counts of each running step, and each
    version's prediction bins (from its pods' profile)."""

    steps: dict[str, StepCounts] = field(default_factory=dict)  # by the ModelDeployment's uid
    predictions: dict[tuple[str, str], FeatureProfile | None] = field(default_factory=dict)  # (uid, version)

    def forget(self, uid: str) -> None:
        self.steps.pop(uid, None)
        for key in [k for k in self.predictions if k[0] == uid]:
            del self.predictions[key]


DECISION_ANNOTATION = f"{GROUP}/rollout-decision"  # set by `regrow promote` and `regrow rollback`
RETRY_ANNOTATION = f"{GROUP}/retry"  # set by `regrow promote --version`
Read = TypeVar("Read", bound=pydantic.BaseModel)
KEEP_REJECTED = 20


class Decision(RolloutDecision):
    """The annotation a person's `regrow promote` or `regrow rollback` writes: the decision, on the canary of
    ``candidate`` that ``started`` then (a decision on an earlier canary of the same version is void)."""

    candidate: str
    started: str


def _annotation(annotations: dict[str, str], key: str, model: type[Read]) -> Read | None:
    """The annotation ``key`` read as ``model`` (None: absent, or not one)."""
    raw = annotations.get(key)
    if not raw:
        return None
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError:
        return None


def decision(annotations: dict[str, str], rollout: RolloutStatus | None) -> Decision | None:
    """The person's decision on ``rollout``, if the annotation holds one (any other is ignored)."""
    found = _annotation(annotations, DECISION_ANNOTATION, Decision)
    if found is None or rollout is None or (found.candidate, found.started) != (rollout.candidate, rollout.started):
        return None
    return found


def retry(annotations: dict[str, str], last: dict[str, Any] | None) -> RetryRequest | None:
    """A person's request to try a rolled-back version again, if the annotation holds one not yet taken."""
    found = _annotation(annotations, RETRY_ANNOTATION, RetryRequest)
    return None if found is None or (last is not None and found == RetryRequest.model_validate(last)) else found


@dataclass(frozen=True)
class Seen:
    """What a reconcile knows when it plans the canary."""

    stable: str | None  # the version the stable pods serve (pinned, or the one they all serve)
    target: str | None  # where the alias points now (or the spec's version)
    stable_replicas: int
    canary_problem: tuple[str, str] | None  # (reason, message): the candidate's pods (canary or shadow) cannot start
    promoted: bool  # the stable Deployment has rolled out the candidate
    decision: Decision | None
    measured: tuple[int, list[GateStatus]]  # the candidate's requests at this step, and the gates
    now: datetime
    mirrored: int = 0  # at a shadow step: the requests the stable pods sampled for the candidate
    draining: int = 0  # stable pods shutting down, which may still answer what they received


@dataclass(frozen=True)
class Plan:
    stable: str | None  # the version the stable Deployment pins
    canary: tuple[str, int] | None  # the candidate and its pods; None: no candidate pods
    rollout: RolloutStatus | None
    rejected: list[str]
    events: list[Event] = field(default_factory=list)
    restore: tuple[str, str] | None = None  # (candidate, stable): move the alias back, if it is still there
    ended: bool = False  # the rollout reached its outcome now
    retried: RetryRequest | None = None  # a request to try a rolled-back version again, taken now
    shadow: tuple[str, int, int] | None = None  # the candidate, its shadow pods and the percent they ask for


def tally(plan: Plan, recorded: dict[str, int]) -> dict[str, int]:
    """``status.promotions`` and ``status.rollbacks``: the canaries that ended each way, in all."""
    counts = {key: int(recorded.get(key) or 0) for key in ("promotions", "rollbacks")}
    if plan.ended and plan.rollout is not None:
        counts["promotions" if plan.rollout.outcome == "Promoted" else "rollbacks"] += 1
    return counts


Pods = tuple[tuple[str, int] | None, tuple[str, int, int] | None, int]


def _pods(spec: RolloutSpec, most: int, candidate: str, step: int, seen: Seen) -> Pods:
    """The candidate's pods at ``step``: its canary pods (version, replicas) or its shadow pods (version,
    replicas, percent mirrored), and the weight they give it. Past the last step, as at the last if they
    serve requests (shadow pods do not)."""
    at = spec.steps[min(step, len(spec.steps)) - 1]
    if at.weight is None:
        mirror = int(at.mirror or 0)
        shadow = (candidate, shadow_replicas(mirror, seen.stable_replicas, most), mirror)
        return None, shadow if step <= len(spec.steps) else None, 0
    replicas = canary_replicas(at.weight, seen.stable_replicas, most)
    return (candidate, replicas), None, share(replicas, seen.stable_replicas)


def _start(spec: RolloutSpec, most: int, candidate: str, seen: Seen, rejected: list[str]) -> Plan:
    assert seen.stable is not None
    canary, shadow, weight = _pods(spec, most, candidate, 1, seen)
    rollout = RolloutStatus(
        candidate=candidate, stable=seen.stable, started=stamp(seen.now), step=1, weight=weight,
        mirror=spec.steps[0].mirror, step_started=stamp(seen.now), message="the candidate's pods are starting",
    )  # fmt: skip
    how = f" (shadowing {spec.steps[0].mirror}% of its requests)" if shadow else ""
    event = Event("Normal", "CanaryStarted", f"Canary of version {candidate} beside {seen.stable} started{how}")
    return Plan(seen.stable, canary, rollout, rejected, [event], shadow=shadow)


def _finish(running: RolloutStatus, outcome: Literal["Promoted", "RolledBack"], message: str, seen: Seen,
            rejected: list[str], restore: bool = False) -> Plan:  # fmt: skip
    rollout = running.model_copy(
        update={
            "outcome": outcome,
            "message": message,
            "finished": stamp(seen.now),
            "decision": seen.decision or running.decision,
        }
    )
    if outcome == "Promoted":
        event = Event("Normal", "Promoted", f"Version {running.candidate} serves every request: {message}")
        return Plan(running.candidate, None, rollout, rejected, [event], ended=True)
    if restore:
        rejected = [*[v for v in rejected if v != running.candidate], running.candidate][-KEEP_REJECTED:]
    event = Event("Warning", "RolledBack", f"Version {running.candidate} rolled back to {running.stable}: {message}")
    back = (running.candidate, running.stable) if restore else None
    return Plan(running.stable, None, rollout, rejected, [event], back, ended=True)


def plan(spec: RolloutSpec, most: int, previous: RolloutStatus | None, rejected: list[str], seen: Seen) -> Plan:
    """The next move of a Canary rollout, from the last one recorded and what is seen now (level-based: the
    same inputs give the same plan, however often it runs). A canary starts once no stable pod of an earlier
    version is left answering: its steps compare the candidate with the stable version alone."""
    running = previous if previous is not None and previous.outcome is None else None
    if running is not None:
        return _advance(spec, most, running, rejected, seen)
    candidate = seen.target
    if seen.stable is None or candidate is None or candidate in (seen.stable, *rejected) or seen.draining:
        return Plan(seen.stable or candidate, None, previous, rejected)
    return _start(spec, most, candidate, seen, rejected)


def _advance(spec: RolloutSpec, most: int, running: RolloutStatus, rejected: list[str], seen: Seen) -> Plan:
    if seen.target is not None and seen.target != running.candidate:
        if seen.target == running.stable:
            return _finish(running, "RolledBack", f"the alias moved back to {running.stable}", seen, rejected)
        return _start(spec, most, seen.target, seen, rejected)  # a newer candidate replaces this one
    if seen.decision is not None and seen.decision.action == "Rollback":
        reason = f"rolled back by {seen.decision.actor}" + (f": {seen.decision.reason}" if seen.decision.reason else "")
        return _finish(running, "RolledBack", reason, seen, rejected, restore=True)
    if running.step > len(spec.steps):
        return _promote(spec, most, running, seen, rejected)
    if seen.canary_problem is not None:
        reason, message = seen.canary_problem
        why = f"the candidate's pods cannot start ({reason}: {message})"
        return _finish(running, "RolledBack", why, seen, rejected, restore=True)
    return _judge_step(spec, most, running, seen, rejected)


def _judge_step(spec: RolloutSpec, most: int, running: RolloutStatus, seen: Seen, rejected: list[str]) -> Plan:
    step, last = spec.steps[running.step - 1], len(spec.steps)
    canary, shadow, weight = _pods(spec, most, running.candidate, running.step, seen)
    requests, measured = seen.measured
    elapsed = (seen.now - datetime.fromisoformat(running.step_started)).total_seconds()
    verdict = judge(step, elapsed, requests, measured)
    update = {"weight": weight, "mirror": step.mirror, "requests": requests, "mirrored": seen.mirrored,
              "gates": measured}  # fmt: skip
    current = running.model_copy(update={**update, "message": verdict.message})
    if verdict.action == "rollback":
        why = f"step {running.step} failed: {verdict.message}"
        return _finish(current, "RolledBack", why, seen, rejected, restore=True)
    if verdict.action == "wait":
        return Plan(running.stable, canary, current, rejected, shadow=shadow)
    canary, shadow, weight = _pods(spec, most, running.candidate, running.step + 1, seen)
    record = StepRecord(step=running.step, weight=current.weight, mirror=step.mirror, requests=requests,
                        mirrored=seen.mirrored, gates=measured, passed=stamp(seen.now))  # fmt: skip
    passed = current.model_copy(
        update={
            "step": running.step + 1,
            "step_started": stamp(seen.now),
            "requests": 0,
            "mirrored": 0,
            "gates": [],
            "weight": weight,
            "mirror": spec.steps[running.step].mirror if running.step < last else None,
            "passed": [*running.passed, record],
        }
    )
    event = Event("Normal", "StepPassed", f"Step {running.step} of {last}: {verdict.message}")
    return Plan(running.stable, canary, passed, rejected, [event], shadow=shadow)


def _promote(spec: RolloutSpec, most: int, running: RolloutStatus, seen: Seen, rejected: list[str]) -> Plan:
    """Past the last step: wait for a person's promote where approval is Manual, then replace the stable
    pods with the candidate's, the candidate's own pods serving until that is done."""
    kept = _pods(spec, most, running.candidate, running.step, seen)[0]
    approved = spec.approval == "Automatic" or (seen.decision is not None and seen.decision.action == "Promote")
    if not approved:
        waiting = running.model_copy(update={"message": "waiting for `regrow promote` or `regrow rollback`"})
        return Plan(running.stable, kept, waiting, rejected)
    if seen.promoted:
        return _finish(running, "Promoted", f"every step passed, {running.stable} replaced", seen, rejected)
    update = {"message": "replacing the stable pods", "decision": seen.decision or running.decision}
    return Plan(running.candidate, kept, running.model_copy(update=update), rejected)


def progressing(spec: RolloutSpec, rollout: RolloutStatus | None, stable: str | None) -> Cond | None:
    """The Progressing condition while a canary runs, or after it rolled back while nothing newer serves."""
    if rollout is None:
        return None
    where = f"{rollout.candidate} at {rollout.weight}% beside {rollout.stable}"
    if rollout.outcome == "RolledBack" and stable == rollout.stable:
        return Cond("Progressing", "False", "RolledBack", f"{rollout.candidate} rolled back: {rollout.message}")
    if rollout.outcome is not None:
        return None
    if rollout.step <= len(spec.steps):
        reason, how = ("CanaryStep", where) if rollout.mirror is None else (
            "ShadowStep", f"{rollout.candidate} shadowing {rollout.stable} on {rollout.mirror}% of its requests"
        )  # fmt: skip
        steps = f"step {rollout.step} of {len(spec.steps)}"
        return Cond("Progressing", "True", reason, f"{steps}, {how}: {rollout.message}")
    if spec.approval == "Manual" and not (rollout.decision and rollout.decision.action == "Promote"):
        return Cond("Progressing", "True", "WaitingForApproval", f"{where} passed every step; {rollout.message}")
    return Cond("Progressing", "True", "Promoting", f"{rollout.candidate} passed every step; {rollout.message}")


def abandon(rollout: RolloutStatus, message: str) -> RolloutStatus:
    """A running canary ended because the spec no longer asks for one (the stable Deployment takes over)."""
    if rollout.outcome is not None:
        return rollout
    return rollout.model_copy(
        update={"outcome": "RolledBack", "message": message, "finished": stamp(datetime.now(UTC))}
    )
