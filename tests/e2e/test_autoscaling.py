"""A ModelDeployment scales out for real: load through its Service past its CPU target, the HPA (on the
node cluster's resource metrics API) adds pods, and the status reports them. Shedding and autoscaling work
together: a 429 is counted apart (the client may retry it), and a request fails only when it gets no answer
within 2 s after one retry (a ClusterIP can hang for about a second after a pod turns Ready).

Each client keeps a connection for REQUESTS_PER_CONNECTION requests, then opens another (kube-proxy balances
connections, so the new pods get their share). One connection per request ran the host out of ephemeral
ports: a closed connection holds its port for 60 s in TIME_WAIT, and 28,232 ports (32768-60999) at about 900
connections a second last about 31 s, as long as a slow scale-out takes; every request after that failed."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kubernetes import client

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.controller.kube import Kube, path
from tests.conftest import Operator
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, get_custom, wait_for
from tests.unit.test_api import _example as example
from tests.unit.test_api import _with
from tests.unit.test_server import ROWS, publish_iris, v2

CLIENTS = 8
LOAD_SECONDS_MAX = 300
REQUESTS_PER_CONNECTION = 50


class Client:
    """Requests on a kept-alive connection, opened again after REQUESTS_PER_CONNECTION or an error."""

    def __init__(self, host: str) -> None:
        self.host, self.connection, self.used = host, http.client.HTTPConnection(host, 80, timeout=2), 0

    def _reconnect(self) -> None:
        self.connection.close()
        self.connection, self.used = http.client.HTTPConnection(self.host, 80, timeout=2), 0

    def ask(self, body: str) -> str:
        """One request, retried once on a new connection: its outcome."""
        if self.used >= REQUESTS_PER_CONNECTION:
            self._reconnect()
        for _ in range(2):
            try:
                self.used += 1
                self.connection.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
                response = self.connection.getresponse()
                response.read()
                if response.will_close:
                    self._reconnect()
                return "ok" if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException):
                self._reconnect()
        return "failed"


def test_load_past_the_cpu_target_scales_the_deployment_out(
    node_api: client.ApiClient, node_namespace: str, node_operator: Operator, node_store: Path
) -> None:
    publish_iris(node_store)
    own_like_a_trainer_pod(node_store / "registry")
    body: dict[str, Any] = example("ModelDeployment")
    for key, value in {"replicas": {"min": 1, "max": 3}, "autoscaling.targetCPUUtilizationPercentage": 20,
                       "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                     "limits": {"cpu": "1", "memory": "512Mi"}}}.items():  # fmt: skip
        body = _with(body, f"spec.{key}", value)
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def md() -> dict[str, Any]:
        return get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris")

    def load(host: str) -> None:
        request, asker = json.dumps(v2(ROWS * 10)), Client(host)
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        while not stop.is_set() and time.monotonic() < deadline:
            outcomes[asker.ask(request)] += 1

    with node_operator():
        client.CustomObjectsApi(node_api).create_namespaced_custom_object(
            GROUP, VERSION, node_namespace, MODEL_DEPLOYMENT.plural, body
        )
        wait_for(lambda: (condition(md(), "Ready") or {}).get("status") == "True", 180, "the first pod to serve")
        service = Kube(node_api).get(path("v1", "services", node_namespace, "iris-predictor")) or {}
        host = str(service["spec"]["clusterIP"])
        threads = [threading.Thread(target=load, args=(host,), daemon=True) for _ in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            scaled = wait_for(lambda: md() if (md().get("status") or {}).get("readyReplicas", 0) >= 2 else None,
                              240, "a second ready replica")  # fmt: skip
            scale_out = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    hpa = Kube(node_api).get(path("autoscaling/v2beta2", "horizontalpodautoscalers", node_namespace, "iris-predictor"))
    print(f"\nload -> 2 ready replicas: {scale_out:.0f}s; outcomes: {dict(outcomes)}; "
          f"HPA: {(hpa or {}).get('status', {}).get('currentMetrics')}")  # fmt: skip
    assert scaled["status"]["replicas"] >= 2 and outcomes["ok"] > 0
    assert outcomes["failed"] == 0, outcomes
    assert set(outcomes) <= {"ok", "HTTP 429"}, outcomes
