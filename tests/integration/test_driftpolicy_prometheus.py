"""The DriftPolicy's Prometheus source, for real: a real `regrow serve` process takes the traffic, a real
Prometheus (Debian's package) scrapes it, and the operator reads `increase(regrow_feature_bin_total[window])`
from Prometheus's HTTP API. The API server is envtest, so the test plays the kubelet's part for the one
serving pod (whose profile the operator still reads from the pod)."""

from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import DRIFT_POLICY, TRAINING_JOB
from regrow.controller.driftpolicy import allowing, http_query
from regrow.controller.kube import Kube, path
from regrow.training.sample_data import sample_csv
from tests.cluster import free_port
from tests.conftest import Operator
from tests.helpers import condition, get_custom, wait_for
from tests.integration.test_driftpolicy_controller import POD_METRICS, _custom, _policy, _serve_v1
from tests.unit.test_server import Server, local, publish_iris, running, v2

pytestmark = pytest.mark.usefixtures("no_kubelet")


def _series(url: str, promql: str) -> list[Any]:
    return list(json.loads(http_query(url, promql))["data"]["result"])


def _iris() -> np.ndarray:
    return np.loadtxt(io.BytesIO(sample_csv("iris")), delimiter=",", skiprows=1, usecols=range(4))


def _send(server: Server, rows: np.ndarray) -> None:
    for batch in np.array_split(rows, max(1, len(rows) // 50)):
        status, body = server.call("POST", "/v2/models/iris/infer", v2(batch.tolist()))
        assert status == 200, body


def test_drift_from_prometheus_retrains(
    api: client.ApiClient, namespace: str, operator: Operator, prometheus: Any, tmp_path: Path
) -> None:
    def policy() -> dict[str, Any]:
        return get_custom(api, namespace, DRIFT_POLICY.plural, "iris")

    version = publish_iris(tmp_path)
    with running(local(tmp_path, alias="champion")) as server:
        url = prometheus([f"127.0.0.1:{server.port}"], {"namespace": namespace})
        # Counters are zero before the first request; a scrape must see that zero for increase() to count
        # the first requests (as with any counter Prometheus meets after it started counting).
        wait_for(lambda: _series(url, "regrow_feature_bin_total"), 30, "a first scrape of the zero counters")

        def fetch(address: str, url_path: str) -> bytes | None:
            assert (address, url_path) == (POD_METRICS, "/v2/models/iris/profile")  # only the profile: no scraping
            status, body = server.call("GET", url_path)
            return json.dumps(body).encode() if status == 200 else None

        iris = _iris()
        rng = np.random.default_rng(3)
        source = {"type": "Prometheus", "prometheus": {"url": url}}
        spec = {"interval": "1s", "window": "5m", "minSamples": 250, "consecutiveBreaches": 1,
                "tests": [{"type": "psi", "threshold": "0.2"}], "source": source}  # fmt: skip
        with operator(fetch=fetch, query=allowing([url])):
            _serve_v1(api, namespace, version)
            _custom(api, namespace, DRIFT_POLICY.plural, _policy(**spec))
            _send(server, iris[rng.permutation(len(iris))])
            _send(server, iris[rng.permutation(len(iris))])

            def settled(reason: str, samples: int) -> dict[str, Any] | None:
                obj = policy()
                cond = condition(obj, "DriftDetected")
                check = (obj.get("status") or {}).get("lastCheck") or {}
                return obj if cond and cond["reason"] == reason and check.get("samples", 0) >= samples else None

            obj = wait_for(lambda: settled("NoDrift", 290), 60, "no drift over the in-distribution traffic")
            assert f"from Prometheus at {url}" in (condition(obj, "Ready") or {})["message"]

            shifted = iris[rng.integers(0, len(iris), 1500)].copy()
            shifted[:, :2] += 2 * iris[:, :2].std(axis=0)  # two of four features move by 2 sigma
            _send(server, shifted)
            obj = wait_for(lambda: settled("DriftDetected", 1700), 60, "drift from Prometheus")
            tjs = path(f"{GROUP}/{VERSION}", TRAINING_JOB.plural, namespace)
            wait_for(lambda: Kube(api).list(tjs, "regrow.dev/driftpolicy=iris"), 30, "a retrain")
            # increase() extrapolates to the window's edges by up to a scrape interval, which is a large share
            # of a series seconds old: the estimate converges on the 1,800 rows sent as the series ages.
            wait_for(lambda: 1800 <= policy()["status"]["lastCheck"]["samples"] <= 1900, 60, "the count converging")

    features = {f["name"]: f for f in obj["status"]["lastCheck"]["features"]}
    assert features["sepal_length_cm"]["drifted"] and features["sepal_width_cm"]["drifted"]
    assert not features["petal_length_cm"]["drifted"]


def test_an_unreachable_prometheus_is_reported(api: client.ApiClient, namespace: str, operator: Operator,
                                               tmp_path: Path) -> None:  # fmt: skip
    version = publish_iris(tmp_path)
    with running(local(tmp_path, alias="champion")) as server:

        def fetch(address: str, url_path: str) -> bytes | None:
            return json.dumps(server.call("GET", url_path)[1]).encode()

        url = f"http://127.0.0.1:{free_port()}"
        source = {"type": "Prometheus", "prometheus": {"url": url}}
        with operator(fetch=fetch, query=allowing([url])):
            _serve_v1(api, namespace, version)
            _custom(api, namespace, DRIFT_POLICY.plural, _policy(interval="1s", source=source))
            ready = wait_for(lambda: _ready_for(api, namespace, "SourceUnavailable"), 30, "SourceUnavailable")
    assert ready["status"] == "Unknown" and "could not read the bin counts" in ready["message"]


def _ready_for(api: client.ApiClient, namespace: str, reason: str) -> dict[str, Any] | None:
    ready = condition(get_custom(api, namespace, DRIFT_POLICY.plural, "iris"), "Ready")
    return ready if ready and ready["reason"] == reason else None


def test_a_prometheus_the_operator_does_not_allow_is_never_called(
    api: client.ApiClient, namespace: str, operator: Operator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can create a DriftPolicy may name any URL: the operator calls only those its settings (the
    chart's drift.prometheusUrls) allow, and says so on the policy."""
    version = publish_iris(tmp_path)
    calls: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(self.path)
            self.send_error(500)

    internal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    monkeypatch.setenv("REGROW_PROMETHEUS_URLS", "http://prometheus.monitoring:9090\nhttp://127.0.0.1:1/prom")
    with running(local(tmp_path, alias="champion")) as server:

        def fetch(address: str, url_path: str) -> bytes | None:
            return json.dumps(server.call("GET", url_path)[1]).encode()

        url = f"http://127.0.0.1:{internal.server_address[1]}"
        source = {"type": "Prometheus", "prometheus": {"url": url}}
        with operator(fetch=fetch):  # the allowed URLs come from the environment, as in the chart's pod
            _serve_v1(api, namespace, version)
            _custom(api, namespace, DRIFT_POLICY.plural, _policy(interval="1s", source=source))
            ready = wait_for(lambda: _ready_for(api, namespace, "SourceNotAllowed"), 30, "SourceNotAllowed")
    internal.shutdown()
    assert url in ready["message"] and "drift.prometheusUrls" in ready["message"]
    assert calls == []
