"""`make demo`'s script on a cluster with a real kubelet: the chart's operator pod, the iris examples at demo
pace, and the whole loop (v1 served, drift, a retrain the gate promotes, a canary, v2 serving), in a
namespace of the test's own. A real Prometheus scrapes the namespace's pods meanwhile, labelled as the
chart's PodMonitor and ServiceMonitor would label them, and every query of the chart's dashboard and alert
rules returns series over the loop."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.controller.kube import Kube, path
from tests.cluster import Cluster, _kubectl
from tests.conftest import ROOT
from tests.e2e.conftest import STORE_ROOT
from tests.helpers import condition, get_custom
from tests.unit.test_monitoring import queries


class Discovery(threading.Thread):
    """What the Prometheus Operator does for a PodMonitor, for Debian's Prometheus (built without Kubernetes
    discovery): every second, the namespace's running regrow pods (serving pods on their "http" port, the
    operator on "metrics") go to a file_sd targets file, with the namespace and pod labels."""

    def __init__(self, api: client.ApiClient, namespace: str, targets: Path) -> None:
        super().__init__(daemon=True)
        self.kube, self.namespace, self.targets = Kube(api), namespace, targets
        self.stopped = threading.Event()
        self.write([])

    def write(self, groups: list[dict[str, Any]]) -> None:
        fresh = self.targets.with_suffix(".tmp")
        fresh.write_text(json.dumps(groups))
        fresh.replace(self.targets)

    def run(self) -> None:
        while not self.stopped.wait(1):
            with contextlib.suppress(OSError, ApiException):
                pods = self.kube.list(path("v1", "pods", self.namespace), "app.kubernetes.io/part-of=regrow")
                self.write([
                    {"targets": [f"{pod['status']['podIP']}:{port['containerPort']}"],
                     "labels": {"namespace": self.namespace, "pod": pod["metadata"]["name"]}}
                    for pod in pods if (pod.get("status") or {}).get("phase") == "Running"
                    and pod["status"].get("podIP")
                    for container in pod["spec"]["containers"] for port in container.get("ports") or []
                    if port.get("name") in ("http", "metrics")
                ])  # fmt: skip


def series(url: str, query: str, start: float, end: float) -> int:
    """How many series a range query returns over [start, end], as a dashboard panel asks."""
    form = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": "5"})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{form}", timeout=30) as answer:
        return len(json.loads(answer.read())["data"]["result"])


def test_the_demo_shows_drift_a_retrain_a_canary_and_v2_serving(
    node_cluster: Cluster, node_api: client.ApiClient, node_namespace: str, prometheus: Callable[..., str],
    tmp_path: Path,
) -> None:  # fmt: skip
    store = STORE_ROOT / node_namespace
    discovery = Discovery(node_api, node_namespace, tmp_path / "targets.json")
    discovery.start()
    found = {"files": [str(discovery.targets)], "refresh_interval": "2s"}
    url = prometheus([], {}, [{"job_name": "regrow", "scrape_interval": "2s", "file_sd_configs": [found]}])
    kubectl = _kubectl()
    assert kubectl is not None
    env = {**os.environ, "KUBECONFIG": str(node_cluster.kubeconfig),
           "REGROW": str(Path(sys.executable).parent / "regrow"),
           "PATH": f"{Path(kubectl).parent}:{os.environ['PATH']}", "REGROW_DEMO_NAMESPACE": node_namespace,
           "REGROW_DEMO_OPERATOR_NAMESPACE": node_namespace, "REGROW_DEMO_STORE": str(store)}  # fmt: skip
    started = time.monotonic()
    try:
        demo = subprocess.run([ROOT / "scripts" / "demo.sh"], env=env, capture_output=True, text=True, timeout=900,
                              check=False)  # fmt: skip
    finally:
        discovery.stopped.set()
        subprocess.run([kubectl, "delete", "persistentvolume", f"regrow-store-{node_namespace}", "--ignore-not-found",
                        "--wait=false"],
                       env=env, capture_output=True, check=False)  # fmt: skip
        subprocess.run(["rm", "-rf", str(store)], check=False)
    took = time.monotonic() - started
    assert demo.returncode == 0, f"the demo failed:\n{demo.stdout[-6000:]}\n{demo.stderr[-3000:]}"
    print(f"\nthe demo took {took:.0f} s:\n{demo.stdout[demo.stdout.index('== the loop') :]}")

    md = get_custom(node_api, node_namespace, MODEL_DEPLOYMENT.plural, "iris")
    (retrain,) = get_custom(node_api, node_namespace, DRIFT_POLICY.plural, "iris")["status"]["trainingJobs"]
    tj = get_custom(node_api, node_namespace, TRAINING_JOB.plural, retrain["name"])
    v1 = get_custom(node_api, node_namespace, TRAINING_JOB.plural, "iris-v1")["status"]["artifact"]["version"]
    v2 = tj["status"]["artifact"]["version"]
    assert (condition(tj, "Succeeded") or {}).get("reason") == "Promoted"
    assert v2 != v1 and md["status"]["model"]["version"] == v2
    assert md["status"]["rollout"]["candidate"] == v2 and md["status"]["rollout"]["outcome"] == "Promoted"
    (step,) = md["status"]["rollout"]["passed"]
    judged = {gate["name"]: gate["passed"] for gate in step["gates"]}
    assert judged["qualityDrop"] is True and judged["errorShare"] is True, step  # the labels reached both versions
    assert f"{v1} -> drift -> {retrain['name']} -> canary -> {v2}" in demo.stdout

    time.sleep(5)  # the last scrape
    variables = {"$namespace": node_namespace, "$model": "iris", "$deployment": "iris", "$__rate_interval": "1m"}
    empty = []
    for where, shipped in queries():
        query = functools.reduce(lambda q, v: q.replace(*v), variables.items(), shipped)
        if series(url, query, time.time() - took - 5, time.time()) == 0:
            empty.append(f"{where}: {query}")
    assert empty == [], "these queries found no series over the loop:\n" + "\n".join(empty)
