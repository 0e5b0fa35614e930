"""Canary rollouts on a real API server with the real Deployment and ReplicaSet controllers. No kubelet runs
here, so ``Kubelet`` plays it and the serving pods: every pod runs at an address of its own, serves the version
its Deployment pins (else the alias's, once the alias exists), reads the alias as the real server does (when it
starts, then every ``refresh`` seconds on its own clock), and counts the requests the test spreads over the
ready pods, as kube-proxy spreads connections."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regrow import GROUP
from regrow.api import MODEL_DEPLOYMENT
from regrow.api.modeldeployment import RetryRequest
from regrow.cli import main
from regrow.clock import now
from regrow.contracts import AliasReading, Graded, ModelMetadata, ModelParameters, Quality
from regrow.controller import canary
from regrow.controller.kube import Kube, Obj, path
from regrow.drift.profile import PREDICTION, FeatureProfile, fit_profile
from regrow.telemetry import LATENCY_BUCKETS
from tests.cluster import free_port
from tests.conftest import Operator
from tests.helpers import condition, events_for, get_custom, wait_for
from tests.integration.test_modeldeployment_controller import _create
from tests.integration.test_trainingjob_controller import _create as _create_tj
from tests.integration.test_trainingjob_controller import _finish_pod, _pod_of, _succeeded
from tests.unit.test_api import _example, _with

pytestmark = pytest.mark.usefixtures("no_kubelet")
CLASSES = ("setosa", "versicolor", "virginica")
PROFILE = dataclasses.replace(
    fit_profile(np.random.default_rng(0).normal(0, 1, (500, 2)), ["a", "b"]),
    prediction=FeatureProfile(PREDICTION, (), (30, 30, 40), CLASSES),
)


@dataclasses.dataclass
class Behaviour:
    errors: float = 0.0  # the share of its requests a version answers with 500
    seconds: float = 0.003
    predictions: tuple[float, ...] = (0.3, 0.3, 0.4)
    accuracy: float = 0.95  # the share of its predictions that clients' labels find right (every one is labelled)
    agreement: float = 0.9  # as a shadow: the share of rows it labels as the stable version does


@dataclasses.dataclass
class Pod:
    version: str  # empty: waiting for the alias to exist (not ready)
    name: str = ""
    reading: AliasReading | None = None  # where it last read the alias to point
    read_at: float = 0.0  # when
    awaits: bool = False  # it pins no version and loads none: it waits for the operator to pin one
    next_look: float = 0.0  # a pod that serves nothing yet: when it reads the alias again
    codes: dict[int, int] = dataclasses.field(default_factory=lambda: {200: 0, 500: 0})
    latency: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    predicted: list[int] = dataclasses.field(default_factory=lambda: [0] * len(CLASSES))
    graded: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (issued, right) per labelled row
    shadow: int = 0  # a shadow pod: the percent it asks for
    mirrored: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # by candidate: answered, failed, agreed
    timed: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # by candidate: its latency, as timed here

    def metrics(self) -> bytes:
        ids = f'model="iris",version="{self.version}"'
        lines = [
            f'regrow_inference_requests_total{{{ids},protocol="v2",code="{c}"}} {n}' for c, n in self.codes.items()
        ]
        bounds = ["+Inf" if math.isinf(b) else str(b) for b in (*LATENCY_BUCKETS, math.inf)]
        lines += [f'regrow_inference_request_duration_seconds_bucket{{{ids},le="{le}"}} {n}'
                  for le, n in zip(bounds, itertools.accumulate(self.latency), strict=True)]  # fmt: skip
        lines += [f'regrow_shadow_request_duration_seconds_bucket{{{ids},candidate="{candidate}",le="{le}"}} {n}'
                  for candidate, timed in self.timed.items()
                  for le, n in zip(bounds, itertools.accumulate(timed), strict=True)]  # fmt: skip
        lines += [f'regrow_feature_bin_total{{{ids},feature="{PREDICTION}",bin="{c}"}} {n}'
                  for c, n in zip(CLASSES, self.predicted, strict=True)]  # fmt: skip
        for candidate, (answered, failed, agreed) in self.mirrored.items():
            shadow = f'{ids},candidate="{candidate}"'
            lines += [f'regrow_shadow_requests_total{{{shadow},outcome="answered"}} {answered}',
                      f'regrow_shadow_requests_total{{{shadow},outcome="failed"}} {failed}',
                      f'regrow_shadow_compared_rows_total{{{shadow},output="label"}} {answered}',
                      f'regrow_shadow_agreed_rows_total{{{shadow},output="label"}} {agreed}']  # fmt: skip
        return ("\n".join(lines) + "\n").encode()

    def quality(self, since: int) -> bytes:
        """Its answer to the quality query: the labelled rows of the predictions it issued since then."""
        graded = [right for issued, right in self.graded if issued >= since]
        versions = {self.version: Graded(ids=len(graded), rows=len(graded), graded=sum(graded))} if graded else {}
        return Quality(since=since, complete=True, versions=versions).model_dump_json().encode()


def _bucket(seconds: float) -> int:
    """The latency histogram's bucket that counts an answer of ``seconds``."""
    return next(j for j, b in enumerate((*LATENCY_BUCKETS, math.inf)) if seconds <= b)


class Kubelet:
    def __init__(self, api: client.ApiClient, namespace: str, behaviours: dict[str, Behaviour],
                 refresh: float = 0.0, aliased: str | None = "v1", retry: float = 5.0,
                 start: float = 0.0) -> None:  # fmt: skip
        self.api, self.namespace, self.behaviours = api, namespace, behaviours
        self.history: list[str] = [aliased] if aliased else []  # the alias's versions by generation (1-based)
        self.refresh = refresh  # seconds between a pod's readings of the alias (0: at every answer)
        self.retry = retry  # seconds between a waiting pod's looks for the alias (the server's: 5)
        self.start = start  # seconds from a pod's creation to its running (and ready, if it serves a model)
        self.seen: dict[str, float] = {}  # when each pod was first seen
        self.pods: dict[str, Pod] = {}  # by IP
        self.created: set[str] = set()  # the names of every serving pod it ever ran
        self.loaded: set[str] = set()  # of those that loaded a model
        self.served: dict[str, int] = {}  # requests answered, by version
        self.since: set[int] = set()  # the times the operator asked the pods' quality since
        self.lock = threading.Lock()
        self.rng = np.random.default_rng(1)
        self.ips = (f"10.9.{i // 250}.{i % 250 + 1}" for i in itertools.count())

    @property
    def alias(self) -> str | None:
        return self.history[-1] if self.history else None

    @alias.setter
    def alias(self, version: str) -> None:
        """Move the alias, as a promotion or the alias Job does: its generation rises by one."""
        if version != self.alias:
            self.history.append(version)

    def reading(self) -> AliasReading | None:
        return AliasReading(version=self.history[-1], generation=len(self.history)) if self.history else None

    def tick(self) -> None:
        """Run every pod of the ModelDeployment; remove the deleted ones (no kubelet confirms a deletion), and
        forget those gone (they serve no more requests)."""
        pods = [p for track in ("regrow.dev/modeldeployment=iris", "regrow.dev/shadow-of=iris")
                for p in Kube(self.api).list(path("v1", "pods", self.namespace), track)]  # fmt: skip
        started = []
        for pod in pods:
            try:
                started.append(self._run(pod))
            except ApiException as error:  # gone since the list (the garbage collector deletes pods too)
                if error.status != 404:
                    raise
        listed = {(p.get("status") or {}).get("podIP") for p in pods} | set(started)
        with self.lock:
            for ip in set(self.pods) - listed:
                del self.pods[ip]

    def _run(self, pod: Obj) -> str | None:
        """Run ``pod`` (the IP it got, if it starts now), or remove it once it is being deleted; a pod that waits
        for the alias loads its version once it exists (every retry, as the server does)."""
        core = client.CoreV1Api(self.api)
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            with self.lock:
                self.pods.pop(status.get("podIP", ""), None)
            core.delete_namespaced_pod(meta["name"], self.namespace, grace_period_seconds=0)
            return None
        ip, now = status.get("podIP"), time.monotonic()
        with self.lock:
            waiting = self.pods.get(ip or "")
            looks = ip is not None and waiting is not None and not waiting.version and now >= waiting.next_look
            if waiting is not None and looks:
                waiting.reading, waiting.read_at, waiting.next_look = self.reading(), now, now + self.retry
                waiting.version = "" if waiting.awaits else self.alias or ""
        if ip is not None and waiting is not None and looks and waiting.version:
            with self.lock:
                self.loaded.add(meta["name"])
            core.patch_namespaced_pod_status(meta["name"], self.namespace, {"status": _running(ip, ready=True)})
        if status.get("phase") == "Running":
            return None
        with self.lock:
            self.created.add(meta["name"])
        if now - self.seen.setdefault(meta["name"], now) < self.start:
            return None  # still starting: its image, its process, its model
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        ip = next(self.ips)
        awaits = env.get("REGROW_AWAIT_VERSION") == "True"
        version = env.get("REGROW_MODEL_VERSION") or ("" if awaits else self.alias or "")
        with self.lock:
            if version:
                self.loaded.add(meta["name"])
            # One that loads a pinned version reads the alias as it starts; one that waits, a moment after it runs.
            self.pods[ip] = Pod(version, meta["name"], self.reading() if version else None, now, awaits,
                                next_look=now + 1.0, shadow=int(env.get("REGROW_SHADOW_PERCENT") or 0))  # fmt: skip
        core.patch_namespaced_pod_status(meta["name"], self.namespace, {"status": _running(ip, bool(version))})
        return ip

    def send(self, requests: int) -> None:
        """``requests`` spread evenly over the ready pods behind the Service, each answered as its version
        behaves, and the share a shadow asks for mirrored to it by the pod that answered."""
        with self.lock:
            pods = [p for p in self.pods.values() if not p.shadow and p.version]
            shadows = [p for p in self.pods.values() if p.shadow]
            for i in range(requests):
                pod = pods[i % len(pods)] if pods else None
                if pod is None:
                    return
                code = self._answer(pod)
                self.served[pod.version] = self.served.get(pod.version, 0) + 1
                pod.predicted[int(self.rng.choice(len(CLASSES), p=self.behaviours[pod.version].predictions))] += 1
                pod.graded.append((time.time(), int(self.rng.random() < self.behaviours[pod.version].accuracy)))
                if code == 200 and shadows and self.rng.random() * 100 < shadows[i % len(shadows)].shadow:
                    shadow = shadows[i % len(shadows)]
                    counts = pod.mirrored.setdefault(shadow.version, [0, 0, 0])
                    timed = pod.timed.setdefault(shadow.version, [0] * (len(LATENCY_BUCKETS) + 1))
                    timed[_bucket(self.behaviours[shadow.version].seconds)] += 1
                    if self._answer(shadow) == 200:
                        counts[0] += 1
                        counts[2] += int(self.rng.random() < self.behaviours[shadow.version].agreement)
                    else:
                        counts[1] += 1

    def _answer(self, pod: Pod) -> int:
        how = self.behaviours[pod.version]
        code = 500 if self.rng.random() < how.errors else 200
        pod.codes[code] += 1
        pod.latency[_bucket(how.seconds)] += 1
        return code

    def prober(self, ip: str, model: str) -> ModelMetadata | None:
        with self.lock:
            pod = self.pods.get(ip)
            if pod is None:
                return None
            if pod.version and time.monotonic() - pod.read_at >= self.refresh:
                pod.reading, pod.read_at = self.reading(), time.monotonic()
            reading = pod.reading
            age = round(time.monotonic() - pod.read_at, 3)
        params = ModelParameters(alias="champion", alias_version=reading.version if reading else None,
                                 alias_generation=reading.generation if reading else None,
                                 alias_age_seconds=age if reading else None)  # fmt: skip
        if not pod.version:
            waiting = {"error": "alias champion of model iris does not exist", "reason": "ModelNotPublished"}
            if pod.awaits and reading is not None:
                waiting = {"error": "waiting for the operator to pin a version", "reason": "AwaitingVersion"}
            return ModelMetadata(name=model, versions=[], parameters=params.model_copy(update=waiting))
        uri = f"file:///var/lib/regrow/registry/iris/versions/{pod.version}"
        return ModelMetadata(name=model, versions=[pod.version], parameters=params.model_copy(update={"uri": uri}))

    def fetch(self, address: str, url_path: str) -> bytes | None:
        with self.lock:
            pod = self.pods.get(address.split(":", 1)[0])
        if pod is None:
            return None
        if url_path.startswith("/v2/models/iris/quality?since="):
            self.since.add(int(url_path.rpartition("=")[2]))
            return pod.quality(int(url_path.rpartition("=")[2]))
        return PROFILE.to_json() if url_path == "/v2/models/iris/profile" else pod.metrics()

    @contextmanager
    def running(self) -> Iterator[None]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.25):
                self.tick()
                self.send(40)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)


def _running(ip: str, ready: bool) -> Obj:
    condition = {"type": "Ready", "status": str(ready), "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {"phase": "Running", "podIP": ip, "conditions": [condition]}


def _promote(api: client.ApiClient, namespace: str, kubelet: Kubelet, name: str, version: str) -> Obj:
    """What a TrainingJob does that trains ``version`` and wins its gate: the alias moves in the registry (the pods
    read it at their next refresh), and its status records the move's generation. Returns it once Succeeded."""
    tj = _with(_with(_example("TrainingJob"), "metadata.name", name), "spec.promote.minImprovement", "0.0")
    _create_tj(api, namespace, tj)
    kubelet.alias = version
    promotion = {"alias": "champion", "outcome": "Promoted", "metric": "accuracy", "candidateScore": "0.97",
                 "generation": len(kubelet.history), "message": "beat the champion"}  # fmt: skip
    report = {"succeeded": True, "model": "iris", "version": version, "metric": "accuracy", "promotion": promotion,
              "uri": f"file:///var/lib/regrow/registry/iris/versions/{version}"}  # fmt: skip
    _finish_pod(api, namespace, _pod_of(api, namespace, f"{name}-train"), 0, json.dumps(report))
    return _succeeded(api, namespace, name, "True")


def _canary(**rollout: Any) -> dict[str, Any]:
    md = _with(_example("ModelDeployment"), "spec.replicas", {"min": 3, "max": 6})
    steps = rollout.pop("steps", [{"weight": 25, "minRequests": 60}, {"weight": 50, "minRequests": 60}])
    analysis = rollout.pop("analysis", {"maxP99Seconds": "0.05"})
    return _with(md, "spec.rollout", {"strategy": "Canary", "steps": steps, "analysis": analysis, **rollout})


def _md(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return get_custom(api, namespace, MODEL_DEPLOYMENT.plural, "iris")


def _deployment(api: client.ApiClient, namespace: str, name: str) -> Obj:
    found = Kube(api).get(path("apps/v1", "deployments", namespace, name))
    assert found is not None
    return found


def _pinned(deployment: Obj) -> str | None:
    return (deployment["spec"]["template"]["metadata"].get("annotations") or {}).get("regrow.dev/model-version")


def _pinned_to(api: client.ApiClient, namespace: str, version: str) -> Obj:
    def probe() -> Obj | None:
        stable = _deployment(api, namespace, "iris-predictor")
        return stable if _pinned(stable) == version else None

    return wait_for(probe, 60, f"the stable Deployment pinned to {version}")


def _serving_v1(api: client.ApiClient, namespace: str) -> Obj:
    """Wait until the stable pods serve v1, pinned (a Canary pins the stable version)."""
    wait_for(lambda: (_md(api, namespace).get("status") or {}).get("model", {}).get("version") == "v1", 60, "v1")
    return _pinned_to(api, namespace, "v1")


def _progressing(api: client.ApiClient, namespace: str, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        md = _md(api, namespace)
        found = condition(md, "Progressing")
        return md if found and found["reason"] == reason else None

    return wait_for(probe, 120, f"Progressing {reason}")


def _outcome(api: client.ApiClient, namespace: str, outcome: str, weights: set[int], since: str = "") -> dict[str, Any]:
    """The ModelDeployment once a canary started after ``since`` ends with ``outcome``."""

    def probe() -> dict[str, Any] | None:
        md = _md(api, namespace)
        rollout = (md.get("status") or {}).get("rollout") or {}
        if rollout and not rollout.get("outcome"):
            weights.add(rollout["weight"])
        return md if rollout.get("outcome") == outcome and rollout.get("started", "") > since else None

    return wait_for(probe, 120, f"the rollout's outcome {outcome}")


def test_a_better_candidate_goes_through_every_step_to_every_pod(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour(predictions=(0.25, 0.35, 0.4))})
    weights: set[int] = set()
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _canary())
        _serving_v1(api, namespace)
        kubelet.alias = "v2"  # a promotion moved the alias
        md = _outcome(api, namespace, "Promoted", weights)
        stable = _pinned_to(api, namespace, "v2")
        canary_pods = _deployment(api, namespace, "iris-canary")["spec"]["replicas"]
    rollout = md["status"]["rollout"]
    assert (rollout["candidate"], rollout["stable"], rollout["step"]) == ("v2", "v1", 3)
    assert weights <= {25, 50} and 50 in weights
    assert _pinned(stable) == "v2" and canary_pods == 0
    reasons = [e[1] for e in events_for(api, namespace, "iris")]
    assert reasons.count("StepPassed") == 2 and {"CanaryStarted", "Promoted"} <= set(reasons)
    assert condition(md, "Progressing")["reason"] != "RolledBack"  # type: ignore[index]


def test_a_candidate_that_fails_a_gate_is_rolled_back_and_the_stable_pods_are_untouched(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour(errors=0.2)})
    port = free_port()
    with operator(prober=kubelet.prober, fetch=kubelet.fetch, metrics_port=port, metrics_address="127.0.0.1"), \
            kubelet.running():  # fmt: skip
        _create(api, namespace, _canary())
        before = _serving_v1(api, namespace)
        kubelet.alias = "v2"
        md = _outcome(api, namespace, "RolledBack", set())
        wait_for(lambda: _deployment(api, namespace, "iris-canary")["spec"]["replicas"] == 0, 30, "no canary pods")
        served_then = dict(kubelet.served)
        jobs = _alias_jobs(api, namespace)
        failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                  "lastProbeTime": "2026-12-01T12:00:00Z", "lastTransitionTime": "2026-12-01T12:00:00Z"}  # fmt: skip
        client.BatchV1Api(api).patch_namespaced_job_status(
            jobs[0]["metadata"]["name"], namespace, {"status": {"failed": 4, "conditions": [failed]}}
        )  # as if the store refused every attempt
        stuck = wait_for(lambda: "still points at v2" in _rollout_of(_md(api, namespace))["message"], 30, "told")
        kubelet.alias = "v1"  # what the Job does, had a kubelet run it
        time.sleep(6)  # another reconcile or two: nothing starts again
        after = _md(api, namespace)
        stable = _deployment(api, namespace, "iris-predictor")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()

        retry = ["promote", "iris", "--namespace", namespace, "--as", "ana", "--reason", "fixed the features"]
        assert main([*retry, "--version", "v9"]) == 1  # never rolled back
        refused = _forge_retry(api, namespace, "v9")  # past the CLI's check
        assert main([*retry, "--version", "v2"]) == 0
        forward = wait_for(lambda: [j for j in _alias_jobs(api, namespace) if "--to=v2" in _args(j)], 30, "a Job")
        retried = wait_for(lambda: _last_retry(api, namespace, "v2"), 30, "the retry taken")
        kubelet.alias = "v2"  # the Job moved it
        again = _outcome(api, namespace, "RolledBack", set(), since=_rollout_of(md)["started"])
    rollout = md["status"]["rollout"]
    assert rollout["step"] == 1 and rollout["candidate"] == "v2"
    gates = {g["name"]: g for g in rollout["gates"]}
    assert gates["errorShare"]["passed"] is False and float(gates["errorShare"]["value"]) > 0.1
    assert "errorShare" in rollout["message"] and md["status"]["rejectedVersions"] == ["v2"]
    assert stable["metadata"]["generation"] == before["metadata"]["generation"] and _pinned(stable) == "v1"
    share = served_then["v2"] / sum(served_then.values())
    assert share < 0.25 + 0.10  # it answered no more than its step's weight and 10 points
    (job,) = jobs
    args = _args(job)
    assert args[0] == "move-alias" and "--from=v2" in args and "--to=v1" in args and "--alias=champion" in args
    assert "regrow.dev/modeldeployment" not in job["spec"]["template"]["metadata"]["labels"]  # never behind the Service
    assert after["status"]["rollout"] == {**rollout, "message": after["status"]["rollout"]["message"]}
    assert condition(after, "Progressing")["reason"] == "RolledBack"  # type: ignore[index]
    ended = f'regrow_rollouts_total{{deployment="iris",namespace="{namespace}",outcome="RolledBack"}} 1.0'
    assert ended in metrics and "regrow_rollout_step{" not in metrics  # counted; none running
    warnings = [e for e in events_for(api, namespace, "iris") if e[:2] == ("Warning", "RolledBack")]
    assert len(warnings) >= 1 and "errorShare" in warnings[0][2]
    assert stuck and any(e[:2] == ("Warning", "AliasNotRestored") for e in events_for(api, namespace, "iris"))
    # tried again when a person asked: the alias moved on by a Job, a canary, and a second rollback of its own
    assert "--from=v1" in _args(forward[0]) and (retried["version"], retried["actor"]) == ("v2", "ana")
    assert "v9" in refused[0][2] and not [j for j in _alias_jobs(api, namespace) if "--to=v9" in _args(j)]
    assert again["status"]["rejectedVersions"] == ["v2"] and again["status"]["rollbacks"] == 2
    assert len([j for j in _alias_jobs(api, namespace) if "--to=v1" in _args(j)]) == 2  # one per rollback


def _forge_retry(api: client.ApiClient, namespace: str, version: str) -> list[tuple[str, str, str]]:
    """Write the retry annotation as anyone who may patch the ModelDeployment could; the Events refusing it."""
    request = RetryRequest(version=version, actor="mallory", time=now())
    annotation = {canary.RETRY_ANNOTATION: request.model_dump_json(by_alias=True)}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, "v1alpha1", namespace, "modeldeployments", "iris", {"metadata": {"annotations": annotation}}
    )
    refused = lambda: [e for e in events_for(api, namespace, "iris") if e[1] == "RetryRefused"]  # noqa: E731
    return wait_for(refused, 30, "the forged retry refused")


def _last_retry(api: client.ApiClient, namespace: str, version: str) -> dict[str, Any] | None:
    last = (_md(api, namespace).get("status") or {}).get("lastRetry") or {}
    return last if last.get("version") == version else None


def _alias_jobs(api: client.ApiClient, namespace: str) -> list[Obj]:
    return Kube(api).list(path("batch/v1", "jobs", namespace), "app.kubernetes.io/component=alias")


def _args(job: Obj) -> list[str]:
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def _rollout_of(md: dict[str, Any]) -> dict[str, Any]:
    return dict(md["status"]["rollout"])


def test_a_candidate_that_its_labels_grade_worse_is_rolled_back(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour(accuracy=0.6)})
    analysis = {"maxQualityDrop": "0.1", "minLabels": 40}
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _canary(analysis=analysis))
        _serving_v1(api, namespace)
        kubelet.alias = "v2"
        md = _outcome(api, namespace, "RolledBack", set())
    gates = {g["name"]: g for g in md["status"]["rollout"]["gates"]}
    assert gates["qualityDrop"]["passed"] is False and float(gates["qualityDrop"]["value"]) > 0.2
    began = datetime.fromisoformat(md["status"]["rollout"]["stepStarted"]).timestamp()
    assert kubelet.since == {int(began)}  # the labels of ids issued inside the step alone
    assert gates["errorShare"]["passed"] is True and "qualityDrop" in md["status"]["rollout"]["message"]


def test_a_manual_canary_waits_after_its_last_step_for_regrow_promote(
    api: client.ApiClient, namespace: str, operator: Operator, capsys: pytest.CaptureFixture[str]
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour()})
    promote = ["promote", "iris", "--namespace", namespace, "--as", "ana", "--reason", "the dashboards look right"]
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _canary(approval="Manual", steps=[{"weight": 25, "minRequests": 60}]))
        _serving_v1(api, namespace)
        assert main(promote) == 1  # no canary runs yet
        kubelet.alias = "v2"
        waiting = _progressing(api, namespace, "WaitingForApproval")
        time.sleep(6)
        assert _pinned(_deployment(api, namespace, "iris-predictor")) == "v1"  # it waits
        assert main(promote) == 0
        md = _outcome(api, namespace, "Promoted", set())
        capsys.readouterr()
        assert main(["status", "iris", "--namespace", namespace]) == 0
        printed = capsys.readouterr().out.splitlines()
    assert waiting["status"]["rollout"]["step"] == 2
    assert printed[0].startswith(f"ModelDeployment {namespace}/iris: Ready=")
    assert any(line.startswith("last canary: v2 beside v1") and "Promoted" in line for line in printed)
    assert any(line.startswith("  step 1 at 25%, passed") for line in printed)
    assert any(line.startswith("  Promote by ana at") and "the dashboards look right" in line for line in printed)
    decision = md["status"]["rollout"]["decision"]
    assert (decision["action"], decision["actor"], decision["reason"]) == (
        "Promote",
        "ana",
        "the dashboards look right",
    )


def test_a_promotion_by_a_trainingjob_starts_the_canary_before_the_pods_look_at_the_alias(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    """The pods would read the moved alias only at their next refresh (10 minutes here): the TrainingJob's
    status, which names the version and the alias's generation, starts the canary within 10 seconds."""
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour()}, refresh=600)
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _with(_canary(), "spec.model.refreshInterval", "10m"))
        _serving_v1(api, namespace)
        tj = _promote(api, namespace, kubelet, "iris-v2", "v2")
        started = wait_for(lambda: ((_md(api, namespace).get("status") or {}).get("rollout") or {}).get("started"),
                           30, "the canary of v2")  # fmt: skip
        rollout = _md(api, namespace)["status"]["rollout"]
    done = datetime.fromisoformat(tj["status"]["completionTime"])
    lag = (datetime.fromisoformat(started) - done).total_seconds()
    print(f"\nthe canary started {lag:.0f}s after the TrainingJob's promotion")
    assert (rollout["candidate"], rollout["stable"]) == ("v2", "v1") and lag <= 10


def test_a_shadow_sees_live_requests_first_and_answers_none_of_them(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour(agreement=0.9)})
    steps = [{"mirror": 100, "minRequests": 60}, {"weight": 50, "minRequests": 60}]
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _canary(steps=steps, analysis={"maxDisagreement": "0.2"}))
        _serving_v1(api, namespace)
        assert Kube(api).get(path("v1", "services", namespace, "iris-shadow")) is not None
        kubelet.alias = "v2"
        shadowing = _progressing(api, namespace, "ShadowStep")
        served_in_shadow: list[int] = []

        def shadow_step_passed() -> bool:
            served = kubelet.served.get("v2", 0)  # read before the step: the canary's pods start after it passed
            if _md(api, namespace)["status"]["rollout"]["step"] == 1:
                served_in_shadow.append(served)
                return False
            return True

        wait_for(shadow_step_passed, 120, "the shadow step passed")
        md = _outcome(api, namespace, "Promoted", set())
        shadow_pods = _deployment(api, namespace, "iris-shadow")["spec"]["replicas"]
    assert shadowing["status"]["rollout"]["weight"] == 0 and shadowing["status"]["rollout"]["mirror"] == 100
    first, second = md["status"]["rollout"]["passed"]
    assert (first["mirror"], first["weight"], second["weight"]) == (100, 0, 50)
    assert first["requests"] >= 60 and first["mirrored"] >= first["requests"]
    gates = {g["name"]: g for g in first["gates"]}
    assert gates["disagreement"]["passed"] is True and float(gates["disagreement"]["value"]) < 0.2
    assert "predictionDivergence" not in gates  # a shadow serves no client: its live predictions are not compared
    assert served_in_shadow and max(served_in_shadow) == 0  # the shadow served no client
    assert kubelet.served["v2"] > 0  # the canary step did
    assert shadow_pods == 0 and _pinned(_deployment(api, namespace, "iris-predictor")) == "v2"


def test_a_shadow_that_disagrees_is_rolled_back_without_answering_a_client(
    api: client.ApiClient, namespace: str, operator: Operator
) -> None:
    kubelet = Kubelet(api, namespace, {"v1": Behaviour(), "v2": Behaviour(agreement=0.5)})
    steps = [{"mirror": 50, "minRequests": 60}, {"weight": 50, "minRequests": 60}]
    with operator(prober=kubelet.prober, fetch=kubelet.fetch), kubelet.running():
        _create(api, namespace, _canary(steps=steps, analysis={"maxDisagreement": "0.2"}))
        before = _serving_v1(api, namespace)
        kubelet.alias = "v2"
        md = _outcome(api, namespace, "RolledBack", set())
        wait_for(lambda: _deployment(api, namespace, "iris-shadow")["spec"]["replicas"] == 0, 30, "no shadow pods")
        canary = Kube(api).get(path("apps/v1", "deployments", namespace, "iris-canary"))
    rollout = md["status"]["rollout"]
    gates = {g["name"]: g for g in rollout["gates"]}
    assert rollout["step"] == 1 and gates["disagreement"]["passed"] is False
    assert 0.35 < float(gates["disagreement"]["value"]) < 0.65 and "disagreement" in rollout["message"]
    assert kubelet.served.get("v2", 0) == 0 and (canary is None or not canary["spec"]["replicas"])
    assert md["status"]["rejectedVersions"] == ["v2"]
    assert [j for j in _alias_jobs(api, namespace) if "--to=v1" in _args(j)]  # the alias moves back
    stable = _deployment(api, namespace, "iris-predictor")
    assert stable["metadata"]["generation"] == before["metadata"]["generation"] and _pinned(stable) == "v1"
