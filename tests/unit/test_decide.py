"""The version a ModelDeployment pins and a canary's target: one decision per move of the alias, ordered by the
alias record's generation, however the pods' readings arrive."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.api import ModelDeploymentSpec, parse_spec
from regrow.api.modeldeployment import ModelSource, RolloutStatus
from regrow.contracts import AliasReading, newest
from regrow.controller import canary
from regrow.controller.decide import Desired, alias_ref, decide, promotions, standing
from regrow.controller.kube import Obj
from regrow.controller.modeldeployment import PodReport, Probes, agreement
from tests.unit.test_api import _example, _with

MODEL = ModelSource(registry="file:///var/lib/regrow/registry", name="iris", alias="champion")
PINNED_BY_SPEC = ModelSource(registry="file:///var/lib/regrow/registry", name="iris", version="v7")
VERSIONS = ("v1", "v2", "v3")
NOW = datetime(2026, 12, 1, tzinfo=UTC)  # the canary's clock stands still: its step waits for requests


def read(version: str, generation: int) -> AliasReading:
    return AliasReading(version=version, generation=generation)


def test_the_reading_of_the_highest_generation_is_the_newest() -> None:
    assert newest([]) is None and newest([None, None]) is None
    assert newest([read("v1", 1), read("v2", 2), None, read("v1", 1)]) == read("v2", 2)
    assert newest([read("v2", 2), read("v1", 3)]) == read("v1", 3)  # moved back: a newer generation
    assert newest([read("v1", 0), read("v1", 0)]) == read("v1", 0)  # records that keep no generation, agreeing
    assert newest([read("v1", 0), read("v2", 0)]) is None  # at one generation two versions: not known
    assert newest([read("v1", 0), read("v2", 0), read("v3", 1)]) == read("v3", 1)


def test_the_decision_pins_the_newest_reading_and_rolls_nothing_for_nothing() -> None:
    # Following pods that serve where the alias points: nothing to pin, so nothing rolls.
    assert decide(MODEL, None, None, [read("v1", 1)], {"v1"}) == Desired(None, "v1", read("v1", 1))
    assert decide(MODEL, None, None, [read("v1", 1)], set()) == Desired(None, "v1", read("v1", 1))  # none ready yet
    # The alias moved: its version pinned, whoever saw the move first.
    assert decide(MODEL, None, read("v1", 1), [read("v1", 1), read("v2", 2)], {"v1"}).pin == "v2"
    assert decide(MODEL, "v1", read("v1", 1), [read("v2", 2)], {"v1"}).pin == "v2"
    # Pods that have not read the registry since do not take it back: the decision of the flapping promotion.
    assert decide(MODEL, "v2", read("v2", 2), [read("v1", 1), read("v1", 1)], {"v1"}).pin == "v2"
    # A move back is a move: a newer generation.
    assert decide(MODEL, "v2", read("v2", 2), [read("v1", 3)], {"v2"}) == Desired("v1", "v1", read("v1", 3))
    # Nothing known: as it is.
    assert decide(MODEL, "v2", None, [None], {"v2"}) == Desired("v2", None, None)
    assert decide(MODEL, None, None, [], set()) == Desired(None, None, None)
    # Two versions at the newest generation (writers that keep none): the recorded reading stands.
    assert decide(MODEL, "v1", read("v1", 1), [read("v2", 2), read("v3", 2)], {"v1"}) == Desired(
        "v1", "v1", read("v1", 1)
    )
    # A spec's version is pinned as it is.
    assert decide(PINNED_BY_SPEC, "v1", None, [read("v2", 9)], {"v1"}) == Desired("v7", "v7", None)


def test_pods_that_all_read_the_registry_since_have_the_last_word() -> None:
    """A writer that keeps no generation (an older regrow, an edit by hand) leaves generation 0: the ready pods,
    once each has read the registry since the newest reading was known and they agree, say where it points. They
    win at the highest generation known, so that an old promotion does not outvote them later."""
    moved_by_hand = decide(MODEL, "v2", read("v2", 5), [read("v3", 0), read("v3", 0), read("v2", 5)], {"v2"},
                           agreed=read("v3", 0))  # fmt: skip
    assert moved_by_hand == Desired("v3", "v3", read("v3", 5))
    legacy = decide(MODEL, "v1", read("v1", 0), [read("v2", 0)], {"v1"}, agreed=read("v2", 0))
    assert legacy == Desired("v2", "v2", read("v2", 0))  # before any regrow writer kept a generation
    assert decide(MODEL, "v2", read("v2", 5), [read("v3", 0)], {"v2"}, agreed=None).pin == "v2"  # not all read since
    assert decide(MODEL, "v2", read("v2", 5), [], {"v2"}, agreed=read("v2", 5)).pin == "v2"  # they agree with it


def _ready(reading: AliasReading | None, read_at: float | None, ready: bool = True, follows: bool = True) -> PodReport:
    return PodReport("p", ready, "v1", "u", reading, None, None, read_at=read_at, follows=follows)


def test_the_pods_agree_only_when_every_ready_one_has_read_since() -> None:
    since = 100.0
    assert agreement([_ready(read("v3", 0), 101.0), _ready(read("v3", 0), 130.0)], since) == read("v3", 0)
    assert agreement([_ready(read("v3", 0), 101.0), _ready(read("v2", 5), 99.0)], since) is None  # one read before
    assert agreement([_ready(read("v3", 0), 101.0), _ready(read("v4", 1), 102.0)], since) is None  # they disagree
    assert agreement([_ready(read("v3", 0), 101.0), _ready(None, None)], since) is None  # one has not read at all
    assert agreement([_ready(read("v3", 0), 101.0), _ready(None, None, ready=False)], since) == read("v3", 0)
    assert agreement([_ready(read("v3", 0), 101.0), _ready(None, None, follows=False)], since) == read("v3", 0)
    assert agreement([], since) is None


def _promotion(version: str, generation: object = 2, alias: str = "champion", model: str = "iris",
               outcome: str = "Promoted") -> Obj:  # fmt: skip
    promotion = {"alias": alias, "outcome": outcome, "generation": generation}
    return {"spec": {"output": {"registry": "file:///var/lib/regrow/registry", "modelName": model}},
            "status": {"artifact": {"version": version}, "promotion": promotion}}  # fmt: skip


def test_a_promotion_counts_for_the_alias_it_moved_at_the_generation_it_wrote() -> None:
    found = promotions([_promotion("v2", 2), _promotion("v3", 5)], MODEL)
    assert found == [read("v2", 2), read("v3", 5)]
    others: list[Obj] = [_promotion("v2", alias="staging"), _promotion("v2", model="wine"),
                         _promotion("v2", outcome="Rejected"), _promotion("v2", generation=None),
                         _promotion("v2", generation="2"), {"spec": {}, "status": {}}]  # fmt: skip
    assert promotions(others, MODEL) == []
    assert alias_ref(MODEL) == "file:///var/lib/regrow/registry/iris@champion" and alias_ref(PINNED_BY_SPEC) is None


# The property: whatever order the pods read the registry in, start, are replaced or fail to read it, and whoever
# moves the alias (a regrow writer that raises its generation, or one that keeps none), the decision moves forward,
# once per move, and ends where the registry points.

REFRESH = 30.0


@dataclass
class Pod:
    template: str | None  # the version its Deployment's template pinned when it was made (None: the alias's)
    awaits: bool = False  # made under a Canary with no pinned version: it loads none
    ready: bool = False
    serving: str | None = None
    reading: AliasReading | None = None
    read_at: float | None = None


@dataclass
class World:
    """The registry's alias (each write: its version and the generation it recorded), the promotions recorded by
    TrainingJobs, the stable pods, the stable Deployment's template, the status kept between reconciles, the
    operator's memory, and a clock."""

    canary: bool
    writes: list[AliasReading] = field(default_factory=lambda: [read("v1", 1)])
    promoted: list[AliasReading] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    pinned: str | None = None
    recorded: AliasReading | None = None
    rollout: RolloutStatus | None = None
    decisions: list[Desired] = field(default_factory=list)
    pins: list[str | None] = field(default_factory=list)  # what the template pinned after each reconcile
    started: list[str] = field(default_factory=list)  # the candidates of the canaries started, in order
    started_at: int = 0  # the write of the running canary's candidate
    clock: float = 1000.0
    outage: bool = False  # the pods cannot read the registry
    memory: Probes = field(init=False)  # the operator's, on this world's clock

    def __post_init__(self) -> None:
        self.memory = Probes(lambda *_: None, clock=lambda: self.clock)

    @property
    def alias(self) -> AliasReading:
        return self.writes[-1]

    def write(self, version: str, keeps_generation: bool, by_trainingjob: bool) -> None:
        if version == self.alias.version:
            return  # the registry keeps the record as it is
        self.writes.append(read(version, self.alias.generation + 1 if keeps_generation else 0))
        if by_trainingjob and keeps_generation:
            self.promoted.append(self.alias)

    def read(self, pod: Pod) -> None:
        if not self.outage:  # a failed read keeps the one before, and its age
            pod.reading, pod.read_at = self.alias, self.clock

    def start(self, i: int, reads: bool) -> None:
        pod = self.pods[i % len(self.pods)]
        if pod.template is None or reads:
            self.read(pod)
        if pod.ready:
            return
        if pod.template is not None:
            pod.ready, pod.serving = True, pod.template
        elif not pod.awaits and pod.reading is not None:  # it loads where the alias points
            pod.ready, pod.serving = True, pod.reading.version

    def roll(self) -> None:
        """The Deployment replaces one pod of an older template by one of the current template, not ready yet."""
        old = [i for i, p in enumerate(self.pods) if p.template != self.pinned]
        if old:
            self.pods[old[0]] = Pod(self.pinned, awaits=self.canary and self.pinned is None)

    def reconcile(self) -> None:
        reports = [PodReport(f"p{i}", p.ready, p.serving, "u", p.reading, None, None, read_at=p.read_at)
                   for i, p in enumerate(self.pods)]  # fmt: skip
        readings = [*(r.reading for r in reports), *self.promoted]
        since = self.memory.since("md", standing(self.recorded, readings))
        served = {p.serving for p in self.pods if p.ready and p.serving}
        desired = decide(MODEL, self.pinned, self.recorded, readings, served, agreement(reports, since))
        self.decisions.append(desired)
        self.recorded = desired.alias or self.recorded
        if self.canary:
            self._plan(desired)
        else:
            self.pinned = desired.pin
        self.pins.append(self.pinned)

    def _plan(self, desired: Desired) -> None:
        ready = {p.serving for p in self.pods if p.ready and p.serving}
        stable = self.pinned or (next(iter(ready)) if len(ready) == 1 else None)
        seen = canary.Seen(stable=stable, target=desired.target, stable_replicas=2, canary_problem=None,
                           promoted=False, decision=None, measured=(0, []), now=NOW)  # fmt: skip
        plan = canary.plan(SPEC.rollout, 4, self.rollout, [], seen)
        for event in plan.events:
            assert plan.rollout is not None
            if event.reason == "CanaryStarted":
                self.started.append(plan.rollout.candidate)
                versions = [w.version for w in self.writes]  # its latest write of the candidate
                self.started_at = len(versions) - 1 - versions[::-1].index(plan.rollout.candidate)
            if event.reason == "RolledBack":  # only the alias moving back ends a canary here: did it, since?
                assert plan.rollout.stable in [w.version for w in self.writes[self.started_at :]], (plan, self.writes)
        self.rollout, self.pinned = plan.rollout, plan.stable

    def settle(self) -> None:
        """The registry reachable again, time for every pod to start and read it twice, and reconciles between."""
        self.outage = False
        for _ in range(3):
            self.clock += REFRESH + 1
            for i in range(len(self.pods)):
                self.start(i, reads=True)
            self.reconcile()
            for _ in self.pods:
                self.roll()
            self.reconcile()


SPEC = parse_spec(
    ModelDeploymentSpec,
    _with(
        _example("ModelDeployment"),
        "spec.rollout",
        {"strategy": "Canary", "steps": [{"weight": 50, "minRequests": 100}]},
    )["spec"],
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("move"), st.sampled_from(VERSIONS), st.booleans()),
        st.tuples(st.just("by hand"), st.sampled_from(VERSIONS)),  # a writer that keeps no generation
        st.tuples(st.just("read"), st.integers(0, 3)),
        st.tuples(st.just("start"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("roll")),
        st.tuples(st.just("wait"), st.floats(0.5, 45)),
        st.tuples(st.just("outage"), st.booleans()),
        st.tuples(st.just("reconcile")),
    ),
    max_size=60,
)


def _run(world: World, steps: list[tuple[object, ...]], hands: bool) -> World:
    world.pods = [Pod(None, False, True, "v1", read("v1", 1), world.clock) for _ in range(2)]
    for step in steps:
        match step:
            case ("move", str(version), bool(by_trainingjob)):
                world.write(version, True, by_trainingjob)
            case ("by hand", str(version)) if hands:
                world.write(version, False, False)
            case ("read", int(i)):
                world.read(world.pods[i % len(world.pods)])
            case ("start", int(i), bool(reads)):
                world.start(i, reads)
            case ("roll",):
                world.roll()
            case ("wait", float(seconds)):
                world.clock += seconds
            case ("outage", bool(on)):
                world.outage = on
            case ("reconcile",):
                world.reconcile()
    return world


def _forward_once_per_move(world: World) -> None:
    """Every decision names the alias's version at a write it knows, the writes it knows never go back, and the
    template's pin changes only with a newer write (at most once per move)."""
    assert all(d.alias in world.writes for d in world.decisions if d.alias is not None), (world.decisions, world.writes)
    known = [world.writes.index(d.alias) for d in world.decisions if d.alias is not None]
    assert known == sorted(known), (known, world.writes)
    for desired in world.decisions:
        if desired.alias is not None:
            assert desired.target == desired.alias.version
    changes = [(a, b) for a, b in zip([None, *world.pins], world.pins, strict=False) if a != b]
    assert len(changes) <= len(world.writes), (changes, world.writes)


def _ends_where_the_registry_points(world: World) -> None:
    world.settle()
    assert world.decisions[-1].target == world.alias.version, (world.decisions[-1], world.writes)
    assert {p.serving for p in world.pods} == {world.alias.version}, world.pods


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_a_rolling_update_pins_each_move_once_and_never_goes_back(steps: list[tuple[object, ...]]) -> None:
    world = _run(World(canary=False), steps, hands=False)
    _forward_once_per_move(world)
    _ends_where_the_registry_points(world)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_a_canary_starts_once_per_move_and_ends_only_when_the_alias_moved_back(steps: list[tuple[object, ...]]) -> None:
    world = _run(World(canary=True), steps, hands=False)
    _forward_once_per_move(world)
    assert len(world.started) <= len(world.writes) - 1, (world.started, world.writes)
    for first, second in zip(world.started, world.started[1:], strict=False):
        assert first != second or [w.version for w in world.writes].count(first) > 1  # the alias came back to it


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_moves_by_writers_that_keep_no_generation_are_followed_once_the_pods_have_read_them(
    steps: list[tuple[object, ...]],
) -> None:
    for strategy in (False, True):
        world = _run(World(canary=strategy), steps, hands=True)
        changes = [(a, b) for a, b in zip([None, *world.pins], world.pins, strict=False) if a != b]
        assert len(changes) <= len(world.writes), (changes, world.writes)
        if not strategy:  # a canary that waits for requests never reaches every pod: its plan is tested apart
            _ends_where_the_registry_points(world)
