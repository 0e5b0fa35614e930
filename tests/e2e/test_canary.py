"""Canary rollouts on a cluster with a real kubelet and kube-proxy, with load through the Service the whole
time, every request on a connection of its own (kube-proxy balances connections, not requests).

A better candidate climbs 25% (1 candidate pod beside 3 stable ones) and 50% (3 beside 3) to every pod with
no failed request, the candidate's measured share of each step within 10 points of its weight. Then an
absurd candidate (it calls almost every flower setosa) fails the prediction-divergence gate at its first
step, is rolled back having answered no more than 25% + 10 points of the requests, and its Job moves the
alias back. Last, with approval Manual, a third version waits after its last step until `regrow promote`."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.cli import main
from regrow.controller.kube import Kube, path
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from tests.conftest import Operator
from tests.e2e.test_serving import answered_by, own_like_a_trainer_pod
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.unit.test_api import _example as example
from tests.unit.test_api import _with
from tests.unit.test_server import ROWS, publish_iris, v2

CLIENTS = 3
LOAD_SECONDS_MAX = 420
SETTLE_SECONDS = 2.0  # after a step's pods are all ready, for kube-proxy to have them all


class Load:
    """Requests through the Service, each on a new connection, by CLIENTS threads: (time, outcome) of each,
    the outcome being the version that answered or what went wrong."""

    def __init__(self, host: str) -> None:
        self.host, self.answers = host, list[tuple[float, str]]()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        deadline, body = time.monotonic() + LOAD_SECONDS_MAX, json.dumps(v2(ROWS))
        while not self.stop.is_set() and time.monotonic() < deadline:
            connection = http.client.HTTPConnection(self.host, 80, timeout=5)
            outcome = answered_by(connection, body)
            connection.close()
            self.answers.append((time.monotonic(), outcome))
            time.sleep(0.01)

    def between(self, start: float, end: float) -> Counter[str]:
        return Counter(outcome for at, outcome in self.answers if start <= at < end)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


class Watch:
    """The rollout's step and both tracks' readiness, twice a second: (time, candidate, step, outcome, canary
    pods ready == wanted > 0, stable pods ready == wanted)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: list[tuple[float, str, int, str, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _ready(self, name: str) -> bool:
        found = Kube(self.api).get(path("apps/v1", "deployments", self.namespace, name)) or {}
        wanted = (found.get("spec") or {}).get("replicas", 0)
        status = found.get("status") or {}
        return bool(wanted) and status.get("readyReplicas") == wanted == status.get("replicas")

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            md = get_custom(self.api, self.namespace, MODEL_DEPLOYMENT.plural, "iris")
            rollout = (md.get("status") or {}).get("rollout") or {}
            if rollout:
                both = self._ready("iris-canary") and self._ready("iris-predictor")
                self.seen.append((time.monotonic(), rollout["candidate"], rollout["step"], rollout.get("outcome", ""),
                                  both))  # fmt: skip

    def windows(self, candidate: str, step: int) -> list[tuple[float, float]]:
        """The spans in which ``candidate`` was at ``step`` with every pod of both tracks ready."""
        spans, start = [], None
        for at, who, where, outcome, ready in self.seen:
            inside = who == candidate and where == step and not outcome and ready
            if inside and start is None:
                start = at
            elif not inside and start is not None:
                spans.append((start + SETTLE_SECONDS, at))
                start = None
        return [(a, b) for a, b in spans if b > a]

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(10)


def _outcome(api: client.ApiClient, namespace: str, candidate: str, outcome: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        md = get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")
        rollout = (md.get("status") or {}).get("rollout") or {}
        return md if (rollout.get("candidate"), rollout.get("outcome")) == (candidate, outcome) else None

    try:
        return wait_for(probe, 300, f"{candidate} {outcome}")
    except AssertionError:
        print(json.dumps(get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris").get("status"), indent=1))
        raise


def _waiting(api: client.ApiClient, namespace: str) -> bool:
    progressing = condition(get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris"), "Progressing") or {}
    return progressing.get("reason") == "WaitingForApproval"


def _absurd_iris() -> bytes:
    """Iris relabelled so that a model learns to call almost everything setosa."""
    lines = sample_csv("iris").decode().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        *features, _ = line.split(",")
        out.append(",".join([*features, "virginica" if float(features[2]) > 6.3 else "setosa"]))
    return ("\n".join(out) + "\n").encode()


def publish_rivals(store: Path) -> tuple[str, str, str]:
    """iris three times into ``store``'s registry: the champion (logistic regression), a better candidate (a
    random forest, alias challenger) and an absurd one (alias absurd)."""
    first = publish_iris(store)
    better = publish_iris(store, algorithm="randomForest", alias="challenger")
    return first, better, publish_iris(store, alias="absurd", csv=_absurd_iris())


def _canary_md() -> dict[str, Any]:
    body = _with(example("ModelDeployment"), "spec.model.refreshInterval", "2s")
    body = _with(body, "spec.replicas", {"min": 3, "max": 3})
    body = _with(body, "spec.resources", {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1"}})
    steps = [{"weight": weight, "minRequests": 300, "maxWait": "4m"} for weight in (25, 50)]
    analysis = {"maxErrorShare": "0.01", "maxPredictionDivergence": "0.5"}
    return _with(body, "spec.rollout", {"strategy": "Canary", "maxSurge": 1, "steps": steps, "analysis": analysis})


@dataclass
class Rollouts:
    """Moves the alias and times what follows."""

    api: client.ApiClient
    namespace: str
    registry: Registry

    def md(self) -> dict[str, Any]:
        return get_custom(self.api, self.namespace, MODEL_DEPLOYMENT.plural, "iris")

    def serving(self, version: str) -> bool:
        """Whether ``version`` answers every request: every ready pod serves it, and no old pod is left
        finishing what it had received."""
        md = self.md()
        status = md.get("status") or {}
        settled = (condition(md, "Progressing") or {}).get("reason") in ("RolloutComplete", "RolledBack")
        return settled and status.get("model", {}).get("version") == version and not status.get("terminatingReplicas")

    def promote(self, version: str) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        self.registry.set_alias("iris", "champion", version)
        done = _outcome(self.api, self.namespace, version, "Promoted")
        wait_for(lambda: self.serving(version), 120, f"{version} on the stable pods")
        return done, time.monotonic() - started

    def reject(self, version: str, stable: str) -> tuple[dict[str, Any], tuple[float, float]]:
        started = time.monotonic()
        self.registry.set_alias("iris", "champion", version)
        done = _outcome(self.api, self.namespace, version, "RolledBack")
        wait_for(lambda: self.registry.resolve("iris", "champion") == stable, 120, "the alias moved back")
        return done, (started, time.monotonic())

    def approve(self, version: str) -> tuple[dict[str, Any], float, str]:
        """With approval Manual: the time it waited, and the version still serving then."""
        objects = client.CustomObjectsApi(self.api)
        manual = {"spec": {"rollout": {"approval": "Manual"}}}
        objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, MODEL_DEPLOYMENT.plural, "iris", manual)
        started = time.monotonic()
        self.registry.set_alias("iris", "champion", version)
        wait_for(lambda: _waiting(self.api, self.namespace), 240, "WaitingForApproval")
        waited = time.monotonic() - started
        time.sleep(5)  # it goes on waiting
        still = self.md()["status"]["model"]["version"]
        assert main(["promote", "iris", "--namespace", self.namespace, "--reason", "e2e"]) == 0
        done = _outcome(self.api, self.namespace, version, "Promoted")
        wait_for(lambda: self.serving(version), 120, f"{version} on the stable pods")
        return done, waited, still


@pytest.mark.usefixtures("quiet_node")
def test_a_canary_climbs_its_steps_under_load_and_an_absurd_one_is_rolled_back(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    first, better, absurd = publish_rivals(node_store)
    third = publish_iris(node_store, algorithm="gradientBoosting", alias="third")
    own_like_a_trainer_pod(node_store / "registry")
    rollouts = Rollouts(node_api, node_namespace, Registry(open_store(f"file://{node_store}/registry")))
    with node_operator():
        objects = client.CustomObjectsApi(node_api)
        objects.create_namespaced_custom_object(GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, _canary_md())
        wait_for(lambda: rollouts.serving(first), 240, f"{first} serving")
        service = Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor"))
        with Load(str((service or {})["spec"]["clusterIP"])) as load, Watch(node_api, node_namespace) as watch:
            wait_for(lambda: load.between(0, time.monotonic())[first] >= 30, 60, "answers through the Service")
            promoted, climbed = rollouts.promote(better)
            rolled, absurd_span = rollouts.reject(absurd, better)
            manual, waited, still = rollouts.approve(third)
    shares = {}
    for step, weight in ((1, 25), (2, 50)):
        answered = sum((load.between(a, b) for a, b in watch.windows(better, step)), Counter())
        shares[weight] = (answered[better] / max(1, answered[better] + answered[first]), sum(answered.values()))
    failed = {k: v for k, v in load.between(0, math.inf).items() if k not in (first, better, absurd, third)}
    during = load.between(*absurd_span)
    absurd_share = during[absurd] / max(1, sum(during.values()))
    print(f"\nbetter candidate: every step and every pod in {climbed:.0f}s; measured share at each weight "
          f"(share, requests): {shares}; absurd candidate rolled back and the alias back in "
          f"{absurd_span[1] - absurd_span[0]:.0f}s, having answered {absurd_share:.1%} of {sum(during.values())} "
          f"requests; manual: waited for approval {waited:.0f}s after the alias moved; failed: {failed}")  # fmt: skip
    assert failed == {}
    for weight, (share, requests) in shares.items():
        assert requests >= 100, f"too few requests measured at weight {weight}"
        assert abs(share * 100 - weight) <= 10, f"{share:.1%} at weight {weight}"
    assert promoted["status"]["rollout"]["step"] == 3
    rollout = rolled["status"]["rollout"]
    gates = {g["name"]: g for g in rollout["gates"]}
    assert rollout["step"] == 1 and gates["predictionDivergence"]["passed"] is False
    assert absurd_share <= 0.25 + 0.10
    assert rolled["status"]["rejectedVersions"] == [absurd]
    events = events_for(node_api, node_namespace, "iris")
    assert any(e[:2] == ("Warning", "RolledBack") and "predictionDivergence" in e[2] for e in events)
    assert still == better and manual["status"]["rollout"]["decision"]["reason"] == "e2e"
