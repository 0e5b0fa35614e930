"""The DriftPolicy reconciler: every ``interval``, score the target's live traffic over ``window`` against
the serving version's reference profile, and retrain when the policy has breached often enough.

Counters come from the serving pods' /metrics (the default source), the reference profile from the pods
too (``/v2/models/<name>/profile``), so the operator needs no access to the registry. Scrape history lives
in the operator's memory: after a restart the first check is a baseline. Everything that decides whether
to retrain (consecutive breaches, the last retrain, the jobs created) is in status, so it survives restarts,
and a retrain's name is derived from that status, so no breach creates two TrainingJobs.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from regrow import API_VERSION, GROUP
from regrow.api import InvalidSpec, parse_spec
from regrow.api.common import parse_duration
from regrow.api.driftpolicy import DriftCheck, DriftPolicySpec, DriftPolicyStatus, FeatureDrift
from regrow.api.kinds import MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.clock import now
from regrow.controller import conditions, outbound
from regrow.controller.conditions import Cond
from regrow.controller.kube import Api, Conflict, Obj, path
from regrow.controller.modeldeployment import pod_ready, serving_pods
from regrow.controller.outbound import Fetch
from regrow.controller.result import Event, Result, checked, transition_event
from regrow.drift.policy import Check, Layout, check
from regrow.drift.profile import FeatureProfile, Profile
from regrow.drift.window import History, Scrape, Vector, bins_query, parse_bins, parse_query_result
from regrow.manifests.common import Owner
from regrow.manifests.serving import metrics_address

READY, DRIFT = "Ready", "DriftDetected"
POLICY_LABEL = f"{GROUP}/driftpolicy"
APPROVE_ANNOTATION = f"{GROUP}/approve"
KEEP_JOBS = 20
DRIFT_CHECK_FEATURES = 10

Query = Callable[[str, str], bytes]  # (Prometheus URL, PromQL) -> the answer's body
MIN_CHECK_SECONDS = 10.0  # the operator's default floor under spec.interval (the chart's drift.minCheckSeconds)
MAX_PROMETHEUS_ANSWER = 16 << 20  # bytes of a query's answer (one series per bin of the model's features)


@dataclass
class Memory:
    """What the operator keeps between checks: per policy, the scrape history and the profile in use."""

    histories: dict[str, History] = field(default_factory=dict)
    profiles: dict[str, tuple[Profile, Layout]] = field(default_factory=dict)

    def forget(self, body: Obj) -> None:
        """A deleted policy's readings."""
        self.histories.pop(body["metadata"]["uid"], None)
        self.profiles.pop(body["metadata"]["uid"], None)


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    return time.time() - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def next_check_in(body: Obj, minimum: float = MIN_CHECK_SECONDS) -> float:
    """Seconds until the next check: one per ``spec.interval`` (``minimum`` at least, the operator's
    setting), and one at once when the pending retrain is approved. A policy with no check yet (waiting for
    its model, pods or source) looks again after half the time it has waited so far, 2 s at least and one
    interval at most: soon after it is created, rarely once it has waited long."""
    status = body.get("status") or {}
    pending = status.get("pendingApproval")
    if pending and (body["metadata"].get("annotations") or {}).get(APPROVE_ANNOTATION) == pending:
        return 0.0
    try:
        interval = max(minimum, parse_duration((body.get("spec") or {}).get("interval", "1m")))
    except ValueError:
        interval = 60  # an invalid spec: its InvalidSpec condition is written once per generation
    last = (status.get("lastCheck") or {}).get("time")
    if last is None:
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == READY), None)
        if ready is None:
            return 0.0
        return min(interval, max(2.0, _seconds_since(ready.get("lastTransitionTime")) / 2))
    return max(0.0, interval - _seconds_since(last))


def _waiting(body: Obj, reason: str, message: str) -> Result:
    cond = Cond(READY, "False" if reason in ("InvalidSpec", "TargetNotFound") else "Unknown", reason, message)
    previous = (body.get("status") or {}).get("conditions") or []
    return Result(checked(DriftPolicyStatus, conditions.status(body, [cond])), transition_event(previous, cond))


def http_query(url: str, promql: str) -> bytes:
    """A Prometheus instant query; raises OSError when the server cannot be reached or refuses."""
    query = urllib.parse.urlencode({"query": promql})
    return outbound.get(f"{url.rstrip('/')}/api/v1/query?{query}", 10.0, MAX_PROMETHEUS_ANSWER).body


class SourceNotAllowed(ValueError):
    """The policy names a Prometheus URL the operator's settings do not allow."""


def allowing(urls: Iterable[str], query: Query = http_query) -> Query:
    """``query`` for the Prometheus servers the operator's settings allow (the chart's
    drift.prometheusUrls: a base URL, or a URL under one), refusing any other: whoever can create a
    DriftPolicy must not make the operator call what it can reach and they cannot."""
    allowed = tuple(url.rstrip("/") for url in urls if url.strip())

    def guarded(url: str, promql: str) -> bytes:
        base = url.rstrip("/")
        if dot_segments(base) or not any(base == a or base.startswith(a + "/") for a in allowed):
            raise SourceNotAllowed(
                f"the operator queries only the Prometheus URLs its settings allow (the chart's "
                f"drift.prometheusUrls: {', '.join(allowed) or 'none'}), and {url} is not one of them"
            )
        return query(url, promql)

    return guarded


def dot_segments(url: str) -> bool:
    """Whether ``url``'s path has a ``.`` or ``..`` segment, percent-encoded (once or more) or not: one that the
    server resolves would take a URL under an allowed one anywhere on its host."""
    for raw in urllib.parse.urlsplit(url).path.split("/"):
        decoded = raw
        for _ in range(4):  # %2e, %252e, ...: each decoding may reveal another
            decoded = urllib.parse.unquote(decoded)
        if decoded in (".", ".."):
            return True
    return False


def scrape(api: Api, fetch: Fetch, owner: Owner, target: str, model: str, version: str,
           memory: Memory) -> tuple[Profile, Layout, list[Obj]] | None:  # fmt: skip
    """The profile of ``version`` and the ready pods serving it, or None while no pod serves it."""
    key = owner.uid
    ready = [p for p in serving_pods(api, owner.namespace, target) if pod_ready(p) and p["status"].get("podIP")]
    if key not in memory.profiles or memory.histories.get(key, History("")).version != version:
        for pod in ready:
            raw = fetch(metrics_address(pod), f"/v2/models/{model}/profile")
            if raw:
                profile = Profile.from_json(raw).monitored()  # the inputs and the predictions
                memory.profiles[key] = (profile, Layout.of(profile))
                memory.histories[key] = History(version)
                break
        else:
            return None
    profile, layout = memory.profiles[key]
    return profile, layout, ready


@dataclass(frozen=True)
class Target:
    """What a check scores: the version the target serves, its reference profile, and its ready pods."""

    model: str
    version: str
    profile: Profile
    layout: Layout
    pods: list[Obj]


def live_counts(spec: DriftPolicySpec, owner: Owner, fetch: Fetch, memory: Memory, target: Target,
                query: Query) -> tuple[Vector | None, str]:  # fmt: skip
    """The bin counts of the last ``window`` (None: not yet known) and where they came from."""
    model, version, profile, pods = target.model, target.version, target.profile, target.pods
    window = parse_duration(spec.window)
    prometheus = spec.source.prometheus
    if prometheus is None:
        texts = {p["metadata"]["name"]: fetch(metrics_address(p), "/metrics") for p in pods}
        readings = {n: parse_bins(t.decode(), profile, model, version) for n, t in texts.items() if t is not None}
        history = memory.histories[owner.uid]
        history.add(Scrape(time.time(), readings), window)
        return history.increase(window, int(profile.sizes.sum())), f"{len(readings)} pod(s)"
    labels = prometheus.labels if prometheus.labels is not None else {"namespace": owner.namespace}
    answer = query(prometheus.url, bins_query(model, version, window, labels))
    return parse_query_result(answer, profile), f"Prometheus at {prometheus.url}"


def _observe(body: Obj, api: Api, fetch: Fetch, memory: Memory, spec: DriftPolicySpec) -> Result | Target:
    """The target's serving version and its pods' readings, or the Result that says what is missing."""
    owner = Owner.of(body)
    target = api.get(path(API_VERSION, MODEL_DEPLOYMENT.plural, owner.namespace, spec.target_ref.name))
    if target is None:
        return _waiting(body, "TargetNotFound", f"ModelDeployment {spec.target_ref.name} does not exist")
    version = ((target.get("status") or {}).get("model") or {}).get("version")
    model = (target.get("spec") or {}).get("model", {}).get("name", "")
    if not version:
        return _waiting(body, "WaitingForModel", f"ModelDeployment {spec.target_ref.name} serves no version yet")
    found = scrape(api, fetch, owner, spec.target_ref.name, model, version, memory)
    if found is None:
        return _waiting(body, "WaitingForPods", f"no ready pod of {spec.target_ref.name} serves {version} yet")
    return Target(model, version, *found)


def reconcile(body: Obj, api: Api, fetch: Fetch, memory: Memory, query: Query) -> Result:
    owner = Owner.of(body)
    status = body.get("status") or {}
    try:
        spec = parse_spec(DriftPolicySpec, body.get("spec"))
    except InvalidSpec as error:
        return _waiting(body, "InvalidSpec", str(error))
    target = _observe(body, api, fetch, memory, spec)
    if isinstance(target, Result):
        return target
    version, profile, layout = target.version, target.profile, target.layout
    try:
        live, source = live_counts(spec, owner, fetch, memory, target, query)
    except SourceNotAllowed as error:
        return _waiting(body, "SourceNotAllowed", str(error))
    except (OSError, ValueError, KeyError) as error:
        return _waiting(body, "SourceUnavailable", f"could not read the bin counts: {error}")
    if live is None:
        return _waiting(body, "Baseline", f"took the first reading of {source}; the next check scores it")

    padded = Layout.pad(profile, live)
    result = check(layout, padded, spec.thresholds(), Decimal(spec.drift_share), spec.min_samples,
                   spec.count_prediction_drift, by_type=spec.tests is None)  # fmt: skip
    streak = status.get("consecutiveBreaches", 0) + 1 if result.breached else 0
    last_check = _last_check(profile, version, result, padded)
    previous = status.get("conditions") or []
    drift = _drift_condition(result, streak, spec)
    fields: Obj = {"lastCheck": last_check, "consecutiveBreaches": streak}
    for name in ("lastRetrainTime", "retrains", "trainingJobs", "pendingApproval", "retrainOutcomes"):
        if status.get(name):
            fields[name] = status[name]
    events = follow_retrains(api, owner, spec, fields)
    if drift.status == "True" and spec.retrain is not None:
        events += _retrain(body, api, spec, owner, last_check, fields)
    ready = Cond(READY, "True", "Watching", f"checked {version} from {source}")
    status = checked(DriftPolicyStatus, conditions.status(body, [ready, drift], **fields))
    return Result(status, events + transition_event(previous, drift))


def retrain_outcome(tj: Obj | None, target: Obj | None) -> tuple[str | None, str | None]:
    """A retrain's version and how it ended (None: not yet): from its TrainingJob's Succeeded condition, and
    for a promoted one from what the target ModelDeployment made of the version (a canary may roll it back)."""
    if tj is None:
        return None, "Deleted"
    tj_status = tj.get("status") or {}
    version = (tj_status.get("artifact") or {}).get("version")
    succeeded = conditions.find(tj_status.get("conditions") or [], "Succeeded") or {}
    if succeeded.get("status") == "False":
        return version, "Failed"
    if succeeded.get("status") != "True":
        return version, None
    if succeeded.get("reason") != "Promoted":
        return version, "Rejected" if succeeded.get("reason") == "GateRejected" else "Published"
    md = (target or {}).get("status") or {}
    rollout = md.get("rollout") or {}
    if version in (md.get("rejectedVersions") or []) or (rollout.get("candidate"), rollout.get("outcome")) == (
        version,
        "RolledBack",
    ):
        return version, "RolledBack"
    return version, "Serving" if (md.get("model") or {}).get("version") == version else None


def follow_retrains(api: Api, owner: Owner, spec: DriftPolicySpec, fields: Obj) -> list[Event]:
    """Bring the retrains not yet ended up to date in ``fields`` (their version and outcome, and the count of
    each outcome), with an Event for each that ended."""
    records = [dict(r) for r in fields.get("trainingJobs") or []]
    if all(r.get("outcome") for r in records):
        return []
    target = api.get(path(API_VERSION, MODEL_DEPLOYMENT.plural, owner.namespace, spec.target_ref.name))
    counts, events = dict(fields.get("retrainOutcomes") or {}), []
    for record in records:
        if record.get("outcome"):
            continue
        version, outcome = retrain_outcome(api.get(path(API_VERSION, TRAINING_JOB.plural, owner.namespace,
                                                        record["name"])), target)  # fmt: skip
        record.update({k: v for k, v in (("version", version), ("outcome", outcome)) if v})
        if outcome:
            counts[outcome] = counts.get(outcome, 0) + 1
            kind = "Normal" if outcome in ("Serving", "Published") else "Warning"
            events.append(Event(kind, f"Retrain{outcome}", f"Retrain {record['name']} ended: {outcome}"
                                + (f" (version {version})" if version else "")))  # fmt: skip
    fields["trainingJobs"], fields["retrainOutcomes"] = records, counts or None
    return events


def _number(value: float) -> str:
    return f"{value:.4g}"


def _other_share(feature: FeatureProfile, counts: npt.NDArray[np.float64]) -> str | None:
    """A categorical input's share of live values in its ``<other>`` bin (None: not one, or no values)."""
    total = float(counts.sum())
    return _number(float(counts[len(feature.categories)]) / total) if feature.grouped and total else None


def _last_check(profile: Profile, version: str, result: Check, live: npt.NDArray[np.float64]) -> Obj:
    features = [
        FeatureDrift(
            name=feature.name,
            scores={test.value: _number(v[j]) for test, v in result.scores.items() if math.isfinite(v[j])},
            thresholds={test.value: _number(v[j]) for test, v in result.thresholds.items() if math.isfinite(v[j])},
            drifted=bool(result.drifted[j]),
            unscored=[test.value for test in result.scores if not result.applies[test][j]],
            other_share=_other_share(feature, live[j]),
        )
        for j, feature in enumerate(profile.features[:256])
    ]
    check = DriftCheck(
        time=now(),
        version=version,
        samples=result.samples,
        drifted_features=result.drifted_count,
        breached=result.breached,
        features=features,
    )
    return check.to_wire()


def _drift_condition(result: Check, streak: int, spec: DriftPolicySpec) -> Cond:
    if result.samples < spec.min_samples:
        return Cond(
            DRIFT, "Unknown", "InsufficientSamples", f"{result.samples} of {spec.min_samples} samples in the window"
        )
    drifted = f"{result.drifted_count} of {result.counted} features drifted over {result.samples} samples"
    if streak >= spec.consecutive_breaches:
        return Cond(DRIFT, "True", "DriftDetected", f"{drifted}; {streak} breaches in a row")
    if result.breached:
        return Cond(DRIFT, "False", "Breaching", f"{drifted}; breach {streak} of {spec.consecutive_breaches} needed")
    return Cond(DRIFT, "False", "NoDrift", drifted)


def drift_check(last_check: Obj) -> str:
    """What a retrain's TrainingJob records of the check that made it (its lineage): when, on which version,
    over how many samples, and the scores of the features that drifted (the first DRIFT_CHECK_FEATURES)."""
    drifted = [f for f in last_check.get("features") or [] if f.get("drifted")][:DRIFT_CHECK_FEATURES]
    record = {k: last_check[k] for k in ("time", "version", "samples", "driftedFeatures")}
    return json.dumps({**record, "drifted": {f["name"]: f.get("scores") or {} for f in drifted}}, sort_keys=True)


def _retrain(body: Obj, api: Api, spec: DriftPolicySpec, owner: Owner, last_check: Obj, fields: Obj) -> list[Event]:
    """Create the next retrain TrainingJob if the guardrails allow it; record what happened in ``fields``."""
    assert spec.retrain is not None
    records = list(fields.get("trainingJobs") or [])
    count = fields.get("retrains", len(records)) + 1
    name = owner.child_name(f"retrain-{count}")
    if _seconds_since(fields.get("lastRetrainTime")) < parse_duration(spec.retrain.cooldown):
        return []
    tjs = path(API_VERSION, TRAINING_JOB.plural, owner.namespace)
    running = [
        tj for tj in api.list(tjs, f"{POLICY_LABEL}={owner.name}")
        if (conditions.find((tj.get("status") or {}).get("conditions") or [], "Succeeded") or {}).get("status")
        not in ("True", "False")
    ]  # fmt: skip
    if len(running) >= spec.retrain.max_concurrent:
        return []
    approved = (body["metadata"].get("annotations") or {}).get(APPROVE_ANNOTATION) == name
    if spec.retrain.approval == "Manual" and not approved:
        if fields.get("pendingApproval") == name:
            return []
        fields["pendingApproval"] = name
        return [
            Event("Normal", "ApprovalPending", f"Retrain {name} waits for the annotation {APPROVE_ANNOTATION}={name}")
        ]
    template = spec.retrain.template
    manifest = {
        "apiVersion": API_VERSION,
        "kind": TRAINING_JOB.kind,
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {**template.metadata.labels, POLICY_LABEL: owner.name},
            "annotations": {**template.metadata.annotations, f"{GROUP}/drift-check": drift_check(last_check)},
            "ownerReferences": [owner.reference()],
        },
        "spec": template.spec.to_wire(),
    }  # fmt: skip
    events = []
    try:
        api.create(tjs, manifest)
        events.append(
            Event("Normal", "Retraining", f"Created TrainingJob {name} after drift on {last_check['version']}")
        )
    except Conflict:
        pass  # created before a restart: the same name, so never twice
    fields["trainingJobs"] = [*records, {"name": name, "created": now(), "checkTime": last_check["time"]}][-KEEP_JOBS:]
    fields["retrains"] = count
    fields["lastRetrainTime"] = now()
    fields["pendingApproval"] = None
    return events
