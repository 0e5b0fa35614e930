"""What shadow traffic costs the clients of the stable server. Prints a table; asserts nothing.

    python benchmarks/shadow.py [--seconds 10] [--runs 3] [--connections 4] [--batch 1] [--percents 10,100]

The stable server (`regrow serve`, iris by logistic regression, `--shadow-url`) runs on CPU 0; the shadow (a
random forest, `--shadow-percent P`) runs on CPU 1 beside wrk, as a shadow pod has CPU of its own. wrk drives
the stable server as hard as it can (a closed loop), so the table shows mirroring where it costs the most:
the stable server's throughput and latency at saturation. The runs interleave: no shadow (the stable server
then mirrors nothing), then a shadow at each percent, `--runs` times. Last, a hung shadow, which offers
100% and never answers a mirrored request: the queue fills and drops, and the clients should not notice.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from common import free_port, infer_body, regrow_serve, serve, trained_iris, wait_up, wrk
from prometheus_client.parser import text_string_to_metric_families

from regrow.serving.mirror import CHALLENGE_HEADER, PROOF_HEADER, SHADOW_PATH, ShadowKey, ShadowOffer

KEY = "the deployment's key, 32 bytes or more"  # both servers hold it (REGROW_FEEDBACK_KEY), as pods do


def mirrored(port: int) -> dict[str, float]:
    """The stable server's regrow_shadow_requests_total, by outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "regrow_shadow_requests_total":
                out[sample.labels["outcome"]] += sample.value
    return out


def followed(port: int, url: str, body: str) -> None:
    """Send requests until the stable server has mirrored one more (it has found the shadow's offer)."""
    start = mirrored(port).get("answered", 0)
    while mirrored(port).get("answered", 0) <= start:
        urllib.request.urlopen(urllib.request.Request(url, body.encode()), timeout=5).read()
        time.sleep(0.1)


def report(args: argparse.Namespace, results: dict[str, list[Any]], sent: dict[str, list[float]],
           hung: dict[str, float]) -> None:  # fmt: skip
    print(f"\nstable server on CPU 0, shadow and wrk on CPU 1; {args.connections} connections, batch {args.batch}, "
          f"{args.runs} x {args.seconds} s each, interleaved\n")  # fmt: skip
    print(f"{'':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms (each run)':>30}{'errors':>8}{'mirrored/s':>12}")
    for name, runs in results.items():
        rps, p50, p99, errors = (np.median([r[i] for r in runs]) for i in range(4))
        each = ", ".join(f"{r[2]:.2f}" for r in runs)
        rate = np.median(sent[name]) / args.seconds if sent.get(name) else 0.0
        print(f"{name:<18}{rps:>10.0f}{p50:>10.2f}{p99:>12.2f} ({each}){'':>4}{int(errors):>8}{rate:>12.0f}")
    print(
        f"\nhung shadow: dropped {hung.get('dropped', 0):.0f}, failed {hung.get('failed', 0):.0f} (late), "
        "queued at most 1,000"
    )


def hung_shadow(port: int, version: str) -> http.server.ThreadingHTTPServer:
    """A shadow that offers 100% (proving it holds the key) and never answers a mirrored request."""
    offer = ShadowOffer(model="iris", version=version, percent=100).model_dump_json().encode()
    key = ShadowKey(KEY.encode())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == SHADOW_PATH else 404)
            challenge = self.headers.get(CHALLENGE_HEADER.decode(), "").encode()
            self.send_header(PROOF_HEADER.decode(), key.proof(challenge, offer).decode())
            self.send_header("Content-Length", str(len(offer)))
            self.end_headers()
            self.wfile.write(offer)

        def do_POST(self) -> None:
            time.sleep(3600)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--percents", default="10,100")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    percents = [int(p) for p in args.percents.split(",")]
    os.environ["REGROW_FEEDBACK_KEY"] = KEY  # for every server started below
    results: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
    sent: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, stable = trained_iris(work)
        _, candidate = trained_iris(work, "randomForest")
        port, shadow_port = free_port(), free_port()
        url, body = f"http://127.0.0.1:{port}/v2/models/iris/infer", infer_body(args.batch)
        server = serve(regrow_serve(work, stable, port, "--shadow-url", f"http://127.0.0.1:{shadow_port}"))
        try:
            wait_up(url, body)
            wrk(url, body, 2, args.connections, work)  # warm up
            for _ in range(args.runs):
                for percent in [0, *percents]:
                    name = f"shadow at {percent}%" if percent else "no shadow"
                    shadow = None
                    if percent:
                        argv = regrow_serve(work, candidate, shadow_port, "--shadow-percent", str(percent))
                        shadow = serve(argv, cpu=1)
                        wait_up(f"http://127.0.0.1:{shadow_port}/v2/models/iris/infer", body)
                        followed(port, url, body)
                    before = mirrored(port)
                    results[name].append(wrk(url, body, args.seconds, args.connections, work))
                    after = mirrored(port)
                    sent[name].append(after.get("answered", 0) - before.get("answered", 0))
                    if shadow is not None:
                        shadow.terminate()
                        shadow.wait(10)
                        time.sleep(6)  # the stable server's next poll finds none
            hanging = hung_shadow(shadow_port, candidate)
            time.sleep(6)
            before = mirrored(port)
            results["hung shadow"].append(wrk(url, body, args.seconds, args.connections, work))
            hung = {k: v - before.get(k, 0) for k, v in mirrored(port).items()}
            hanging.shutdown()
        finally:
            server.terminate()
            server.wait(10)
    report(args, results, sent, hung)


if __name__ == "__main__":
    main()
