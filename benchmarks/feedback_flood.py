"""What a flood of feedback costs the other clients of a server. Prints a table; asserts nothing.

    python benchmarks/feedback_flood.py [--seconds 10] [--flooders 2] [--source DIR]

`regrow serve` (iris by logistic regression, every prediction logged, a key as a ModelDeployment's pods have)
runs on CPU 0; the clients run on CPU 1. One client sends single-row inference requests one after another
and times each; meanwhile `--flooders` clients post feedback back to back on kept-alive connections, each
batch the most a request may hold (1,000 items):

- quiet: no flood;
- replays: one valid id, the same label, 1,000 times in each batch;
- distinct: 1,000 different valid ids in each batch, posted again and again.

For each: the inference client's p50 and p99, the flood's answers by code, and what the feedback log wrote
to the store. `--source DIR` runs the server from another checkout's `operator/` (a before/after comparison).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import free_port, infer_body, regrow_serve, serve, trained_iris, wait_up

KEY = "a key of the deployment, 32 bytes or more"
ITEMS = 1000


def post(connection: http.client.HTTPConnection, path: str, body: str) -> tuple[int, bytes]:
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def ids(port: int, count: int) -> list[str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(count):
        _, body = post(connection, "/v2/models/iris/infer", infer_body(1))
        out.append(json.loads(body)["parameters"]["prediction_id"])
    return out


def flood(port: int, body: str, stop: threading.Event, codes: Counter[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        codes[post(connection, "/v2/models/iris/feedback", body)[0]] += 1


def measure(port: int, seconds: float) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body, latencies = infer_body(1), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, _ = post(connection, "/v2/models/iris/infer", body)
        if status == 200:
            latencies.append(time.perf_counter() - started)
    return latencies


def written(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / "registry/iris/feedback").rglob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--source", type=Path, help="another checkout whose operator/ the server runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="regrow-flood-"))
    try:
        _, version = trained_iris(work)
        port = free_port()
        env = {"REGROW_FEEDBACK_KEY": KEY, "REGROW_PREDICTION_LOG_PERCENT": "100"}
        if args.source:
            env["PYTHONPATH"] = str(args.source.resolve() / "operator")
        server = serve(regrow_serve(work, version, port), env)
        try:
            wait_up(f"http://127.0.0.1:{port}/v2/models/iris/infer", infer_body(1))
            one, many = ids(port, 1)[0], ids(port, ITEMS)
            bodies = {
                "quiet": None,
                "replays": json.dumps({"feedback": [{"id": one, "label": "setosa"}] * ITEMS}),
                "distinct": json.dumps({"feedback": [{"id": i, "label": "setosa"} for i in many]}),
            }
            print(f"\nserver on CPU 0 ({args.source or 'this checkout'}), clients on CPU 1; {args.flooders} "
                  f"flooders, {args.seconds:g} s each\n")  # fmt: skip
            print(f"{'flood':<10} {'p50 ms':>8} {'p99 ms':>8} {'answers':>8} {'flood codes':<28} {'stored MB':>9}")
            for name, body in bodies.items():
                time.sleep(1)  # the log's last flush
                before, stop, codes = written(work), threading.Event(), Counter[int]()
                threads = [threading.Thread(target=flood, args=(port, body, stop, codes)) for _ in range(args.flooders)]
                for thread in threads if body else []:
                    thread.start()
                latencies = np.array(measure(port, args.seconds)) * 1000
                stop.set()
                for thread in threads if body else []:
                    thread.join(30)
                time.sleep(6)  # flushed
                shown = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) or "-"
                print(f"{name:<10} {np.percentile(latencies, 50):>8.2f} {np.percentile(latencies, 99):>8.2f} "
                      f"{len(latencies):>8} {shown:<28} {(written(work) - before) / 1e6:>9.2f}")  # fmt: skip
        finally:
            server.terminate()
            server.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.sched_setaffinity(0, {1})
    main()
