"""The control loop: kopf's watches fill a cache; this loop decides when each object is reconciled.

Every object is reconciled when its spec's generation is not yet observed, when something it owns changes
(``poke``: the watch-fed caches of ``cache.py`` say so), and again after the period its kind asks for
(``Kind.next_in``): a running TrainingJob every few seconds, a DriftPolicy once per ``spec.interval``, a
ModelDeployment every few seconds only while a canary runs, else at its pods' alias refresh or the resync
period (controller-runtime's SyncPeriod). kopf's timers
would do the same, but kopf puts a finalizer on every object that has a timer, and a finalizer with no
operator running keeps objects, and their namespaces, from ever being deleted. regrow has no external state
to clean up (children go with their owner through ownerReferences), so it has no finalizer.

A reconcile reads the cached object, and its status write carries the ``resourceVersion`` it read: a
write that lost a race (a newer spec, another replica) is dropped with a 409 and the object is read again,
so no decision is ever written over state it did not see. Events are posted only after the status they
describe is written, so a retried reconcile does not post them twice. Only the holder of the Lease acts.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from regrow import API_VERSION
from regrow.clock import now
from regrow.controller.kube import Api, Conflict, Obj, path
from regrow.controller.lease import Lease
from regrow.controller.metrics import Instruments
from regrow.controller.result import Event, Result

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (plural, namespace, name)
MAX_BACKOFF_SECONDS = 300.0
MIN_REPEAT_SECONDS = 1.0  # the shortest time between two reconciles of one object
EVENT_MESSAGE_LIMIT = 1024
STALL_SECONDS = 10.0  # the loop goes round at least every quarter second; one that has not for this long is stuck


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    reconcile: Callable[[Obj], Result]
    next_in: Callable[[Obj], float | None]  # seconds to the next level check; None: only when the spec changes
    forget: Callable[[Obj], None] = lambda body: None  # drop what the reconciler keeps about a deleted object
    asks: tuple[str, ...] = ()  # annotations a person writes to ask something of it: a change is looked at at once

    def asked(self, before: Obj | None, after: Obj) -> bool:
        """Whether ``after`` changes what a person asks of the object (an annotation of ``asks``)."""
        if before is None:
            return False
        old, new = (body["metadata"].get("annotations") or {} for body in (before, after))
        return any(old.get(name) != new.get(name) for name in self.asks)


def wait_for(kind: Kind, body: Obj) -> float | None:
    """Seconds until ``body`` is due: at once while its generation is unobserved, else what its kind asks."""
    wait = kind.next_in(body)
    if wait is None:
        return None
    observed = (body.get("status") or {}).get("observedGeneration")
    return 0.0 if observed != body["metadata"].get("generation") else wait


def merge_patch(current: object, desired: object) -> object:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``desired``: objects key by key, with a
    null for each key that ``desired`` lacks (a merge patch keeps what it does not name), anything else
    whole."""
    if not (isinstance(current, dict) and isinstance(desired, dict)):
        return desired
    patch: Obj = {key: None for key in current if key not in desired}
    for key, value in desired.items():
        if current.get(key) != value:
            patch[key] = merge_patch(current.get(key), value)
    return patch


def status_patch(body: Obj, status: Obj) -> Obj | None:
    """The merge patch that makes each field of ``status`` what ``body`` holds, written over the version it
    read, or None when nothing would change. A None in ``status`` removes that field; fields it does not name
    are left as they are."""
    current = body.get("status") or {}
    changed = {key: merge_patch(current.get(key), value) for key, value in status.items() if current.get(key) != value}
    if not changed:
        return None
    return {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": changed}


def event_manifest(body: Obj, event: Event, component: str) -> Obj:
    meta = body["metadata"]
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:EVENT_MESSAGE_LIMIT],
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class Agenda:
    """When each object is next due, with a heap per namespace beside it, so that finding what to start next
    costs the logarithm of what is due, not a pass over every object. An entry whose time is no longer the
    object's is stale and dropped when it comes up."""

    def __init__(self) -> None:
        self._at: dict[Key, float] = {}
        self._heaps: dict[str, list[tuple[float, Key]]] = collections.defaultdict(list)

    def __setitem__(self, key: Key, at: float) -> None:
        if self._at.get(key) != at:
            self._at[key] = at
            heapq.heappush(self._heaps[key[1]], (at, key))

    def __getitem__(self, key: Key) -> float:
        return self._at[key]

    def __delitem__(self, key: Key) -> None:
        del self._at[key]

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def get(self, key: Key) -> float | None:
        return self._at.get(key)

    def pop(self, key: Key) -> None:
        self._at.pop(key, None)

    def namespaces(self) -> list[str]:
        return list(self._heaps)

    def first(self, namespace: str, moment: float, busy: set[Key]) -> tuple[float, Key] | None:
        """The earliest of ``namespace``'s objects due by ``moment`` and not ``busy``, with its due time."""
        heap, passed, found = self._heaps[namespace], [], None
        while heap and heap[0][0] <= moment:
            at, key = heap[0]
            if self._at.get(key) != at:
                heapq.heappop(heap)
            elif key in busy:  # due again while it runs: not now, but kept
                passed.append(heapq.heappop(heap))
            else:
                found = heap[0]
                break
        for entry in passed:
            heapq.heappush(heap, entry)
        if not heap:
            del self._heaps[namespace]
        return found


@dataclass
class Controller:
    api: Api
    kinds: dict[str, Kind]
    lease: Lease | None = None
    instruments: Instruments = field(default_factory=lambda: Instruments(CollectorRegistry()))
    clock: Callable[[], float] = time.monotonic
    tick: float = 0.25
    lease_retry: float = 2.0
    workers: int = 8
    component: str = "regrow-operator"
    objects: dict[Key, Obj] = field(default_factory=dict)
    due: Agenda = field(default_factory=Agenda)
    failures: dict[Key, int] = field(default_factory=dict)
    last_run: dict[Key, float] = field(default_factory=dict)
    busy: set[Key] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    ticked_at: float = float("-inf")  # when the loop last went round
    # Set when an object falls due now or a worker comes free: the loop goes round at once instead of at its next
    # tick, so reconciles follow each other as fast as the workers allow (at most workers per tick, before).
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # One thread per worker: asyncio's default pool has min(32, CPUs + 4), fewer than the workers on a
        # small node, so reconciles would queue for a thread unseen by the fair dispatch.
        self._threads = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="reconcile")

    @classmethod
    def of(cls, api: Api, kinds: Iterable[Kind], lease: Lease | None, instruments: Instruments) -> Controller:
        return cls(api, {k.plural: k for k in kinds}, lease, instruments)

    def observe(self, plural: str, event_type: str | None, body: Obj) -> None:
        """A watch event: remember the object (or forget it) and schedule it."""
        key = (plural, body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.due.pop(key)
            for table in (self.objects, self.failures, self.last_run):
                table.pop(key, None)
            self.kinds[plural].forget(body)
            return
        asked = self.kinds[plural].asked(self.objects.get(key), body)
        self.objects[key] = body
        self._schedule(key, body, 0.0 if asked else None)

    def poke(self, keys: Iterable[Key]) -> None:
        """Something these objects own changed (a child, a pod): reconcile those of them that exist, soon."""
        for key in keys:
            if key in self.objects:
                self._schedule(key, self.objects[key], 0.0)

    def _schedule(self, key: Key, body: Obj, delay: float | None = None) -> None:
        wait = wait_for(self.kinds[key[0]], body) if delay is None else delay
        if wait is None:
            self.due.pop(key)
            return
        moment = self.clock()
        at = max(moment + wait, self.last_run.get(key, float("-inf")) + MIN_REPEAT_SECONDS)
        held = self.due.get(key)
        self.due[key] = at if held is None else min(held, at)
        if self.due[key] <= moment:
            self.wake.set()

    async def run(self) -> None:
        leading, lease_at = self.lease is None, 0.0
        while True:
            self.ticked_at = self.clock()
            if self.lease is not None and self.clock() >= lease_at:
                try:
                    leading = await asyncio.to_thread(self.lease.try_acquire)
                except Exception:  # whatever it is, the loop must not end: it would reconcile nothing, ever
                    log.exception("Could not take or renew the Lease; standing by")
                    leading = False
                lease_at = self.clock() + self.lease_retry
            self.instruments.leader.set(leading)
            if leading:
                self._dispatch()
            self.wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that comes as
            # the wake-up does, and this loop then never ends (a test's asyncio.run hung on it)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self.wake.wait()

    def stalled(self) -> bool:
        """Whether the loop has stopped going round (it ended, or a Lease call hangs past its timeouts)."""
        return self.clock() - self.ticked_at > STALL_SECONDS

    def _dispatch(self) -> None:
        """Start what is due, sharing the workers fairly between namespaces: the namespace with the fewest
        reconciles running goes next (earliest due first within it), and none holds more than its share of
        all workers but one, so that an object of a namespace that had nothing to do finds a worker free
        however many slow objects another namespace has."""
        if len(self.busy) >= self.workers:
            return
        moment = self.clock()
        heads = {ns: head for ns in self.due.namespaces() if (head := self.due.first(ns, moment, self.busy))}
        running = collections.Counter(key[1] for key in self.busy)
        share = max(1, (self.workers - 1) // max(1, len(heads.keys() | running.keys())))
        while len(self.busy) < self.workers:
            open_ = [ns for ns in heads if running[ns] < share]
            if not open_:
                break
            namespace = min(open_, key=lambda ns: (running[ns], heads[ns][0]))
            key = heads[namespace][1]
            running[namespace] += 1
            del self.due[key]
            self.busy.add(key)
            self.last_run[key] = moment
            task = asyncio.create_task(self._reconcile(key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            if (head := self.due.first(namespace, moment, self.busy)) is None:
                del heads[namespace]
            else:
                heads[namespace] = head

    async def _reconcile(self, key: Key) -> None:
        body = self.objects.get(key)
        kind = self.kinds[key[0]].kind
        result = "error"
        try:
            if body is None:
                return
            updated, written, wake = await asyncio.get_running_loop().run_in_executor(
                self._threads, self._step, self.kinds[key[0]], body
            )
        except Exception:  # one object's failure (the API, the registry, a bug) must not stop the loop
            failures = self.failures[key] = self.failures.get(key, 0) + 1
            delay = min(MAX_BACKOFF_SECONDS, 2.0**failures)
            log.exception("Failed to reconcile %s %s/%s; retrying in %.0fs", self.kinds[key[0]].kind, *key[1:], delay)
            if key in self.objects:
                self._schedule(key, self.objects[key], delay)
        else:
            result = "ok" if written else "conflict"
            self.failures.pop(key, None)
            if updated is not None and self.objects.get(key) is body:  # no newer event came meanwhile
                self.objects[key] = updated
            if key in self.objects:
                self._schedule(key, self.objects[key])
            for other in [k for k in self.objects if k[0] in wake and k[1] == key[1]] if wake else ():
                self._schedule(other, self.objects[other], 0.0)
        finally:
            self.busy.discard(key)
            self.wake.set()
            if body is not None:
                self.instruments.reconciles.labels(kind, result).inc()

    def _path(self, key: Key) -> str:
        plural, namespace, name = key
        return path(API_VERSION, plural, namespace, name)

    def _step(self, kind: Kind, body: Obj) -> tuple[Obj | None, bool, tuple[str, ...]]:
        """Reconcile, write the status, post the Events (blocking: in a thread). Returns the object as written,
        True and the kinds to wake; or, when the object changed since it was read, the object read again (None:
        deleted), False and none, having written and posted nothing."""
        result = kind.reconcile(body)
        patch = status_patch(body, result.status)
        key = (kind.plural, body["metadata"]["namespace"], body["metadata"]["name"])
        try:
            updated = body if patch is None else self.api.patch(self._path(key) + "/status", patch)
        except Conflict:
            return self.api.get(self._path(key)), False, ()
        for event in result.events:
            log.info("%s %s/%s: %s: %s", kind.kind, *key[1:], event.reason, event.message)
            try:
                self.api.create(path("v1", "events", key[1]), event_manifest(body, event, self.component))
            except ApiException as error:
                log.warning("Could not post Event %s on %s/%s: %s", event.reason, *key[1:], error)
        return updated, True, result.wake

    async def stop(self) -> None:
        """Stop dispatching, let running reconciles finish, and give the Lease up."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=30)
        self._threads.shutdown(wait=False)
        if self.lease is not None:
            await asyncio.to_thread(self.lease.release)
