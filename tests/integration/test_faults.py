"""The operator through faults of the real control plane. It runs as it does in its pod: ``regrow operator``,
a process of its own with its liveness endpoint, so that it can be killed outright. The control plane is
this module's own (envtest), so that stopping its API server disturbs no other test; no kubelet runs there,
so the tests play its part (a pod's status, its HTTP answers)."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from regrow.api import DRIFT_POLICY, TRAINING_JOB
from regrow.controller.kube import Kube, path
from regrow.drift.profile import fit_profile
from tests.cluster import Cluster, Process, free_port, start_control_plane
from tests.conftest import REQUIRE_CLUSTER, _install_crds
from tests.helpers import condition, get_custom, wait_for
from tests.integration.test_driftpolicy_controller import FEATURES, FakePod, _custom, _policy, _serve_v1
from tests.integration.test_trainingjob_controller import _create, _finish_pod, _jobs, _pod_of, _succeeded
from tests.unit.test_api import _example, _with


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        if REQUIRE_CLUSTER:
            pytest.fail("KUBEBUILDER_ASSETS is needed: the fault tests restart an envtest API server")
        pytest.skip("no KUBEBUILDER_ASSETS: the fault tests restart an envtest API server of their own")
    cluster = start_control_plane(Path(assets))
    try:
        _install_crds(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def namespace(own_cluster: Cluster) -> str:
    name = "faults"
    client.CoreV1Api(own_cluster.api_client()).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    return name


@dataclass
class Liveness:
    """Polls the operator's liveness endpoint twice a second, as a kubelet would (more often), and keeps
    every answer: (monotonic time, HTTP status, or 0 for no answer)."""

    url: str
    answers: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    code = response.status
            except urllib.error.HTTPError as error:
                code = error.code
            except OSError:
                code = 0
            self.answers.append((time.monotonic(), code))
            self._stop.wait(0.5)

    def codes(self, start: float, end: float = float("inf")) -> list[int]:
        return [code for at, code in self.answers if start <= at < end]

    def stop(self) -> None:
        self._stop.set()


def _operator(cluster: Cluster, namespace: str, logs: Path, name: str, serving_port: int = 0) -> tuple[Process, str]:
    """``regrow operator`` for ``namespace`` (not started), and the URL of its liveness endpoint."""
    health = free_port()
    argv = [
        sys.executable, "-c", "import sys; from regrow.cli import main; sys.exit(main())", "operator",
        f"--namespace={namespace}", f"--liveness=http://127.0.0.1:{health}/healthz", "--metrics-port=0",
    ]  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "REGROW_MIN_CHECK_SECONDS": "1"}
    if serving_port:  # where the operator finds serving pods' /metrics and profile: the test's FakePod
        env["REGROW_SERVING_METRICS_PORT"] = str(serving_port)
    return Process(argv, logs / f"{name}.log", env), f"http://127.0.0.1:{health}/healthz"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_the_operator_recovers_from_an_api_server_restart_without_duplicates(
    own_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The API server stops for 25 s while the operator watches a running TrainingJob (polled every few
    seconds) and starts again on its port: the operator carries on by itself (its watches reconnect, its
    calls back off and retry), the Job it made is not made twice, an object created afterwards is
    reconciled, and its liveness endpoint fails while the API server is away and only then."""
    api = own_cluster.api_client()
    operator, health = _operator(own_cluster, namespace, tmp_path, "operator")
    first = _example(TRAINING_JOB.kind)
    second = _with(first, "metadata.name", "iris-v2")
    operator.start()
    try:
        wait_for(lambda: _healthy(health), 30, "the operator's liveness endpoint")
        liveness = Liveness(health)
        _create(api, namespace, first)
        wait_for(lambda: _jobs(api, namespace, "iris-v1"), 60, "the first TrainingJob's Job")
        stopped = time.monotonic()
        own_cluster.restart_apiserver(down_seconds=25)
        back = time.monotonic()
        _create(api, namespace, second)
        wait_for(lambda: _jobs(api, namespace, "iris-v2"), 90, "the Job of a TrainingJob created after the restart")
        recovered = time.monotonic()
        time.sleep(15)  # more polls of the first, which must not make its Job again; the probe settles
        jobs = {name: len(_jobs(api, namespace, name)) for name in ("iris-v1", "iris-v2")}
        liveness.stop()
    finally:
        operator.stop()
    assert jobs == {"iris-v1": 1, "iris-v2": 1}
    assert set(liveness.codes(0, stopped)) == {200}, "unhealthy before the API server stopped"
    failing = [at for at, code in liveness.answers if code != 200]
    assert failing, "the liveness endpoint never said the operator cannot work while the API server was away"
    assert stopped < failing[0] and failing[-1] < back + 20, "unhealthy when it could work"
    assert len(liveness.codes(failing[-1] + 0.1)) >= 10, "too few answers after it recovered"  # all 200
    print(
        f"\nAPI server down and back in {back - stopped:.1f}s; the next object reconciled {recovered - stopped:.1f}s "
        f"after the stop; liveness failing from {failing[0] - stopped:.1f}s after the stop "
        f"to {failing[-1] - back:.1f}s after the API server was back"
    )


class PodServer(http.server.ThreadingHTTPServer):
    """A serving pod's HTTP side on loopback: FakePod's answers."""

    def __init__(self, pod: FakePod) -> None:
        self.pod = pod
        super().__init__(("127.0.0.1", 0), _PodHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _PodHandler(http.server.BaseHTTPRequestHandler):
    server: PodServer

    def do_GET(self) -> None:
        body = self.server.pod.answer(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_new_leader_takes_over_a_running_retrain_after_a_sigkill_without_duplicates(
    own_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """Drift starts a retrain and the operator is killed (SIGKILL: no cleanup, its Lease not given up)
    while the retrain's Job runs. A second replica takes the Lease when it expires and carries the retrain
    through to its outcome: one retrain, one Job, however long drift goes on."""
    api = own_cluster.api_client()
    rng = np.random.default_rng(0)
    pod = FakePod(fit_profile(rng.normal(0, 1, (5000, 3)), FEATURES))
    server = PodServer(pod)
    port = server.server_address[1]
    first, _ = _operator(own_cluster, namespace, tmp_path, "first", serving_port=port)
    second, _ = _operator(own_cluster, namespace, tmp_path, "second", serving_port=port)
    lease = path("coordination.k8s.io/v1", "leases", namespace, "regrow-operator")
    retrain = "iris-retrain-1"
    first.start()
    try:
        _serve_v1(api, namespace, pod_ip="127.0.0.1")
        _custom(api, namespace, DRIFT_POLICY.plural, _policy(interval="1s", window="10m", minSamples=200))
        last_check = lambda: (get_custom(api, namespace, DRIFT_POLICY.plural, "iris").get("status") or {}).get(  # noqa: E731
            "lastCheck"
        )
        wait_for(last_check, 60, "a first reading of the pod's counters")  # what is counted from here is live
        shifted = rng.normal(0, 1, (4000, 3))
        shifted[:, :2] += 2.0
        pod.send(shifted)
        wait_for(lambda: _jobs(api, namespace, retrain), 90, "the retrain's Job")
        holder = Kube(api).get(lease)["spec"]["holderIdentity"]  # type: ignore[index]
        first.kill()
        killed = time.monotonic()
        second.start()
        wait_for(lambda: Kube(api).get(lease)["spec"]["holderIdentity"] != holder, 60, "a new leader")  # type: ignore[index]
        took_over = time.monotonic()
        pod.send(shifted)  # drift goes on under the new leader: its cooldown holds a second retrain back
        report = {"succeeded": True, "model": "iris", "version": "feedc0ffee", "uri": "file:///r/iris/feedc0ffee",
                  "metric": "accuracy", "metrics": {"accuracy": "0.97"},
                  "promotion": {"alias": "champion", "outcome": "Promoted", "metric": "accuracy",
                                "candidateScore": "0.97", "message": "it beat the champion"}}  # fmt: skip
        _finish_pod(api, namespace, _pod_of(api, namespace, f"{retrain}-train"), 0, json.dumps(report))
        done = _succeeded(api, namespace, retrain, "True")
        finished = time.monotonic()
        time.sleep(5)  # more checks of the drifting policy and polls of the finished retrain
        retrains = Kube(api).list(path("regrow.dev/v1alpha1", TRAINING_JOB.plural, namespace))
        jobs = _jobs(api, namespace, retrain)
        policy = get_custom(api, namespace, DRIFT_POLICY.plural, "iris")
    finally:
        first.stop()
        second.stop()
        server.shutdown()
    assert [tj["metadata"]["name"] for tj in retrains] == [retrain]
    assert len(jobs) == 1
    assert condition(done, "Succeeded")["reason"] == "Promoted"  # type: ignore[index]
    assert done["status"]["artifact"]["version"] == "feedc0ffee"
    assert [r["name"] for r in policy["status"]["trainingJobs"]] == [retrain]
    print(
        f"\nthe standby led {took_over - killed:.1f}s after the SIGKILL (the Lease's 15 s) and finished the retrain "
        f"{finished - took_over:.1f}s after that"
    )
