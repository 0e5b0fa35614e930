"""The closed loop, shown: what `make demo` and `make kind-demo` run once the chart and the store are in place
(scripts/demo.sh does both, then this).

    python scripts/demo_loop.py --namespace regrow-demo [--timeout 600]

It applies the three iris examples at demo pace (the changes are printed first), sends traffic through the
API server's service proxy (so it runs wherever kubectl does: the local cluster, kind), and keeps one screen
up to date as the loop moves: iris-v1 trained and served; in-distribution requests and a quiet drift check;
then the world moves (a new instrument reads sepals four standard deviations wider and petals one longer)
and the clients label what they asked about, as the examples' named labeller; the policy detects drift, a
retrain trains on the data set plus the labelled traffic, its gate decides, a canary answers half the
requests while its live quality is compared with v1's, and v2 serves. It ends with the lineage (`regrow
status iris`). Exit status 0 once v2 serves; 1 when the loop ends anywhere else or does not move on within --timeout.
"""

from __future__ import annotations

import argparse
import collections
import io
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from regrow import API_VERSION
from regrow.api import DRIFT_POLICY, MODEL_DEPLOYMENT, TRAINING_JOB
from regrow.clock import now
from regrow.controller.conditions import find
from regrow.controller.kube import Conflict, Kube, Obj, path
from regrow.controller.lineage import lineage
from regrow.serving.labellers import HEADER
from regrow.training.sample_data import sample_csv

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# What the demo changes in the examples, so that the loop takes minutes rather than hours.
PACE: dict[str, dict[str, Any]] = {
    "ModelDeployment": {
        "model.refreshInterval": "5s",  # the pods look the alias up every 5 s (example: 30 s)
        "predictionLog.samplePercent": 100,  # every prediction can be labelled (example: 10%)
        "rollout": {  # a canary (example: a rolling update) that answers half the requests, judged on labels
            "strategy": "Canary",
            "steps": [{"weight": 50, "minRequests": 40}],
            "analysis": {"maxQualityDrop": "0.05", "minLabels": 100},
        },
    },
    "DriftPolicy": {"interval": "5s", "minSamples": 300},  # example: every minute, 500 samples
}
SHIFT = np.array([0.0, 4.0, 1.0, 0.0])  # the moved world, in standard deviations: sepal width and petal length
LABELLER = HEADER.decode()  # the header a labeller's token rides in
ROWS = 16  # rows per request: a prediction id carries up to 16 predictions, so that labels grade each version


def paced(doc: Obj) -> Obj:
    for dotted, value in PACE.get(doc["kind"], {}).items():
        *parents, leaf = dotted.split(".")
        node = doc["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return doc


class Traffic(threading.Thread):
    """Requests of ROWS iris rows through the Service, one after another, until stopped: like the training
    data, or once ``shifted``, moved by SHIFT and each labelled through /feedback with the labeller's token."""

    def __init__(self, kube: Kube, namespace: str, token: str) -> None:
        super().__init__(daemon=True)
        self.kube, self.base = kube, f"/api/v1/namespaces/{namespace}/services/iris-predictor:http/proxy/v2/models/iris"
        self.token = token  # the labeller's (examples/iris-labeller.yaml)
        data = np.loadtxt(io.BytesIO(sample_csv("iris")), delimiter=",", skiprows=1, dtype=str)
        self.frame, self.species = data[:, :4].astype(float), data[:, 4]
        self.rng = np.random.default_rng(0)
        self.shifted = False
        self.stopped = threading.Event()
        self.answered: collections.Counter[str] = collections.Counter()  # requests by the version that answered
        self.labelled = self.failed = 0

    def run(self) -> None:
        while not self.stopped.wait(0.2):  # about 4 requests a second
            picks = self.rng.integers(0, len(self.frame), ROWS)
            rows = self.frame[picks] + (SHIFT * self.frame.std(axis=0) if self.shifted else 0.0)
            try:
                tensor = {"name": "input", "shape": [ROWS, 4], "datatype": "FP32", "data": rows.round(2).tolist()}
                answer = self.kube.create(f"{self.base}/infer", {"inputs": [tensor]})  # a POST, through the API server
                self.answered[str(answer["model_version"])] += 1
                if self.shifted:
                    label = {"id": answer["parameters"]["prediction_id"], "label": self.species[picks].tolist()}
                    self.label(label)
                    self.labelled += ROWS
            except (ApiException, OSError, KeyError, ValueError):  # a pod going away mid-roll: the next goes elsewhere
                self.failed += 1

    def label(self, body: Obj) -> None:
        """POST a label through the service proxy with the labeller's token (a header of regrow's own: the
        proxy strips Authorization)."""
        client = self.kube.api_client
        headers = {"Content-Type": "application/json", "Accept": "application/json", LABELLER: self.token}
        request = client.param_serialize(method="POST", resource_path=f"{self.base}/feedback", body=body,
                                         header_params=headers, auth_settings=["BearerToken"])  # fmt: skip
        response = client.call_api(*request, _request_timeout=(5, 10))
        response.read()  # type: ignore[no-untyped-call]
        if response.status != 202:
            raise ValueError(f"feedback answered {response.status}")

    def summary(self) -> str:
        by = ", ".join(f"{version} {n:,}" for version, n in sorted(self.answered.items()))
        return f"traffic: {sum(self.answered.values()):,} requests of {ROWS} rows (answered by {by or 'none yet'}), " \
               f"{self.labelled:,} rows labelled, {self.failed} failed"  # fmt: skip


@dataclass
class Stage:
    title: str
    detail: str = ""
    started: float | None = None
    finished: float | None = None

    def line(self, now: float) -> str:
        mark = "✓" if self.finished is not None else "▸" if self.started is not None else "·"
        took = (self.finished or now) - self.started if self.started is not None else None
        return f"{mark} {self.title:<46} {f'{took:5.0f} s' if took is not None else '':>7}  {self.detail}"


class Stalled(Exception):
    pass


class View:
    """The stages on one screen, redrawn in place on a terminal; elsewhere (a log, a test) a line per change."""

    def __init__(self, titles: list[str], traffic: Traffic, timeout: float) -> None:
        self.stages, self.traffic, self.timeout = [Stage(t) for t in titles], traffic, timeout
        self.begun, self.drawn, self.said = time.monotonic(), 0, [""] * len(titles)
        self.live = sys.stdout.isatty()

    def draw(self) -> None:
        now = time.monotonic()
        if not self.live:
            for i, stage in enumerate(self.stages):
                said = f"{stage.started is not None}{stage.finished is not None}{stage.detail}"
                if stage.started is not None and said != self.said[i]:
                    self.said[i] = said
                    print(f"[{now - self.begun:5.0f} s] {stage.line(now)}", flush=True)
            return
        width = shutil.get_terminal_size().columns  # a line that wrapped would throw the redraw off
        lines = [line[:width] for line in (f"regrow: the closed loop, {now - self.begun:.0f} s",
                                           *(s.line(now) for s in self.stages), self.traffic.summary())]  # fmt: skip
        sys.stdout.write((f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "") + "\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn = len(lines)

    def stage(self, index: int, until: Callable[[Stage], bool]) -> None:
        """Run stage ``index``: redraw every second until ``until`` (which may set the stage's detail) holds."""
        stage = self.stages[index]
        stage.started = time.monotonic()
        while not until(stage):
            if time.monotonic() - stage.started > self.timeout:
                self.draw()
                raise Stalled(f"{stage.title}: nothing moved for {self.timeout:.0f} s")
            self.draw()
            time.sleep(1)
        stage.finished = time.monotonic()
        self.draw()


class Loop:
    """The objects the demo follows, read fresh at each look."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace

    def get(self, plural: str, name: str) -> Obj:
        return self.kube.get(path(API_VERSION, plural, self.namespace, name)) or {}

    def md(self) -> Obj:
        return self.get(MODEL_DEPLOYMENT.plural, "iris")

    def dp(self) -> Obj:
        return self.get(DRIFT_POLICY.plural, "iris")


def status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def cond(obj: Obj, type_: str) -> Obj:
    return find(status(obj).get("conditions") or [], type_) or {}


def trained(loop: Loop, name: str, stage: Stage) -> bool:
    """A TrainingJob's end: its Succeeded message; a failure, or a gate that kept the champion, ends the demo."""
    succeeded = cond(loop.get(TRAINING_JOB.plural, name), "Succeeded")
    stage.detail = f"{succeeded.get('reason', 'Pending')}: {succeeded.get('message', '')}"[:140]
    if succeeded.get("status") == "False" or succeeded.get("reason") == "GateRejected":
        raise Stalled(f"TrainingJob {name} ended {succeeded['reason']}: {succeeded.get('message', '')}")
    return succeeded.get("status") == "True"


def serving(loop: Loop, stage: Stage, version: str | None = None) -> str | None:
    """The version every ready pod serves once the rollout is complete (``version``, when given)."""
    md = loop.md()
    model = (status(md).get("model") or {}).get("version")
    complete = cond(md, "Ready").get("status") == "True" and cond(md, "Progressing").get("reason") == "RolloutComplete"
    stage.detail = f"{model or 'nothing'} on {status(md).get('readyReplicas', 0)} ready pod(s)"
    return model if complete and model is not None and version in (None, model) else None


def checked(loop: Loop, stage: Stage, after: str, reason: str) -> bool:
    """Whether the policy's latest check, later than ``after``, ended with ``reason``; its summary in detail."""
    dp = loop.dp()
    check, drift = status(dp).get("lastCheck") or {}, cond(dp, "DriftDetected")
    if not check or check["time"] <= after:
        stage.detail = "waiting for the policy's next check"
        return False
    drifted = [f"{f['name']} ({', '.join(f'{t} {s}' for t, s in f['scores'].items())})"
               for f in check.get("features") or [] if f["drifted"]]  # fmt: skip
    stage.detail = f"{check['samples']:,} samples; {drift.get('reason')}: drifted {', '.join(drifted) or 'none'}"
    return drift.get("reason") == reason


def canary(loop: Loop, stage: Stage, candidate: str) -> bool:
    rollout = status(loop.md()).get("rollout") or {}
    if rollout.get("candidate") != candidate:
        stage.detail = "waiting for the alias to move and the candidate's pods"
        return False
    gates = ", ".join(f"{g['name']} {g.get('value') or '…'} (≤ {g['threshold']})" for g in rollout.get("gates") or [])
    stage.detail = f"{rollout['candidate']} at {rollout['weight']}% beside {rollout['stable']}, " \
                   f"{rollout.get('requests', 0)} requests; {gates}"  # fmt: skip
    if rollout.get("outcome") == "RolledBack":
        raise Stalled(f"the canary rolled back: {rollout.get('message', '')}")
    if rollout.get("outcome") == "Promoted":
        stage.detail = f"promoted: {rollout.get('message', '')}"[:160]
    return rollout.get("outcome") == "Promoted"


STAGES = [
    "train iris-v1 (TrainingJob iris-v1)",
    "serve it (ModelDeployment iris)",
    "in-distribution traffic: a quiet drift check",
    "the world moves, clients label: drift detected",
    "retrain on the data set + labelled traffic; gate",
    "canary: the new version beside v1, on live traffic",
    "the new version serves every request",
]


def run(kube: Kube, namespace: str, timeout: float) -> int:
    collections_ = {kind.kind: path(API_VERSION, kind.plural, namespace)
                    for kind in (TRAINING_JOB, MODEL_DEPLOYMENT, DRIFT_POLICY)}  # fmt: skip
    docs = [paced(yaml.safe_load(example.read_text())) for example in sorted(EXAMPLES.glob("iris-*.yaml"))]
    secret = next(doc for doc in docs if doc["kind"] == "Secret")  # the labeller the clients label through
    loop, traffic = Loop(kube, namespace), Traffic(kube, namespace, next(iter(secret["stringData"].values())))
    try:
        kube.create(path("v1", "secrets", namespace), secret)
    except Conflict:  # a previous run's: the example's token again
        kube.patch(path("v1", "secrets", namespace, secret["metadata"]["name"]), {"stringData": secret["stringData"]})
    for doc in docs:
        if doc["kind"] != "Secret":
            kube.create(collections_[doc["kind"]], doc)
    view = View(STAGES, traffic, timeout)
    view.stage(0, lambda s: trained(loop, "iris-v1", s))
    v1 = ""

    def first(stage: Stage) -> bool:
        nonlocal v1
        v1 = serving(loop, stage) or ""
        return bool(v1)

    view.stage(1, first)
    started = now()
    traffic.start()
    view.stage(2, lambda s: checked(loop, s, started, "NoDrift"))
    traffic.shifted = True
    view.stage(3, lambda s: checked(loop, s, started, "DriftDetected"))
    retrain = ""

    def retrained(stage: Stage) -> bool:
        nonlocal retrain
        records = status(loop.dp()).get("trainingJobs") or []
        retrain = records[0]["name"] if records else ""
        stage.detail = f"{retrain or 'waiting for the policy'} …"
        return bool(retrain) and trained(loop, retrain, stage)

    view.stage(4, retrained)
    v2 = str((status(loop.get(TRAINING_JOB.plural, retrain)).get("artifact") or {}).get("version"))
    view.stage(5, lambda s: canary(loop, s, v2))
    view.stage(6, lambda s: serving(loop, s, v2) is not None)
    traffic.stopped.set()
    traffic.join(10)
    print(f"\n{traffic.summary()}\n\n$ regrow status iris")
    print("\n".join(lineage(loop.md(), kube.list(path(API_VERSION, TRAINING_JOB.plural, namespace)))))
    print(f"\nThe loop closed in {time.monotonic() - view.begun:.0f} s: {v1} -> drift -> {retrain} -> canary -> {v2}.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="regrow-demo")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a stage may take at most")
    args = parser.parse_args()
    print("The iris examples, at demo pace:")
    for kind, changes in PACE.items():
        print(f"  {kind}: " + "; ".join(f"spec.{k}={v}" for k, v in changes.items()))
    print()
    kube = Kube(config.new_client_from_config())  # type: ignore[no-untyped-call]
    try:
        return run(kube, args.namespace, args.timeout)
    except Stalled as stall:
        print(f"\nThe demo stopped: {stall}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
