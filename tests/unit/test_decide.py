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
from regrow.controller.decide import Desired, alias_ref, decide, promotions
from regrow.controller.kube import Obj
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
    assert decide(MODEL, None, [read("v1", 1)], {"v1"}) == Desired(None, "v1", read("v1", 1))
    assert decide(MODEL, None, [read("v1", 1)], set()) == Desired(None, "v1", read("v1", 1))  # none ready yet
    # The alias moved: its version pinned, whoever saw the move first.
    assert decide(MODEL, None, [read("v1", 1), read("v2", 2)], {"v1"}).pin == "v2"
    assert decide(MODEL, "v1", [read("v1", 1), read("v2", 2)], {"v1"}).pin == "v2"
    # Pods that have not read the registry since do not take it back: the decision of the flapping promotion.
    assert decide(MODEL, "v2", [read("v2", 2), read("v1", 1), read("v1", 1)], {"v1"}).pin == "v2"
    # A move back is a move: a newer generation.
    assert decide(MODEL, "v2", [read("v2", 2), read("v1", 3)], {"v2"}) == Desired("v1", "v1", read("v1", 3))
    # Nothing known: as it is.
    assert decide(MODEL, "v2", [None], {"v2"}) == Desired("v2", None, None)
    assert decide(MODEL, None, [], set()) == Desired(None, None, None)
    # A spec's version is pinned as it is.
    assert decide(PINNED_BY_SPEC, "v1", [read("v2", 9)], {"v1"}) == Desired("v7", "v7", None)


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


# The property: whatever order the pods read the registry in, start, or are replaced, the decision moves once per
# move of the alias, forward.


@dataclass
class Pod:
    template: str | None  # the version its Deployment's template pinned when it was made (None: the alias's)
    ready: bool = False
    serving: str | None = None
    reading: AliasReading | None = None


@dataclass
class World:
    """The registry's alias (its versions by generation), the promotions recorded by TrainingJobs, the stable pods,
    the stable Deployment's template and the status kept between reconciles."""

    canary: bool
    history: list[str] = field(default_factory=lambda: ["v1"])  # history[g - 1]: the alias at generation g
    promoted: list[AliasReading] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    pinned: str | None = None
    recorded: AliasReading | None = None
    rollout: RolloutStatus | None = None
    decisions: list[Desired] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # the candidates of the canaries started, in order
    started_at: int = 0  # the generation the running canary's candidate was read at

    @property
    def alias(self) -> AliasReading:
        return read(self.history[-1], len(self.history))

    def move(self, version: str, by_trainingjob: bool) -> None:
        if version == self.history[-1]:
            return  # the registry keeps the record as it is
        self.history.append(version)
        if by_trainingjob:
            self.promoted.append(self.alias)

    def start(self, i: int, reads: bool) -> None:
        pod = self.pods[i % len(self.pods)]
        if not pod.ready:
            pod.ready, pod.serving = True, pod.template or self.history[-1]
            if pod.template is None or reads:  # a pod that follows the alias read it to load it
                pod.reading = self.alias

    def roll(self) -> None:
        """The Deployment replaces one pod of an older template by one of the current template, not ready yet."""
        old = [i for i, p in enumerate(self.pods) if p.template != self.pinned]
        if old:
            self.pods[old[0]] = Pod(self.pinned)

    def reconcile(self) -> None:
        readings = [self.recorded, *(p.reading for p in self.pods), *self.promoted]
        desired = decide(MODEL, self.pinned, readings, {p.serving for p in self.pods if p.ready and p.serving})
        self.decisions.append(desired)
        self.recorded = desired.alias or self.recorded
        if not self.canary:
            self.pinned = desired.pin
            return
        ready = {p.serving for p in self.pods if p.ready and p.serving}
        stable = self.pinned or (next(iter(ready)) if len(ready) == 1 else None)
        seen = canary.Seen(stable=stable, target=desired.target, stable_replicas=2, canary_problem=None,
                           promoted=False, decision=None, measured=(0, []), now=NOW)  # fmt: skip
        plan = canary.plan(SPEC.rollout, 4, self.rollout, [], seen)
        for event in plan.events:
            assert plan.rollout is not None
            if event.reason == "CanaryStarted":
                assert desired.alias is not None
                self.started.append(plan.rollout.candidate)
                self.started_at = desired.alias.generation  # the generation the candidate was read at
            if event.reason == "RolledBack":  # only the alias moving back ends a canary here: did it, since?
                assert plan.rollout.stable in self.history[self.started_at :], (plan.rollout, self.history)
        self.rollout, self.pinned = plan.rollout, plan.stable


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
        st.tuples(st.just("read"), st.integers(0, 3)),
        st.tuples(st.just("start"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("roll")),
        st.tuples(st.just("reconcile")),
    ),
    max_size=60,
)


def _run(world: World, steps: list[tuple[object, ...]]) -> World:
    world.pods = [Pod(None, True, "v1", read("v1", 1)), Pod(None, True, "v1", read("v1", 1))]
    for step in steps:
        match step:
            case ("move", str(version), bool(by_trainingjob)):
                world.move(version, by_trainingjob)
            case ("read", int(i)):
                world.pods[i % len(world.pods)].reading = world.alias
            case ("start", int(i), bool(reads)):
                world.start(i, reads)
            case ("roll",):
                world.roll()
            case ("reconcile",):
                world.reconcile()
    return world


def _forward_once_per_move(world: World) -> None:
    """Every decision names the alias's version at the generation it knows, the generations never go back, and the
    pin changes only with a newer generation (at most once per move)."""
    generations = [d.alias.generation for d in world.decisions if d.alias is not None]
    assert generations == sorted(generations), generations
    for desired in world.decisions:
        if desired.alias is not None:
            assert desired.target == world.history[desired.alias.generation - 1] == desired.alias.version
    pins = [d.pin for d in world.decisions]
    changes = [(a, b) for a, b in zip([None, *pins], pins, strict=False) if a != b]
    assert len(changes) <= len(world.history), (changes, world.history)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_a_rolling_update_pins_each_move_once_and_never_goes_back(steps: list[tuple[object, ...]]) -> None:
    _forward_once_per_move(_run(World(canary=False), steps))


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_a_canary_starts_once_per_move_and_ends_only_when_the_alias_moved_back(steps: list[tuple[object, ...]]) -> None:
    world = _run(World(canary=True), steps)
    _forward_once_per_move(world)
    assert len(world.started) <= len(world.history) - 1, (world.started, world.history)
    for first, second in zip(world.started, world.started[1:], strict=False):
        assert first != second or world.history.count(first) > 1  # a candidate again: the alias came back to it
