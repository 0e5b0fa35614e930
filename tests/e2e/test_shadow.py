"""Shadow steps on a cluster with a real kubelet and kube-proxy, with load through the Service.

First a candidate that mostly agrees (a random forest beside the logistic regression) shadows the two stable
pods at 100% for its step's pause (90 s), and is promoted: the client's latency is measured in RUNS runs before it
and RUNS while it shadows (printed: a latency target is a benchmark's, not an assertion). Then an absurd
candidate (it calls almost every flower setosa) shadows, disagrees past the gate, and is rolled back having
answered no client, its alias moved back. Each shadow receives at least 90% of the requests the stable pods
sampled for it (the rest dropped by a full queue, failed, or sent before a shadow pod was reachable)."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.controller.kube import Kube, path
from regrow.storage import open_store
from regrow.storage.registry import Registry
from tests.conftest import Operator
from tests.e2e.test_canary import Load, Rollouts, _outcome, publish_rivals
from tests.e2e.test_serving import answered_by, own_like_a_trainer_pod
from tests.helpers import condition, wait_for
from tests.unit.test_api import _example as example
from tests.unit.test_api import _with
from tests.unit.test_server import ROWS, v2

RUNS, RUN_SECONDS, CLIENTS = 3, 8.0, 2
REQUESTS_PER_CONNECTION = 100  # then another connection, so that kube-proxy spreads them over the pods


def _latencies(host: str) -> tuple[list[float], Counter[str]]:
    """RUN_SECONDS of CLIENTS kept-alive clients, one request every 5 ms or so each: every request's seconds
    (its answer read), and which version answered."""
    seconds: list[float] = []
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    def client_loop() -> None:
        body, deadline = json.dumps(v2(ROWS)), time.monotonic() + RUN_SECONDS
        connection, used = http.client.HTTPConnection(host, 80, timeout=5), 0
        while time.monotonic() < deadline:
            if used == REQUESTS_PER_CONNECTION:
                connection.close()
                connection, used = http.client.HTTPConnection(host, 80, timeout=5), 0
            started = time.perf_counter()
            outcome = answered_by(connection, body)
            took, used = time.perf_counter() - started, used + 1
            with lock:
                seconds.append(took)
                versions[outcome] += 1
            time.sleep(0.005)
        connection.close()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_SECONDS + 30)
    return seconds, versions


def _shadow_md() -> dict[str, Any]:
    body = _with(example("ModelDeployment"), "spec.model.refreshInterval", "2s")
    body = _with(body, "spec.replicas", {"min": 2, "max": 2})
    body = _with(body, "spec.resources", {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1"}})
    steps = [{"mirror": 100, "minRequests": 300, "pause": "90s", "maxWait": "4m"}]
    analysis = {"maxErrorShare": "0.01", "maxDisagreement": "0.4"}
    return _with(body, "spec.rollout", {"strategy": "Canary", "maxSurge": 1, "steps": steps, "analysis": analysis})


def _received(record: dict[str, Any]) -> float:
    """The share of the requests the stable pods sampled for the shadow that it answered."""
    assert record["mirrored"] > 0, record
    return float(record["requests"] / record["mirrored"])


@pytest.mark.usefixtures("quiet_node")
def test_a_shadow_answers_no_client_costs_the_clients_little_and_one_that_disagrees_is_rolled_back(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    first, agreeing, absurd = publish_rivals(node_store)
    own_like_a_trainer_pod(node_store / "registry")
    rollouts = Rollouts(node_api, node_namespace, Registry(open_store(f"file://{node_store}/registry")))
    with node_operator():
        objects = client.CustomObjectsApi(node_api)
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, _shadow_md())
        wait_for(lambda: rollouts.serving(first), 240, f"{first} serving")
        host = str((Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor")) or {})["spec"]
                   ["clusterIP"])  # fmt: skip
        _latencies(host)  # warm: connections, the pods' first requests
        without = [_latencies(host) for _ in range(RUNS)]

        rollouts.registry.set_alias("iris", "champion", agreeing)
        with Load(host):
            wait_for(lambda: _mirrored(rollouts.md()) >= 300, 180, "the shadow receiving mirrored requests")
        shadowed = [_latencies(host) for _ in range(RUNS)]
        still = rollouts.md()["status"]["rollout"]
        promoted = _outcome(node_api, node_namespace, agreeing, "Promoted")
        wait_for(lambda: rollouts.serving(agreeing), 120, f"{agreeing} on the stable pods")

        with Load(host) as load:
            wait_for(lambda: load.between(0, math.inf)[agreeing] >= 30, 60, "answers through the Service")
            rejected, _ = rollouts.reject(absurd, agreeing)
            answered = load.between(0, math.inf)
        shadow_pods = Kube(node_api).get(path("apps/v1", "deployments", node_namespace, "iris-shadow"))

    p99 = {name: [float(np.percentile(s, 99)) * 1000 for s, _ in runs] for name, runs in
           (("without", without), ("with", shadowed))}  # fmt: skip
    pooled = {name: float(np.percentile([x for s, _ in runs for x in s], 99)) * 1000 for name, runs in
              (("without", without), ("with", shadowed))}  # fmt: skip
    passed = promoted["status"]["rollout"]["passed"][0]
    failed = rejected["status"]["rollout"]
    print(
        f"\nclient p99 (ms) without a shadow: {[round(x, 2) for x in p99['without']]},"
        f" pooled {pooled['without']:.2f};"
        f" with one at 100%: {[round(x, 2) for x in p99['with']]}, pooled {pooled['with']:.2f}"
        f" (x{pooled['with'] / pooled['without']:.2f}; requests per run {[len(s) for s, _ in shadowed]});"
        f" received: {passed['requests']}/{passed['mirrored']} then {failed['requests']}/{failed['mirrored']};"
        f" gates {passed['gates']} then {failed['gates']}; answers while the absurd one shadowed: {dict(answered)}"
    )
    assert still["step"] == 1 and not still.get("outcome")  # every shadowed run was measured at the shadow step
    for _, versions in [*without, *shadowed]:
        assert set(versions) == {first}, versions  # every client answered, by the stable version only
    assert (passed["mirror"], passed["weight"]) == (100, 0) and _received(passed) >= 0.9
    gates = {g["name"]: g for g in failed["gates"]}
    assert failed["outcome"] == "RolledBack" and gates["disagreement"]["passed"] is False
    assert _received(failed) >= 0.9
    assert answered[absurd] == 0 and set(answered) == {agreeing}, answered  # no client saw the absurd candidate
    assert rejected["status"]["rejectedVersions"] == [absurd]
    assert shadow_pods is not None and shadow_pods["spec"]["replicas"] == 0
    assert (condition(rejected, "Progressing") or {}).get("reason") == "RolledBack"


def _mirrored(md: dict[str, Any]) -> int:
    rollout = (md.get("status") or {}).get("rollout") or {}
    return int(rollout.get("mirrored") or 0) if rollout.get("mirror") and not rollout.get("outcome") else 0
