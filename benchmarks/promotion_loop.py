"""The closed loop's time from drifted traffic to a new version on every pod, and what the roll costs. Prints a
table; asserts nothing.

    KUBECONFIG=... python benchmarks/promotion_loop.py [--runs 3] [--operator-source ../before]

On the cluster with a real kubelet (`make cluster-up image`), `regrow operator` runs as its own process. Each
run, in a namespace of its own, serves a weak binary classifier of 30 features (v1, the champion) from a registry
on a hostPath volume: a ModelDeployment of 2 replicas following `champion` with the default refreshInterval
(30 s), a rolling update without a canary, and a DriftPolicy that checks every 5 s and retrains automatically (a
logistic regression trained to convergence on the same data, which beats v1 at the gate). Clients send 10
requests of 10 rows a second through the Service: like the training data until the policy has made a quiet
check, then with 10 features moved by two standard deviations. Watches time, from the first drifted request:
DriftDetected, the retrain TrainingJob created, its Promoted, v2 on every ready serving pod (the pods' pinned
version), and status.model naming v2; and count the serving pods created from the promotion on, and every value
status.desiredVersion took. With --operator-source, the operator runs from that checkout (and
REGROW_RUNTIME_IMAGE names its pods' image).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from kubernetes import client
from operator_scale import operator
from sklearn.datasets import make_classification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.cluster import Cluster, from_kubeconfig
from tests.e2e.conftest import host_store
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, wait_for

from regrow import API_VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB, TrainingJobSpec, parse_spec
from regrow.controller.kube import Kube, Obj, path
from regrow.manifests.serving import VERSION_ANNOTATION
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.trainer import train

CRDS = Path(__file__).resolve().parent.parent / "crds"
FEATURES, ROWS, RATE, REPLICAS, SHIFTED = 30, 10, 10.0, 2, 10
REGISTRY, DATA = "file:///var/lib/regrow/registry", "file:///var/lib/regrow/datasets/data.csv"


class Timeline:
    """When each watched thing first happened (seconds on the monotonic clock), and every value some took."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.values: dict[str, list[object]] = {}
        self.lock = threading.Lock()

    def mark(self, what: str) -> None:
        with self.lock:
            self.first.setdefault(what, time.monotonic())

    def record(self, what: str, value: object) -> None:
        with self.lock:
            seen = self.values.setdefault(what, [])
            if not seen or seen[-1] != value:
                seen.append(value)


def follow(kube: Kube, where: str, see: Callable[[str, Obj], None], stop: threading.Event, selector: str = "") -> None:
    """Every change of the objects at ``where`` to ``see`` (the event's type and the object), until ``stop``."""
    listed = kube.collection(where, selector)
    for obj in listed["items"]:
        see("ADDED", obj)
    version = listed["metadata"]["resourceVersion"]
    while not stop.is_set():
        try:
            for event in kube.watch(where, selector, version):
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    see(event["type"], event["object"])
                if stop.is_set():
                    return
        except OSError:
            return


class Traffic(threading.Thread):
    """RATE requests a second of ROWS rows to the Service, like the training data until ``shifted``."""

    def __init__(self, host: str, frame: np.ndarray, timeline: Timeline) -> None:
        super().__init__(daemon=True)
        self.host, self.frame, self.timeline = host, frame, timeline
        self.shifted = False
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.rng = np.random.default_rng(0)

    def run(self) -> None:
        shift = np.zeros(FEATURES)
        shift[:SHIFTED] = 2 * self.frame.std(axis=0)[:SHIFTED]
        started = time.monotonic()
        while not self.stop.is_set():
            rows = self.frame[self.rng.integers(0, len(self.frame), ROWS)] + (shift if self.shifted else 0)
            body = {"inputs": [{"name": "input", "shape": [ROWS, FEATURES], "datatype": "FP32",
                                "data": rows.round(4).tolist()}]}  # fmt: skip
            if self.shifted:
                self.timeline.mark("first drifted request")
            try:
                connection = http.client.HTTPConnection(self.host, 80, timeout=5)
                connection.request(
                    "POST", "/v2/models/loop/infer", json.dumps(body), {"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                answer.read()
                self.failed += answer.status != 200
                connection.close()
            except OSError:
                self.failed += 1
            self.sent += 1
            self.stop.wait(max(0.0, started + self.sent / RATE - time.monotonic()))


def publish(root: Path, seed: int) -> tuple[np.ndarray, str]:
    """The data set in the store and a weak champion trained on it (v1); the features and v1's version."""
    x, y = make_classification(n_samples=4000, n_features=FEATURES, n_informative=12, random_state=seed)
    names = [f"f{i}" for i in range(FEATURES)]
    data = root / "datasets" / "data.csv"
    data.parent.mkdir()
    rows = [",".join([*(f"{v:.5f}" for v in row), "ab"[t]]) for row, t in zip(x, y, strict=True)]
    lines = [",".join([*names, "label"]), *rows]
    data.write_text("\n".join(lines) + "\n")
    weak = parse_spec(TrainingJobSpec, {
        "dataset": {"uri": DATA, "target": "label"},
        "model": {"algorithm": "logisticRegression", "params": {"C": "0.0001", "max_iter": 5}},
        "evaluation": {"holdoutPercent": 25, "seed": 7},
        "output": {"registry": REGISTRY, "modelName": "loop"},
        "promote": {"alias": "champion"},
    })  # fmt: skip
    registry = Registry(open_store(f"file://{root}/registry"))
    with warnings.catch_warnings(action="ignore"):  # weak on purpose: it stops before it converges
        version = train(weak, data.read_bytes(), registry, {}).version
    own_like_a_trainer_pod(root)
    return x, version


def objects() -> tuple[Obj, Obj]:
    storage = {"volumeClaimName": "regrow-store"}
    md = {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": "loop"}, "spec": {
        "model": {"registry": REGISTRY, "name": "loop", "alias": "champion"}, "storage": storage,
        "replicas": {"min": REPLICAS, "max": REPLICAS},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }}  # fmt: skip
    template = {"spec": {
        "dataset": {"uri": DATA, "target": "label"},
        "model": {"algorithm": "logisticRegression", "params": {"C": "1.0", "max_iter": 200}},
        "evaluation": {"holdoutPercent": 25, "seed": 7}, "output": {"registry": REGISTRY, "modelName": "loop"},
        "promote": {"alias": "champion", "minImprovement": "0.0"}, "storage": storage,
    }}  # fmt: skip
    dp = {"apiVersion": API_VERSION, "kind": "DriftPolicy", "metadata": {"name": "loop"}, "spec": {
        "targetRef": {"name": "loop"}, "interval": "5s", "window": "10m", "minSamples": 300, "consecutiveBreaches": 2,
        "driftShare": "0.2", "retrain": {"cooldown": "1h", "maxConcurrent": 1, "approval": "Automatic",
                                         "template": template},
    }}  # fmt: skip
    return md, dp


class Watched:
    """What the watches saw of one run's objects: the timeline, the serving pods created and those ready."""

    def __init__(self, v1: str) -> None:
        self.v1, self.timeline = v1, Timeline()
        self.created: dict[str, float] = {}  # each serving pod's name: when it was first seen
        self.ready: dict[str, str | None] = {}  # each ready serving pod's pinned version (None: none pinned)

    def md(self, _: str, obj: Obj) -> None:
        status = obj.get("status") or {}
        self.timeline.record("desiredVersion", status.get("desiredVersion"))
        if (status.get("model") or {}).get("version") not in (None, self.v1):
            self.timeline.mark("status names v2")

    def dp(self, _: str, obj: Obj) -> None:
        if (condition(obj, "DriftDetected") or {}).get("status") == "True":
            self.timeline.mark("DriftDetected")

    def tj(self, _: str, obj: Obj) -> None:
        self.timeline.mark("retrain TrainingJob")
        if (condition(obj, "Succeeded") or {}).get("reason") == "Promoted":
            self.timeline.mark("Promoted")

    def pod(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.created.setdefault(meta["name"], time.monotonic())
        up = (condition(obj, "Ready") or {}).get("status") == "True" and not meta.get("deletionTimestamp")
        if kind == "DELETED" or not up:
            self.ready.pop(meta["name"], None)
        else:
            self.ready[meta["name"]] = (meta.get("annotations") or {}).get(VERSION_ANNOTATION)
        pinned = list(self.ready.values())
        if "Promoted" in self.timeline.first and pinned and all(v not in (None, self.v1) for v in pinned):
            self.timeline.mark("v2 on every ready pod")

    def serving_v1(self) -> bool:
        return len([v for v in list(self.ready.values()) if v in (None, self.v1)]) == REPLICAS


def checked(kube: Kube, namespace: str) -> int:
    """The samples of the policy's last check."""
    policy = kube.get(path(API_VERSION, DRIFT_POLICY.plural, namespace, "loop")) or {}
    return int(((policy.get("status") or {}).get("lastCheck") or {}).get("samples", 0))


def run(cluster: Cluster, index: int) -> dict[str, Any]:
    api = cluster.api_client()
    kube, core = Kube(api), client.CoreV1Api(api)
    namespace = f"bench-loop-{int(time.time())}-{index}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    stop = threading.Event()
    try:
        with host_store(api, namespace) as root:
            frame, v1 = publish(root, index)
            md, dp = objects()
            kube.create(path(API_VERSION, MODEL_DEPLOYMENT.plural, namespace), md)
            seen = Watched(v1)
            watches = [(path(API_VERSION, MODEL_DEPLOYMENT.plural, namespace), seen.md, ""),
                       (path(API_VERSION, DRIFT_POLICY.plural, namespace), seen.dp, ""),
                       (path(API_VERSION, TRAINING_JOB.plural, namespace), seen.tj, ""),
                       (path("v1", "pods", namespace), seen.pod, "regrow.dev/modeldeployment=loop")]  # fmt: skip
            for where, see, selector in watches:
                threading.Thread(target=follow, args=(kube, where, see, stop, selector), daemon=True).start()
            wait_for(seen.serving_v1, 180, "v1 served")
            service = kube.get(path("v1", "services", namespace, "loop-predictor")) or {}
            traffic = Traffic(service["spec"]["clusterIP"], frame, seen.timeline)
            traffic.start()
            kube.create(path(API_VERSION, DRIFT_POLICY.plural, namespace), dp)
            wait_for(lambda: checked(kube, namespace) >= 300, 120, "a quiet check")
            began, before = time.monotonic(), traffic.sent
            traffic.shifted = True
            wait_for(lambda: "status names v2" in seen.timeline.first, 600, "v2 named in status")
            time.sleep(5)
            traffic.stop.set()
            seconds = time.monotonic() - began
    finally:
        stop.set()
        core.delete_namespace(namespace)
    first = seen.timeline.first
    promoted = first.get("Promoted", math.inf)
    return {
        "times": {k: v - first["first drifted request"] for k, v in first.items()},
        "rate": (traffic.sent - before) / seconds if seconds else 0.0,
        "failed": traffic.failed,
        "pods": len([t for t in seen.created.values() if t >= promoted]),
        "desired": seen.timeline.values.get("desiredVersion", []),
        "v1": v1,
    }


STAGES = ["DriftDetected", "retrain TrainingJob", "Promoted", "v2 on every ready pod", "status names v2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--resync-seconds", type=float, default=300.0)
    parser.add_argument("--operator-source", help="run the operator of this checkout (a worktree of another commit)")
    args = parser.parse_args()
    cluster = from_kubeconfig()
    if isinstance(cluster, str) or not cluster.runs_pods:
        sys.exit(f"this benchmark needs a cluster that runs pods (see `make cluster-up`): {cluster}")
    cluster.kubectl("apply", "-f", str(CRDS))
    proc, _ = operator(cluster, Path(tempfile.mkdtemp(prefix="regrow-bench-loop-")), args)
    print("Seconds from the first drifted request; pods: serving pods created from the promotion on "
          f"(replicas {REPLICAS}, maxSurge 1); desiredVersion: every value it took\n")  # fmt: skip
    print(f"| run | {' | '.join(STAGES)} | requests/s (failed) | pods created | desiredVersion |")
    print("|---|" + "---|" * (len(STAGES) + 3))
    try:
        for index in range(1, args.runs + 1):
            found = run(cluster, index)
            times = " | ".join(f"{found['times'][s]:.0f}" if s in found["times"] else "-" for s in STAGES)
            desired = ", ".join("v1" if v == found["v1"] else "none" if v is None else "v2" for v in found["desired"])
            print(
                f"| {index} | {times} | {found['rate']:.1f} ({found['failed']}) | {found['pods']} | {desired} |",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
