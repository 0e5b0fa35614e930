"""Small helpers for tests against a cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client

from regrow import GROUP, VERSION
from regrow.controller.kube import Kube

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def get_custom(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return cast(dict[str, Any], obj)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def events_for(api: client.ApiClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about the object called ``name``."""
    items = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [(e.type or "", e.reason or "", e.message or "") for e in items]


class History:
    """Every value ``pick`` gives of the objects of a collection, in the order a watch delivers their changes
    (nothing between two events is missed, as polling would), with repeats in a row dropped: ``with History(...)
    as seen: ...; seen.values``."""

    def __init__(self, kube: Kube, where: str, pick: Callable[[dict[str, Any]], object], selector: str = "") -> None:
        self.kube, self.where, self.pick, self.selector = kube, where, pick, selector
        self.values: list[object] = []
        self.lock = threading.Lock()
        self.ended: Exception | None = None  # why the watch ended before the test did
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)  # ends with the API server, or the process

    def _add(self, obj: dict[str, Any]) -> None:
        value = self.pick(obj)
        with self.lock:
            if not self.values or self.values[-1] != value:
                self.values.append(value)

    def _run(self) -> None:
        try:
            listed = self.kube.collection(self.where, self.selector)
            for obj in listed.get("items") or []:
                self._add(obj)
            version = listed["metadata"]["resourceVersion"]
            while not self.done.is_set():
                for event in self.kube.watch(self.where, self.selector, version):
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._add(event["object"])
        except Exception as error:  # the API server went away: after the test, or a history with a gap
            if not self.done.is_set():
                self.ended = error

    def __enter__(self) -> History:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.5)  # the last events on their way
        self.done.set()
        assert self.ended is None, f"the watch of {self.where} ended early: {self.ended}"


class HangingStore:
    """A store whose writes hang until ``released`` is set (10 s at most)."""

    uri = "hanging://"

    def __init__(self) -> None:
        self.released = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        self.released.wait(10)
