"""The ModelDeployment reconciler.

The operator never reads the registry itself: the serving pods do (they hold the store's credentials and
volumes), and report on ``/v2/models/<name>`` which version they serve and where the alias points now, with
the generation of the alias record they read. When the alias has moved (``regrow.controller.decide``), the
reconciler pins the new version in the pod template, and the Deployment rolls (``maxUnavailable: 0``).
``status.model`` names a version once every ready pod serves it; ``status.terminatingReplicas`` counts the old
pods still finishing what they received, and a canary starts only once there are none.

A pod is asked when it changed (its resourceVersion), when its last answer is older than the alias's
``refreshInterval`` (the pod has read the registry again since), when it gave no answer or no model, and at
every look while a canary runs. A ModelDeployment at rest is looked at when something it owns changes, once
per ``refreshInterval`` while its ready pods follow an alias (only they can tell that it moved), and else once
per resync period: at rest each pod is asked once per refreshInterval, and the API server nothing. An alias
moved by a TrainingJob of the namespace is seen at once (the TrainingJob wakes its ModelDeployments, and its
status records the alias's generation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from regrow import API_VERSION
from regrow.api import MODEL_DEPLOYMENT, TRAINING_JOB, InvalidSpec, ModelDeploymentSpec, parse_spec
from regrow.api.common import StorageSpec, parse_duration
from regrow.api.modeldeployment import (
    AliasStatus,
    GateStatus,
    ModelDeploymentStatus,
    ModelSource,
    RetryRequest,
    RolloutStatus,
)
from regrow.contracts import AliasReading, ModelMetadata, ModelParameters, ServingEnv
from regrow.controller import canary, conditions, keys, outbound
from regrow.controller.children import ensure
from regrow.controller.conditions import Cond
from regrow.controller.decide import Desired, alias_ref, decide, promotions, standing
from regrow.controller.kube import Api, Applier, Conflict, Obj, path
from regrow.controller.outbound import Fetch
from regrow.controller.result import Event, Result, checked, transition_event
from regrow.drift.profile import FeatureProfile, Profile
from regrow.manifests.common import Owner, PodDefaults
from regrow.manifests.serving import (
    CANARY,
    COMPONENT,
    CONTAINER,
    PORT,
    SHADOW,
    SHADOW_PERCENT_ENV,
    VERSION_ANNOTATION,
    KeyNames,
    alias_job,
    autoscaler,
    deployment,
    disruption_budget,
    metrics_address,
    selector,
    service,
    shadow_service,
)

READY, RESOLVED, AVAILABLE, PROGRESSING = "Ready", "ModelResolved", "Available", "Progressing"
STUCK = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
        "RunContainerError",
    }
)

Prober = Callable[[str, str], ModelMetadata | None]
Answer = tuple[ModelMetadata | None, float]  # what a pod said, and when it was asked (time.monotonic)
NOT_RESTORED = "the alias still points at"
POLL_SECONDS = 5.0  # how often a ModelDeployment is looked at while what it waits for is seen by no watch
REFRESH_DEFAULT = ModelSource.model_fields["refresh_interval"].default


@dataclass(frozen=True)
class ApiVersions:
    """The newest autoscaling and policy versions that the API server offers."""

    hpa: str = "autoscaling/v2"
    pdb: str = "policy/v1"


def discover(api: Api) -> ApiVersions:
    def pick(group: str, preferred: tuple[str, ...]) -> str:
        served = {v["groupVersion"] for v in (api.get(f"/apis/{group}") or {}).get("versions", [])}
        return next((v for v in preferred if v in served), preferred[-1])

    return ApiVersions(
        hpa=pick("autoscaling", ("autoscaling/v2", "autoscaling/v2beta2")),
        pdb=pick("policy", ("policy/v1", "policy/v1beta1")),
    )


def http_prober(ip: str, model: str) -> ModelMetadata | None:
    """What a serving pod says about its model (its answer even on 503), or None if it does not answer with
    model metadata."""
    try:
        return ModelMetadata.model_validate_json(
            outbound.get(f"http://{ip}:{PORT}/v2/models/{model}", 2.0, 1 << 20).body
        )
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


@dataclass(frozen=True)
class PodReport:
    name: str
    ready: bool
    serving: str | None
    uri: str | None
    reading: AliasReading | None  # where the pod last read the spec's alias to point
    error: str | None
    stuck: tuple[str, str] | None  # (reason, message) of a container that cannot start
    waiting: bool = False  # the error says the registry has not published the model yet, or no version is pinned
    read_at: float | None = None  # when it read the alias (time.monotonic; at the latest, if it does not say)
    follows: bool = True  # it was made for the spec's registry, model and alias
    keys: list[str] | None = None  # the fingerprints of the keys it holds, the one it signs with first


def serving_pods(api: Api, namespace: str, name: str, component: str = COMPONENT, draining: bool = False) -> list[Obj]:
    """The stable (or the canary's) pods of the ModelDeployment ``name`` that are not being deleted (or, with
    ``draining``, those that are: they may still answer the requests they hold)."""
    labels = selector(Owner(MODEL_DEPLOYMENT.kind, name, namespace, ""), component)
    pods = api.list(path("v1", "pods", namespace), ",".join(f"{k}={v}" for k, v in labels.items()))
    return [p for p in pods if bool(p["metadata"].get("deletionTimestamp")) == draining]


def pod_ready(pod: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def shutting_down(pods: list[Obj], now: datetime) -> int:
    """How many of ``pods`` (being deleted) are within their grace period: they may still answer what they
    received. One past it is stuck (a lost node, a finalizer), not draining."""
    return sum(datetime.fromisoformat(p["metadata"]["deletionTimestamp"]) > now for p in pods)


def follows(pod: Obj, model: ModelSource) -> bool:
    """Whether ``pod`` (or a pod template) reads the alias ``model`` names (a pod made for another registry,
    model or alias, which a roll is replacing, reports another alias's reading and serves another model)."""
    env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] if c["name"] == CONTAINER
           for e in c.get("env") or []}  # fmt: skip
    wanted = {"registry": model.registry, "model_name": model.name, "model_alias": model.alias}
    return all(env.get(ServingEnv.variable(field)) == value for field, value in wanted.items())


def report(pod: Obj, model: ModelSource, ask: Callable[[Obj], Answer]) -> PodReport:
    """What ``pod`` says of itself and of the alias: its reading is as old as it says, or else as old as the
    alias's refreshInterval allows (a pod reads it that often)."""
    status = pod.get("status") or {}
    ready = pod_ready(pod)
    stuck = None
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK:
            stuck = (str(waiting["reason"]), str(waiting.get("message") or f"container {container['name']}"))
    answer, asked = ask(pod) if status.get("podIP") and status.get("phase") == "Running" else (None, 0.0)
    params = answer.parameters if answer is not None else ModelParameters()
    ours = follows(pod, model)
    reading = answer.reading if answer is not None and ours else None
    age = params.alias_age_seconds if params.alias_age_seconds is not None else parse_duration(model.refresh_interval)
    return PodReport(
        name=pod["metadata"]["name"],
        ready=ready,
        serving=answer.versions[0] if answer is not None and answer.versions else None,
        uri=params.uri,
        reading=reading,
        error=params.error,
        stuck=stuck,
        waiting=params.reason in ("ModelNotPublished", "AwaitingVersion"),
        read_at=asked - age if reading is not None else None,
        follows=ours,
        keys=params.keys,
    )


def pinned_version(deployment: Obj | None) -> str | None:
    """The model version a Deployment's pod template pins (None: none, or no Deployment)."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(VERSION_ANNOTATION)


def serving_version(pinned: str | None, reports: list[PodReport]) -> str | None:
    """The version the stable pods serve: the pinned one, else the one every ready pod reports, if they agree."""
    served = {r.serving for r in reports if r.ready and r.serving and r.follows}
    return pinned or (next(iter(served)) if len(served) == 1 else None)


def rolled_out(live: Obj) -> bool:
    spec, status = live.get("spec") or {}, live.get("status") or {}
    want = spec.get("replicas", 1)
    return bool(
        status.get("observedGeneration", 0) >= live["metadata"].get("generation", 1)
        and status.get("updatedReplicas", 0) == want
        and status.get("replicas", 0) == want
        and status.get("availableReplicas", 0) == want
    )


def _resolved(reports: list[PodReport]) -> Cond:
    versions = sorted({r.serving for r in reports if r.ready and r.serving})
    if versions:
        return Cond(RESOLVED, "True", "Resolved", f"serving version {', '.join(versions)}")
    failing = next((r for r in reports if r.error and not r.ready), None)
    if failing is not None and failing.waiting:
        return Cond(RESOLVED, "Unknown", "WaitingForModel", str(failing.error))
    if failing is not None:
        return Cond(RESOLVED, "False", "ModelUnavailable", str(failing.error))
    return Cond(RESOLVED, "Unknown", "Waiting", "no serving pod has reported yet")


def _problem(live: Obj, reports: list[PodReport]) -> tuple[str, str] | None:
    """Why the pods cannot serve, if they cannot: a container that cannot start, or a deadline passed."""
    stuck = next((r.stuck for r in reports if r.stuck), None)
    if stuck:
        return stuck
    for c in (live.get("status") or {}).get("conditions") or []:
        if c["type"] == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", str(c.get("message") or "the Deployment passed its progress deadline")
    return None


def assess(live: Obj, reports: list[PodReport], version: str | None, draining: int = 0) -> list[Cond]:
    """Ready, ModelResolved, Available and Progressing, from the Deployment and what its pods report (and how
    many old ones are still shutting down)."""
    status = live.get("status") or {}
    resolved = _resolved(reports)
    problem = _problem(live, reports)
    ready_count = status.get("readyReplicas", 0)
    if ready_count:
        available = Cond(AVAILABLE, "True", "MinimumReplicasAvailable", f"{ready_count} replica(s) ready")
    else:
        available = Cond(AVAILABLE, "False", *(problem or ("NoReadyReplicas", "no replica is ready yet")))
    if rolled_out(live):
        leaving = f"; {draining} old pod(s) shutting down" if draining else ""
        progressing = Cond(PROGRESSING, "False", "RolloutComplete",
                           f"every replica serves {version or 'the alias'}{leaving}")  # fmt: skip
    elif problem:
        progressing = Cond(PROGRESSING, "False", *problem)
    else:
        updated, want = status.get("updatedReplicas", 0), live["spec"].get("replicas", 1)
        progressing = Cond(PROGRESSING, "True", "RollingOut", f"{updated} of {want} replicas updated")
    if available.status == "True" and resolved.status == "True":
        ready = Cond(READY, "True", "Serving", f"{ready_count} replica(s) {resolved.message}")
    elif problem:
        ready = Cond(READY, "False", *problem)
    elif resolved.status == "False" or resolved.reason == "WaitingForModel":
        ready = Cond(READY, resolved.status, resolved.reason, resolved.message)
    else:
        ready = Cond(READY, "Unknown", "Starting", "waiting for the first replica to serve the model")
    return [ready, resolved, available, progressing]


@dataclass
class Probes:
    """What each ModelDeployment's pods said when last asked, by (its uid, the track) and pod uid: the pod's
    resourceVersion then, when, and the answer (only an answer that names the model it serves is kept)."""

    prober: Prober
    held: dict[tuple[str, str], dict[str, tuple[str, float, ModelMetadata]]] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    known: dict[str, tuple[AliasReading | None, float]] = field(default_factory=dict)  # by ModelDeployment uid

    def since(self, uid: str, reading: AliasReading | None) -> float:
        """When this operator first knew ``reading`` as the newest of a ModelDeployment's alias."""
        held = self.known.get(uid)
        if held is None or held[0] != reading:
            held = self.known[uid] = (reading, self.clock())
        return held[1]

    def reports(self, owner: Owner, track: str, pods: list[Obj], model: ModelSource,
                max_age: float) -> list[PodReport]:  # fmt: skip
        """The pods' reports, each pod asked again only when its last kept answer is older than ``max_age``
        or the pod has changed since."""
        before, kept = self.held.get((owner.uid, track), {}), {}

        def ask(pod: Obj) -> Answer:
            uid, version = pod["metadata"]["uid"], pod["metadata"].get("resourceVersion", "")
            last = before.get(uid)
            if last is not None and last[0] == version and self.clock() - last[1] < max_age:
                kept[uid] = last
                return last[2], last[1]
            asked = self.clock()
            answer = self.prober(pod["status"]["podIP"], model.name)
            if answer is not None and answer.serving is not None:
                kept[uid] = (version, asked, answer)
            return answer, asked

        reports = [report(pod, model, ask) for pod in pods]
        self.held[(owner.uid, track)] = kept
        return reports

    def forget(self, uid: str) -> None:
        for key in [k for k in self.held if k[0] == uid]:
            del self.held[key]
        self.known.pop(uid, None)


def canary_running(body: Obj) -> bool:
    """Whether the status records a canary that has not ended."""
    rollout = (body.get("status") or {}).get("rollout") or {}
    return bool(rollout) and not rollout.get("outcome")


def answer_lifetime(body: Obj, spec: ModelDeploymentSpec) -> float:
    """How long a pod's answer stands while the pod does not change: not past this look while a canary runs
    (its steps are judged on the pods' counters); one alias refresh while the pods follow an alias (they may
    have moved with it since); for ever when they serve a pinned version, which only a new pod changes."""
    if canary_running(body):
        return 0.0
    return math.inf if spec.model.version else float(parse_duration(spec.model.refresh_interval))


def next_check_in(body: Obj, resync: float) -> float:
    """Seconds to the next look if nothing it owns changes before: POLL_SECONDS while a canary runs (its steps
    are judged on the pods' counters, which no watch sees), while ready pods have not said what they serve, or
    while its pods wait for a model (for the registry to publish it, or under a Canary for a pinned version:
    what they read of the alias changes no pod, so no watch sees it);
    the alias's refreshInterval (POLL_SECONDS at least) while ready pods follow an alias (they read the registry
    that often, and only asking them tells whether it moved); else the resync period."""
    status = body.get("status") or {}
    resolved = conditions.find(status.get("conditions") or [], RESOLVED) or {}
    unresolved = status.get("readyReplicas") and resolved.get("status") != "True"
    if canary_running(body) or unresolved or resolved.get("reason") == "WaitingForModel":
        return POLL_SECONDS
    model = (body.get("spec") or {}).get("model") or {}
    if status.get("readyReplicas") and model.get("alias") and not model.get("version"):
        with contextlib.suppress(ValueError, TypeError):
            return min(resync, max(POLL_SECONDS, parse_duration(model.get("refreshInterval") or REFRESH_DEFAULT)))
    return resync


@dataclass(frozen=True)
class Serving:
    """What a reconcile needs besides the object: the API, the pods' defaults and probes, and its memory."""

    api: Applier
    defaults: PodDefaults
    versions: ApiVersions
    probes: Probes
    fetch: Fetch
    memory: canary.Memory

    def reports(self, body: Obj, spec: ModelDeploymentSpec, track: str, pods: list[Obj]) -> list[PodReport]:
        """What ``track``'s pods say: each asked when it changes, and besides as ``answer_lifetime`` says."""
        return self.probes.reports(Owner.of(body), track, pods, spec.model, answer_lifetime(body, spec))

    def forget(self, uid: str) -> None:
        """Drop what is kept about a deleted ModelDeployment."""
        self.memory.forget(uid)
        self.probes.forget(uid)


def reconcile(body: Obj, serving: Serving) -> Result:
    api, defaults = serving.api, serving.defaults
    owner = Owner.of(body)
    previous_status = body.get("status") or {}
    previous = previous_status.get("conditions") or []
    try:
        spec = parse_spec(ModelDeploymentSpec, body.get("spec"))
        (spec.storage or StorageSpec()).check_file_uris(spec.model.registry)
        defaults.check_image(spec.image)
        defaults.check_pod(spec.pod, owner.namespace)
    except (InvalidSpec, ValueError) as error:
        cond = Cond(READY, "False", "InvalidSpec", str(error))
        return Result(checked(ModelDeploymentStatus, conditions.status(body, [cond])), transition_event(previous, cond))

    reports = serving.reports(body, spec, COMPONENT, serving_pods(api, owner.namespace, owner.name))
    draining = shutting_down(serving_pods(api, owner.namespace, owner.name, draining=True), datetime.now(UTC))
    name = owner.child_name(COMPONENT)
    live = api.get(path("apps/v1", "deployments", owner.namespace, name))
    pinned = pinned_version(live) if live is not None and follows(live["spec"]["template"], spec.model) else None
    desired = _decide(api, serving.probes, owner, spec, (pinned, previous_status), reports)
    key = keys.look(api, owner, spec, body, live, [r.keys for r in reports if r.ready and r.keys],
                    [r.stuck for r in reports if r.stuck])  # fmt: skip
    if key.problem is not None and key.refused:  # no pod reads a Secret regrow did not make
        cond = Cond(READY, "False", *key.problem)
        return Result(checked(ModelDeploymentStatus, conditions.status(body, [cond])), transition_event(previous, cond))
    moves = _rollout(body, spec, serving, (live, pinned, draining), desired, reports, key.names)
    version = moves.stable
    events = list(key.events)
    if version != pinned and live is not None:
        events.append(Event("Normal", "RollingOut", f"Rolling out {spec.model.name} version {version}"))

    applied = ensure(api, deployment(owner, spec, defaults, version, key=key.names), unmanaged=("replicas",))
    ensure(api, service(owner))
    if spec.rollout.mirrors:
        ensure(api, shadow_service(owner))
    ensure(api, autoscaler(owner, spec, serving.versions.hpa))
    ensure(api, disruption_budget(owner, serving.versions.pdb))
    if applied.action == "created":
        events.append(Event("Normal", "Created", f"Created Deployment {name}"))

    conds = assess(applied.obj, reports, version or desired.target, draining)
    progressing = canary.progressing(spec.rollout, moves.rollout, version)
    if progressing is not None:
        conds[3] = progressing
    if key.problem is not None:  # ids one replica issues fail on another
        conds[0] = Cond(READY, "False", *key.problem)
    live_status = applied.obj.get("status") or {}
    status = conditions.status(
        body,
        conds,
        replicas=live_status.get("replicas", 0),
        readyReplicas=live_status.get("readyReplicas", 0),
        updatedReplicas=live_status.get("updatedReplicas", 0),
        terminatingReplicas=draining or None,
        url=f"http://{name}.{owner.namespace}.svc.cluster.local/v2/models/{spec.model.name}",
        rollout=moves.rollout.to_wire() if moves.rollout else None,
        rejectedVersions=moves.rejected or None,
        lastRetry=moves.retried.to_wire() if moves.retried else previous_status.get("lastRetry"),
        alias=_alias_status(spec, desired, previous_status),
        feedbackKey=key.record.to_wire() if key.record else None,
        **canary.tally(moves, previous_status),
    )
    if version or desired.target:
        status["desiredVersion"] = version or desired.target
    serving_now = {(r.serving, r.uri) for r in reports if r.ready and r.serving and r.uri}
    if rolled_out(applied.obj) and len(serving_now) == 1:
        served, uri = next(iter(serving_now))
        status["model"] = {"uri": uri, "version": served}
    elif previous_status.get("model"):
        status["model"] = previous_status["model"]
    return Result(checked(ModelDeploymentStatus, status), events + moves.events + transition_event(previous, conds[0]))


def _recorded(spec: ModelDeploymentSpec, previous_status: Obj) -> AliasReading | None:
    """The newest reading of the spec's alias that the status keeps (None: none, or one of another alias)."""
    raw = previous_status.get("alias")
    try:
        recorded = AliasStatus.model_validate(raw) if raw else None
    except ValueError:  # not one: a status this operator did not write
        return None
    if recorded is None or recorded.ref != alias_ref(spec.model):
        return None
    return AliasReading(version=recorded.version, generation=recorded.generation)


def _decide(api: Api, probes: Probes, owner: Owner, spec: ModelDeploymentSpec, stable: tuple[str | None, Obj],
            reports: list[PodReport]) -> Desired:  # fmt: skip
    """What is known of the alias (the reading the status keeps, the pods', the promotions of the namespace's
    TrainingJobs, read from the cache) and the decision made of it. ``stable``: the version the stable
    Deployment pins (None: none, or it was made for another alias) and the status as it was."""
    pinned, previous_status = stable
    served = {r.serving for r in reports if r.ready and r.serving and r.follows}
    if alias_ref(spec.model) is None:
        return decide(spec.model, pinned, None, [], served)
    recorded = _recorded(spec, previous_status)
    trainingjobs = api.list(path(API_VERSION, TRAINING_JOB.plural, owner.namespace))
    readings = [*(r.reading for r in reports), *promotions(trainingjobs, spec.model)]
    since = probes.since(owner.uid, standing(recorded, readings))
    return decide(spec.model, pinned, recorded, readings, served, agreement(reports, since))


def agreement(reports: list[PodReport], since: float) -> AliasReading | None:
    """The reading every ready pod holds, if each read the registry after ``since`` and they agree on a version
    (its highest generation among them)."""
    ready = [r for r in reports if r.ready and r.follows]
    readings = [r.reading for r in ready if r.reading is not None and r.read_at is not None and r.read_at > since]
    if not ready or len(readings) < len(ready) or len({r.version for r in readings}) != 1:
        return None
    return max(readings, key=lambda r: r.generation)


def _alias_status(spec: ModelDeploymentSpec, desired: Desired, previous_status: Obj) -> Obj | None:
    ref = alias_ref(spec.model)
    known = desired.alias or _recorded(spec, previous_status)
    if ref is None or known is None:
        return None
    return AliasStatus(ref=ref, version=known.version, generation=known.generation).to_wire()


def _rollout(body: Obj, spec: ModelDeploymentSpec, serving: Serving, stable: tuple[Obj | None, str | None, int],
             desired: Desired, reports: list[PodReport], key: KeyNames) -> canary.Plan:  # fmt: skip
    """The canary's next move (a RollingUpdate's is to pin what ``desired`` says): the stable version to pin,
    the candidate's Deployment scaled to the step, a rolled-back version's alias moved back by a Job.
    ``stable``: the stable Deployment, the version it pins, and its pods shutting down."""
    owner, api, (live, pinned, draining) = Owner.of(body), serving.api, stable
    recorded = body.get("status") or {}
    last = RolloutStatus.model_validate(recorded["rollout"]) if recorded.get("rollout") else None
    rejected = list(recorded.get("rejectedVersions") or [])
    canary_live = shadow_live = None  # a ModelDeployment that never ran a canary has no candidate Deployment
    if spec.rollout.strategy == "Canary" or last is not None:
        canary_live = api.get(path("apps/v1", "deployments", owner.namespace, owner.child_name(CANARY)))
    if spec.rollout.mirrors or (last is not None and last.mirror is not None):
        shadow_live = api.get(path("apps/v1", "deployments", owner.namespace, owner.child_name(SHADOW)))
    if spec.rollout.strategy == "Canary":
        running = last if last is not None and last.outcome is None else None
        seen = _seen(body, spec, serving, (live, canary_live, shadow_live), (pinned, desired.target, running), reports,
                     draining)  # fmt: skip
        retried = canary.retry(body["metadata"].get("annotations") or {}, recorded.get("lastRetry"))
        taken = retried is not None and retried.version in rejected  # only a rolled-back version is tried again
        if retried is not None and taken:  # a person asks: no longer rejected, and the alias goes there if it can
            rejected = [v for v in rejected if v != retried.version]
        moves = canary.plan(spec.rollout, spec.replicas.max, last, rejected, seen)
        if retried is not None:
            moves = _retry(owner, spec, serving, moves, retried) if taken else _refuse_retry(moves, retried)
    else:
        ended = last is not None and last.outcome is None
        moves = canary.Plan(desired.pin, None, last and canary.abandon(last, "rollout.strategy is RollingUpdate"),
                            rejected, ended=ended)  # fmt: skip
    if moves.canary is not None:
        ensure(api, deployment(owner, spec, serving.defaults, moves.canary[0], canary_replicas=moves.canary[1],
                               key=key))  # fmt: skip
    else:
        _scale_away(owner, spec, serving, canary_live, key)
    if moves.shadow is not None:
        version, replicas, percent = moves.shadow
        ensure(api, deployment(owner, spec, serving.defaults, version, replicas, shadow_percent=percent, key=key))
    else:
        _scale_away(owner, spec, serving, shadow_live, key)
    if moves.rollout is None or moves.rollout.outcome is not None:
        serving.memory.forget(owner.uid)
    if moves.restore is not None and spec.model.alias and moves.rollout is not None:
        job = alias_job(owner, spec, serving.defaults, moves.restore, moves.rollout.started)
        with contextlib.suppress(Conflict):  # made once: its name is the move's and the canary's
            api.create(path("batch/v1", "jobs", owner.namespace), job)
    return _restored(owner, spec, serving, moves, desired.target)


def _scale_away(owner: Owner, spec: ModelDeploymentSpec, serving: Serving, live: Obj | None,
                key: KeyNames) -> None:  # fmt: skip
    """A candidate's Deployment (canary or shadow) that has pods: scaled to none, kept for the next one."""
    if live is None or not live["spec"].get("replicas"):
        return
    containers = live["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for c in containers for e in c.get("env") or []}
    percent = env.get(SHADOW_PERCENT_ENV) if live["metadata"].get("name") == owner.child_name(SHADOW) else None
    ensure(serving.api, deployment(owner, spec, serving.defaults, pinned_version(live), canary_replicas=0,
                                   shadow_percent=int(percent) if percent else None, key=key))  # fmt: skip


def _restored(owner: Owner, spec: ModelDeploymentSpec, serving: Serving, moves: canary.Plan,
              target: str | None) -> canary.Plan:  # fmt: skip
    """Say so, once, when the Job that was to move the alias back from a rolled-back candidate has failed
    while the alias still points at it (the stable pods serve on; the alias needs a person)."""
    rollout = moves.rollout
    if not (spec.model.alias and rollout and rollout.outcome == "RolledBack" and target == rollout.candidate):
        return moves
    if NOT_RESTORED in rollout.message:
        return moves
    back = (rollout.candidate, rollout.stable)
    name = alias_job(owner, spec, serving.defaults, back, rollout.started)["metadata"]["name"]
    job = serving.api.get(path("batch/v1", "jobs", owner.namespace, name)) or {}
    failed = conditions.find((job.get("status") or {}).get("conditions") or [], "Failed") or {}
    if failed.get("status") != "True":
        return moves
    note = f"{NOT_RESTORED} {rollout.candidate}: Job {name} failed ({failed.get('reason', 'Failed')})"
    update = {"message": f"{rollout.message}; {note}"}
    event = Event("Warning", "AliasNotRestored", f"{note}; the stable pods serve {rollout.stable}")
    return dataclasses.replace(moves, rollout=rollout.model_copy(update=update), events=[*moves.events, event])


def _retry(owner: Owner, spec: ModelDeploymentSpec, serving: Serving, moves: canary.Plan,
           retried: RetryRequest) -> canary.Plan:  # fmt: skip
    """Take a person's `regrow promote --version`: the alias moves from the stable version to the one to try
    again (by a Job, if the alias still points at the stable version), and its canary starts from there."""
    message = f"{retried.actor} asked to try version {retried.version} again" + (
        f": {retried.reason}" if retried.reason else ""
    )  # fmt: skip
    if spec.model.alias and moves.stable and moves.stable != retried.version:
        job = alias_job(owner, spec, serving.defaults, (moves.stable, retried.version), retried.time)
        with contextlib.suppress(Conflict):
            serving.api.create(path("batch/v1", "jobs", owner.namespace), job)
    event = Event("Normal", "Retrying", message)
    return dataclasses.replace(moves, events=[*moves.events, event], retried=retried)


def _refuse_retry(moves: canary.Plan, retried: RetryRequest) -> canary.Plan:
    """A request to try a version that no canary rolled back (the retry annotation is the CLI's, but anyone
    who may patch the ModelDeployment can write it): nothing moves, and an Event says why."""
    message = (
        f"{retried.actor} asked to try version {retried.version} again, but it is not in status.rejectedVersions: "
        "only a version a canary rolled back is tried again; nothing moved"
    )
    refused = Event("Warning", "RetryRefused", message)
    return dataclasses.replace(moves, events=[*moves.events, refused], retried=retried)


def _seen(body: Obj, spec: ModelDeploymentSpec, serving: Serving,
          lives: tuple[Obj | None, Obj | None, Obj | None],
          versions: tuple[str | None, str | None, RolloutStatus | None], reports: list[PodReport],
          draining: int) -> canary.Seen:  # fmt: skip
    """What the canary's plan is made from: the Deployments and pods of both tracks (the candidate's being the
    canary's, or the shadow's at a shadow step), a person's decision, and the running step's counts so far.
    ``versions``: the pinned one, the target, and the running canary; ``draining``: the stable pods shutting down."""
    owner, (live, canary_live, shadow_live), (pinned, target, running) = Owner.of(body), lives, versions
    stable = serving_version(pinned, reports)
    measuring = running is not None and running.step <= len(spec.rollout.steps)
    shadowing = measuring and running is not None and running.mirror is not None
    component, candidate_live = (SHADOW, shadow_live) if shadowing else (CANARY, canary_live)
    candidate_pods = serving_pods(serving.api, owner.namespace, owner.name, component)
    candidate_reports = serving.reports(body, spec, component, candidate_pods)
    # A step is measured from when the candidate's pods for it are all up (its weight reached), not while
    # they start: until then the candidate answers less than its weight, and its first requests come cold.
    ramped = candidate_live is not None and _current(candidate_live, running) and rolled_out(candidate_live)
    requests, gates, mirrored = (
        _measure(owner, spec, serving, running, candidate_pods, shadowing)
        if measuring and running and ramped
        else (0, [], 0)
    )
    return canary.Seen(
        stable=stable,
        target=target,
        stable_replicas=int(((live or {}).get("spec") or {}).get("replicas") or spec.replicas.min),
        canary_problem=_problem(candidate_live, candidate_reports)
        if candidate_live and _current(candidate_live, running)
        else None,
        promoted=live is not None and running is not None and pinned == running.candidate and rolled_out(live),
        decision=canary.decision(body["metadata"].get("annotations") or {}, running),
        measured=(requests, gates),
        now=datetime.now(UTC),
        mirrored=mirrored,
        draining=draining,
    )


def _current(candidate_live: Obj, running: RolloutStatus | None) -> bool:
    """Whether the candidate's Deployment is the running candidate's, as its controller has seen it (a
    condition left from an earlier candidate says nothing of this one)."""
    if running is None:
        return False
    seen = (candidate_live.get("status") or {}).get("observedGeneration", 0) >= candidate_live["metadata"].get(
        "generation", 1
    )
    return bool(pinned_version(candidate_live) == running.candidate and seen)


def _measure(owner: Owner, spec: ModelDeploymentSpec, serving: Serving, running: RolloutStatus,
             candidate_pods: list[Obj], shadowing: bool) -> tuple[int, list[GateStatus], int]:  # fmt: skip
    """The candidate's requests at the running step, its gates, and at a shadow step the requests the stable
    pods sampled for it, from the counters of both tracks' pods, each version's read from every pod (its
    requests come from its own pods, its labels from any, what was mirrored to it from the stable pods)."""
    model = spec.model.name
    counts = serving.memory.steps.get(owner.uid)
    if counts is None or (counts.candidate, counts.step) != (running.candidate, running.step):
        counts = serving.memory.steps[owner.uid] = canary.StepCounts(running.candidate, running.step)
    stable_pods = serving_pods(serving.api, owner.namespace, owner.name)
    ready = {track: [p for p in pods if pod_ready(p) and p["status"].get("podIP")]
             for track, pods in (("candidate", candidate_pods), ("stable", stable_pods))}  # fmt: skip
    texts = {
        p["metadata"]["name"]: serving.fetch(metrics_address(p), "/metrics")
        for p in [*ready["candidate"], *ready["stable"]]
    }
    totals, bins = {}, {}
    since = int(datetime.fromisoformat(running.step_started).timestamp())  # labels count for ids issued since
    for track, version in (("candidate", running.candidate), ("stable", running.stable)):
        bins[track] = _prediction(owner, model, version, ready[track], serving)
        shadow = running.candidate if shadowing and track == "stable" else None
        vectors = {n: canary.read_version(t.decode(), model, version, bins[track], shadow)
                   for n, t in texts.items() if t}  # fmt: skip
        total = counts.tracks.setdefault(track, canary.Track()).add(vectors)
        totals[track] = np.zeros(canary.size(bins[track]), dtype=np.int64) if total is None else total.copy()
    if spec.rollout.analysis.max_quality_drop is not None and not shadowing:
        stable_bins = bins["stable"]
        classifier = stable_bins is not None and bool(stable_bins.categories)  # as the gate tells them apart
        for track, version in (("candidate", running.candidate), ("stable", running.stable)):
            answers = [serving.fetch(metrics_address(p), f"/v2/models/{model}/quality?since={since}")
                       for p in ready[track]]  # fmt: skip
            totals[track][[canary.LABELLED, canary.GRADED]] = canary.graded(answers, version, classifier)
    mine, theirs = totals["candidate"], totals["stable"]
    analysis = spec.rollout.analysis
    known = [serving.memory.predictions.get((owner.uid, v), False) for v in (running.candidate, running.stable)]
    if None in known:  # read, and a version's profile has no prediction bins: nothing to compare
        analysis = analysis.model_copy(update={"max_prediction_divergence": None})
    predictions = canary.Predictions(bins["candidate"], bins["stable"])
    measured = canary.gates(analysis, mine, theirs, predictions, shadow=shadowing)
    return canary.requests(mine, theirs, shadowing), measured, int(theirs[canary.MIRRORED]) if shadowing else 0


def _prediction(owner: Owner, model: str, version: str, pods: list[Obj], serving: Serving) -> FeatureProfile | None:
    """A version's prediction bins, from the reference profile its pods serve (kept once read)."""
    key = (owner.uid, version)
    if key not in serving.memory.predictions:
        for pod in pods:
            raw = serving.fetch(metrics_address(pod), f"/v2/models/{model}/profile")
            if raw:
                try:
                    serving.memory.predictions[key] = Profile.from_json(raw).prediction
                except (ValueError, KeyError, TypeError):
                    continue
                break
    return serving.memory.predictions.get(key)
