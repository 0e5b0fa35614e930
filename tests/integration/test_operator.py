"""The operator process on a real API server: what it leaves on the objects (nothing but status), and
leader election between replicas."""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from typing import Any

import pytest
from kubernetes import client

from regrow import API_VERSION, GROUP, VERSION
from regrow.api import DRIFT_POLICY, KINDS, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.controller.kube import Conflict, Kube, Obj, path
from regrow.controller.lease import Lease
from tests.conftest import Operator
from tests.helpers import get_custom, wait_for
from tests.unit.test_api import _example

pytestmark = pytest.mark.usefixtures("no_kubelet")
PLURALS = {kind.kind: kind.plural for kind in KINDS}


def _apply_examples(api: client.ApiClient, namespace: str) -> dict[str, Obj]:
    custom = client.CustomObjectsApi(api)
    applied = {}
    for kind in (TRAINING_JOB, MODEL_DEPLOYMENT, DRIFT_POLICY):
        body = _example(kind.kind)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, body)
        applied[kind.kind] = body
    return applied


def _observed(api: client.ApiClient, namespace: str, plural: str, name: str) -> Obj | None:
    obj = get_custom(api, namespace, plural, name)
    return obj if (obj.get("status") or {}).get("observedGeneration") == 1 else None


def _gone(api: client.ApiClient, namespace: str, plural: str, name: str) -> bool:
    return Kube(api).get(path(API_VERSION, plural, namespace, name)) is None


def test_the_operator_writes_only_status_so_objects_delete_without_it(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """No finalizer (regrow has no external state to clean up), no bookkeeping annotations, the spec as the
    user wrote it (with the API server's defaults): deleting needs no operator, and a GitOps tool never sees
    regrow's writes as drift."""
    applied = _apply_examples(api, namespace)
    stored = {
        kind: get_custom(api, namespace, PLURALS[kind], body["metadata"]["name"]) for kind, body in applied.items()
    }
    with operator():
        for kind, body in applied.items():
            name = body["metadata"]["name"]
            seen = wait_for(partial(_observed, api, namespace, PLURALS[kind], name), 30, f"{kind} observed")
            assert seen["status"]["conditions"], kind
    for kind, body in applied.items():
        now = get_custom(api, namespace, PLURALS[kind], body["metadata"]["name"])
        assert now["metadata"]["generation"] == 1, kind
        assert not now["metadata"].get("finalizers"), kind
        assert now["metadata"].get("annotations") == stored[kind]["metadata"].get("annotations"), kind
        assert now["spec"] == stored[kind]["spec"], kind

    custom = client.CustomObjectsApi(api)
    for kind, body in applied.items():
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body["metadata"]["name"])
    for kind, body in applied.items():
        plural, name = PLURALS[kind], body["metadata"]["name"]
        wait_for(partial(_gone, api, namespace, plural, name), 10, f"{kind} {name} gone with no operator running")


class Writes(Kube):
    """The operator's client, counting what it writes to anything but its Lease."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.writes: list[str] = []

    def _call(self, method: str, url: str, body: Obj | None = None, query: Any = None) -> Obj:
        if method != "GET" and "/leases" not in url:
            self.writes.append(f"{method} {url}")
        return super()._call(method, url, body, query)


def test_two_replicas_one_leader_and_the_standby_takes_over(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    first, second = Writes(api), Writes(api)
    custom = client.CustomObjectsApi(api)
    lease = path("coordination.k8s.io/v1", "leases", namespace, "regrow-operator")
    with ExitStack() as stack:
        first_run = ExitStack()
        stack.callback(first_run.close)
        first_run.enter_context(operator(kube=first))
        wait_for(lambda: Kube(api).get(lease), 10, "the first replica's Lease")
        stack.enter_context(operator(kube=second))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, _example("TrainingJob"))
        wait_for(lambda: _observed(api, namespace, TRAINING_JOB.plural, "iris-v1"), 30, "iris-v1 observed")
        time.sleep(3)  # more loop ticks and Lease retries of both replicas
        assert first.writes and not second.writes, (first.writes, second.writes)

        first_run.close()  # the first replica stops and gives the Lease up
        later = _example("TrainingJob")
        later["metadata"]["name"] = "iris-v2"
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, later)
        wait_for(lambda: _observed(api, namespace, TRAINING_JOB.plural, "iris-v2"), 30, "iris-v2 seen by the standby")
    assert any("iris-v2" in write for write in second.writes)
    assert not any("iris-v2" in write for write in first.writes)


def test_a_lease_has_one_holder_and_passes_on_release_or_expiry(api: client.ApiClient, namespace: str) -> None:
    clock = [1000.0]
    a, b = (Lease(Kube(api), namespace, "test", who, duration=15, monotonic=lambda: clock[0]) for who in "ab")
    assert a.try_acquire() and not b.try_acquire()
    assert a.try_acquire() and not b.try_acquire()  # renewals keep it
    a.release()
    assert b.try_acquire() and not a.try_acquire()
    lease = Kube(api).get(path("coordination.k8s.io/v1", "leases", namespace, "test"))
    assert lease is not None and lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1

    clock[0] += 10  # b is still within its 15 s
    assert not a.try_acquire()
    clock[0] += 6  # b has not renewed for 16 s by a's clock: expired
    assert a.try_acquire() and not b.try_acquire()

    # Two replicas that both see an expired Lease: the resourceVersion lets exactly one write win.
    clock[0] += 30
    stale = Kube(api).get(path("coordination.k8s.io/v1", "leases", namespace, "test"))
    assert stale is not None
    claim = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "c"}}
    Kube(api).patch(path("coordination.k8s.io/v1", "leases", namespace, "test"), claim)
    with pytest.raises(Conflict):
        Kube(api).patch(path("coordination.k8s.io/v1", "leases", namespace, "test"), claim)
