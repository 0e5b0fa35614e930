"""The control loop's decisions with a fake API and a fake clock: when objects are due, what is written,
and what happens on a lost race or an error."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from regrow.api.kinds import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.api.kinds import Kind as ApiKind
from regrow.controller.handlers import API_QUIET_SECONDS, liveness
from regrow.controller.kube import Conflict, Obj
from regrow.controller.loop import MIN_REPEAT_SECONDS, STALL_SECONDS, Agenda, Controller, Kind, status_patch
from regrow.controller.result import Event, Result, StatusMismatch, checked

PATH = "/apis/regrow.dev/v1alpha1/namespaces/ml/modeldeployments/iris"


class Api:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Obj]] = []
        self.created: list[Obj] = []
        self.conflict = False
        self.unreachable = False
        self.stored: Obj | None = None

    def get(self, path: str) -> Obj | None:
        assert path == PATH
        if self.unreachable:
            raise ConnectionRefusedError(path)
        return self.stored

    def create(self, path: str, body: Obj) -> Obj:
        assert path == "/api/v1/namespaces/ml/events"
        self.created.append(body)
        return body

    def patch(self, path: str, body: Obj) -> Obj:
        assert path == PATH + "/status"
        if self.conflict:
            raise Conflict(path)
        self.patches.append((path, body))
        assert self.stored is not None
        return {**self.stored, "status": body["status"]}

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        raise AssertionError("not listed")


def _body(generation: int = 1, observed: int | None = None, rv: str = "7") -> Obj:
    body: Obj = {
        "apiVersion": "regrow.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": generation, "resourceVersion": rv},
    }
    if observed is not None:
        body["status"] = {"observedGeneration": observed, "conditions": []}
    return body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _controller(reconcile: Kind) -> tuple[Controller, Api, Clock]:
    api, clock = Api(), Clock()
    controller = Controller(api, {reconcile.plural: reconcile}, clock=clock)
    return controller, api, clock


def _kind(result: Result | Exception, period: float | None = 5.0) -> Kind:
    def reconcile(body: Obj) -> Result:
        if isinstance(result, Exception):
            raise result
        return result

    return Kind("ModelDeployment", "modeldeployments", reconcile, lambda body: period)


KEY = ("modeldeployments", "ml", "iris")


def _run_due(controller: Controller) -> set[tuple[str, str, str]]:
    """Dispatch what is due, wait for it; return the keys that ran."""

    async def once() -> set[tuple[str, str, str]]:
        controller._dispatch()
        ran = set(controller.busy)
        await asyncio.gather(*controller.tasks)
        return ran

    return asyncio.run(once())


READY = Result({"observedGeneration": 1, "conditions": [{"type": "Ready"}]}, [Event("Normal", "Ready", "ok")])


def test_status_patch_writes_only_changes_over_the_version_it_read() -> None:
    body = {"metadata": {"resourceVersion": "9"}, "status": {"a": 1, "b": 2}}
    assert status_patch(body, {"a": 1}) is None
    assert status_patch(body, {"a": 1, "gone": None}) is None  # absent and None are the same
    assert status_patch(body, {"b": None}) == {"metadata": {"resourceVersion": "9"}, "status": {"b": None}}


JSON = st.recursive(
    st.none() | st.integers(0, 3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=12,
)
FIELDS = st.integers(0, 3) | st.dictionaries(st.sampled_from("abc"), st.integers(0, 3), max_size=3)


@given(JSON, st.dictionaries(st.sampled_from("xyz"), FIELDS, max_size=3))
def test_a_status_patch_makes_each_field_exactly_what_was_asked(old: object, new: Obj) -> None:
    """Applied as the API server applies a merge patch, the patch leaves each field as the reconciler
    computed it: a key a nested object no longer has is removed, not kept from the last write (a finished
    canary's outcome stayed on the next one)."""
    body = {"metadata": {"resourceVersion": "1"}, "status": {"x": old, "keep": 1}}
    patch = status_patch(body, new)
    stored = body["status"] if patch is None else apply_merge_patch(body["status"], patch["status"])
    assert stored == {"x": old, "keep": 1, **new}


def apply_merge_patch(target: object, patch: object) -> object:
    """RFC 7386, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def test_unobserved_generations_are_due_at_once_observed_ones_after_their_period() -> None:
    controller, _, clock = _controller(_kind(READY))
    controller.observe("modeldeployments", None, _body(2, observed=1))
    assert controller.due[KEY] == clock.now
    controller.observe("modeldeployments", "MODIFIED", _body(2, observed=2))
    assert controller.due[KEY] == clock.now  # an earlier due time is kept
    del controller.due[KEY]
    controller.observe("modeldeployments", "MODIFIED", _body(2, observed=2))
    assert controller.due[KEY] == clock.now + 5
    controller.observe("modeldeployments", "DELETED", _body(2, observed=2))
    assert KEY not in controller.due and KEY not in controller.objects


def test_what_a_person_asks_in_an_annotation_is_looked_at_at_once() -> None:
    """An annotation of the kind's ``asks`` bumps no generation; a change to it is due now, not at the period,
    and any other annotation waits for the period."""
    controller, _, clock = _controller(replace(_kind(READY, period=3600.0), asks=("regrow.dev/retry",)))
    controller.observe("modeldeployments", None, _body(2, observed=2))
    assert controller.due[KEY] == clock.now + 3600
    for written, due in (({"other": "x"}, 3600.0), ({"other": "x", "regrow.dev/retry": "{}"}, 0.0)):
        del controller.due[KEY]
        body = _body(2, observed=2)
        body["metadata"]["annotations"] = written
        controller.observe("modeldeployments", "MODIFIED", body)
        assert controller.due[KEY] == clock.now + due


def test_a_deleted_object_is_forgotten_by_its_reconciler_too() -> None:
    forgotten: list[str] = []
    kind = replace(_kind(READY), forget=lambda body: forgotten.append(body["metadata"]["uid"]))
    controller, _, _ = _controller(kind)
    controller.observe("modeldeployments", None, _body())
    controller.observe("modeldeployments", "DELETED", _body())
    assert forgotten == ["u1"]


def test_a_finished_object_waits_for_a_spec_change() -> None:
    controller, _, _ = _controller(_kind(READY, period=None))
    controller.observe("modeldeployments", None, _body(1, observed=1))
    assert KEY not in controller.due


def test_a_reconcile_writes_status_then_events_and_is_not_repeated_within_a_second() -> None:
    controller, api, clock = _controller(_kind(READY))
    controller.observe("modeldeployments", None, _body())
    api.stored = _body()
    assert _run_due(controller) == {KEY}
    assert api.patches == [(PATH + "/status", {"metadata": {"resourceVersion": "7"}, "status": READY.status})]
    assert [(e["reason"], e["involvedObject"]["uid"]) for e in api.created] == [("Ready", "u1")]
    assert controller.objects[KEY]["status"] == READY.status
    assert controller.due[KEY] == clock.now + 5
    # the watch's echo of our write, with its generation observed, and a new spec right after it
    controller.observe("modeldeployments", "MODIFIED", _body(2, observed=1, rv="8"))
    assert controller.due[KEY] == clock.now + MIN_REPEAT_SECONDS


def test_a_lost_race_reads_the_object_again_and_posts_nothing() -> None:
    controller, api, clock = _controller(_kind(READY))
    controller.observe("modeldeployments", None, _body())
    api.conflict, api.stored = True, _body(2, observed=1, rv="9")
    _run_due(controller)
    assert api.created == []
    assert controller.objects[KEY]["metadata"]["resourceVersion"] == "9"
    assert controller.due[KEY] == clock.now + MIN_REPEAT_SECONDS


def test_a_lost_race_whose_read_fails_backs_off() -> None:
    controller, api, clock = _controller(_kind(READY))
    controller.observe("modeldeployments", None, _body())
    api.conflict = api.unreachable = True
    _run_due(controller)
    assert api.created == [] and controller.due[KEY] == clock.now + 2.0
    assert controller.objects[KEY]["metadata"]["resourceVersion"] == "7"  # still what the watch said


def test_errors_back_off_exponentially_and_do_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    controller, api, clock = _controller(_kind(RuntimeError("registry down")))
    controller.observe("modeldeployments", None, _body())
    for failures in (1, 2, 3):
        _run_due(controller)
        assert controller.due[KEY] == clock.now + 2.0**failures
        clock.now += 10
    assert "registry down" in caplog.text and api.patches == []


def test_one_namespace_with_many_slow_objects_does_not_hold_up_another() -> None:
    """40 objects in a busy namespace, each taking a while, all due before one object of a quiet namespace:
    the quiet one starts at once, not after the busy ones (which held every worker before)."""
    started: list[str] = []

    def reconcile(body: Obj) -> Result:
        started.append(body["metadata"]["namespace"])
        if body["metadata"]["namespace"] == "busy":
            time.sleep(0.2)
        return Result({})

    kind = Kind("ModelDeployment", "modeldeployments", reconcile, lambda body: 3600.0)
    controller = Controller(FreeApi(), {kind.plural: kind}, tick=0.01)

    async def run() -> None:
        for i in range(40):
            controller.observe(kind.plural, "ADDED", _object("busy", f"m{i}"))
        controller.observe(kind.plural, "ADDED", _object("quiet", "m0"))  # due last
        loop = asyncio.create_task(controller.run())
        while len(started) < 41:
            await asyncio.sleep(0.01)
        loop.cancel()
        await controller.stop()

    asyncio.run(run())
    assert started.index("quiet") < controller.workers  # in the first round of dispatch, not the sixth


class FreeApi(Api):
    """Any object's status is written as asked."""

    def patch(self, path: str, body: Obj) -> Obj:
        return body


def _object(namespace: str, name: str) -> Obj:
    return {"apiVersion": "regrow.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": f"{namespace}/{name}", "generation": 1,
                         "resourceVersion": "1"}}  # fmt: skip


class Kube:
    """What the liveness probe uses of the API client: when the API server last answered, and a GET."""

    def __init__(self, answered_at: float, error: Exception | None = None) -> None:
        self.answered_at, self.error, self.asked = answered_at, error, 0

    def get(self, path: str) -> Obj | None:
        assert path == "/version"
        self.asked += 1
        if self.error is not None:
            raise self.error
        return {"major": "1"}


def test_the_liveness_probe_fails_only_while_the_loop_or_the_api_server_cannot_work() -> None:
    controller, _, clock = _controller(_kind(READY))

    async def probe(loop: asyncio.Task[None], kube: Kube) -> str:
        try:
            answer = await liveness(controller, loop, kube)  # type: ignore[arg-type]
        except kopf.PermanentError as error:
            return str(error)
        return f"alive {answer}"

    async def run() -> list[str]:
        loop = asyncio.create_task(controller.run())
        await asyncio.sleep(0)  # the loop goes round once, then sleeps for its tick
        fresh = Kube(time.monotonic())
        verdicts = [await probe(loop, fresh)]
        clock.now += STALL_SECONDS + 1  # it has not gone round since: stuck
        verdicts.append(await probe(loop, fresh))
        await asyncio.sleep(controller.tick * 2)  # it goes round again
        quiet = time.monotonic() - API_QUIET_SECONDS - 1  # the API server has not been heard from for a while
        verdicts += [
            await probe(loop, Kube(quiet)),  # asked, and it answers
            await probe(loop, Kube(quiet, ApiException(status=403))),  # it answers, if not with what was asked
            await probe(loop, Kube(quiet, ConnectionRefusedError())),
        ]
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        verdicts.append(await probe(loop, fresh))  # the loop has ended
        await controller.stop()
        assert fresh.asked == 0  # the API server is asked only when nothing else has heard from it
        return verdicts

    assert asyncio.run(run()) == [
        "alive {'leading': True, 'reconciling': 0, 'due': 0}",
        "the control loop has stopped",
        "alive {'leading': True, 'reconciling': 0, 'due': 0}",
        "alive {'leading': True, 'reconciling': 0, 'due': 0}",
        "the API server does not answer (ConnectionRefusedError)",
        "the control loop has stopped",
    ]


def test_a_written_result_wakes_the_kinds_it_names_in_its_namespace_only() -> None:
    """A promotion that a TrainingJob reports wakes the ModelDeployments of its namespace at once."""
    promoted = Kind("TrainingJob", "trainingjobs", lambda body: Result({}, [], ("modeldeployments",)), lambda b: None)
    waiting = Kind("ModelDeployment", "modeldeployments", lambda body: Result({}), lambda body: 3600.0)
    clock = Clock()
    controller = Controller(FreeApi(), {k.plural: k for k in (promoted, waiting)}, clock=clock)
    for plural, namespace, name in (("modeldeployments", "ml", "iris"), ("modeldeployments", "other", "wine"),
                                    ("trainingjobs", "ml", "iris-v2")):  # fmt: skip
        body = _object(namespace, name)
        body["status"] = {"observedGeneration": 1}
        controller.observe(plural, "ADDED", body)
    clock.now += 10
    controller.due[("trainingjobs", "ml", "iris-v2")] = clock.now
    assert _run_due(controller) == {("trainingjobs", "ml", "iris-v2")}
    assert controller.due[("modeldeployments", "ml", "iris")] <= clock.now + MIN_REPEAT_SECONDS
    assert controller.due[("modeldeployments", "other", "wine")] > clock.now + 3000


AGENDA_STEPS = st.lists(
    st.tuples(st.sampled_from(["set", "del", "first"]), st.sampled_from("ab"), st.sampled_from("xyz"),
              st.integers(0, 9), st.sets(st.sampled_from("xyz"), max_size=2)),
    max_size=40,
)  # fmt: skip


@given(AGENDA_STEPS)
def test_the_agenda_finds_the_earliest_due_object_of_a_namespace_that_is_not_running(steps: list[Any]) -> None:
    """Against a plain dict searched in full: however times are set, moved and removed, ``first`` gives the
    earliest object of the namespace due by then and not running (ties in any order)."""
    agenda, plain = Agenda(), dict[tuple[str, str, str], float]()
    for op, namespace, name, moment, running in steps:
        key = ("modeldeployments", namespace, name)
        if op == "set":
            agenda[key] = plain[key] = float(moment)
        elif op == "del" and key in plain:
            del agenda[key], plain[key]
        elif op == "first":
            busy = {("modeldeployments", namespace, n) for n in running}
            due = [at for k, at in plain.items() if k[1] == namespace and at <= moment and k not in busy]
            found = agenda.first(namespace, float(moment), busy)
            assert (found[0] if found else None) == (min(due) if due else None)
            assert found is None or (plain[found[1]] == found[0] and found[1] not in busy)
        assert len(agenda) == len(plain) and all(agenda[k] == at for k, at in plain.items())


@pytest.mark.parametrize("kind", [MODEL_DEPLOYMENT, TRAINING_JOB, DRIFT_POLICY], ids=lambda k: k.kind)
def test_a_status_that_does_not_fit_its_kinds_model_is_refused_not_written(kind: ApiKind) -> None:
    """The API server prunes a key the schema lacks without a word: a misspelt key (at any depth) or a value of
    another shape is a bug that every reconciler's status is checked for before it is written."""
    base = {"observedGeneration": 2, "conditions": [], "unset": None}
    with pytest.raises(StatusMismatch):
        checked(kind.status, base)  # "unset" is no field, even to remove
    base.pop("unset")
    assert checked(kind.status, base) == base
    removed = {name: None for name in kind.status.model_json_schema(by_alias=True)["properties"]} | base
    assert checked(kind.status, removed) == removed  # every field has a default to fall back to
    empty = {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
             "lastTransitionTime": "2026-12-07T20:28:56Z"}  # fmt: skip
    for wrong in ({"observedGeneration": "two"}, {"readyReplica": 1}, {"conditions": [{"type": "Ready"}]},
                  {"conditions": [empty]}):  # fmt: skip
        with pytest.raises(StatusMismatch):  # the API server (1.20) took the empty message for null, and refused it
            checked(kind.status, {**base, **wrong})


def test_the_loop_ends_when_cancelled_even_as_it_is_woken() -> None:
    """A cancellation that comes as the wake-up does ends the loop (Python 3.11's wait_for lost it, and the
    loop went round for ever: a shutdown, or a test's asyncio.run, hung)."""
    controller = Controller(FreeApi(), {}, tick=60.0)

    async def run() -> None:
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(0.05)  # waiting to be woken
        controller.wake.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    asyncio.run(run())
