"""What the serving benchmarks share: an iris model trained into a registry, ports, and pinned processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from regrow.api import TrainingJobSpec, parse_spec
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train

ROW = [5.9, 3.0, 4.2, 1.5]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def infer_body(batch: int) -> str:
    return json.dumps({"inputs": [{"name": "input-0", "shape": [batch, 4], "datatype": "FP32", "data": [ROW] * batch}]})


def wait_up(url: str, payload: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, payload.encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 in {timeout:.0f}s")


def serve(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, cpu: int = 0
) -> subprocess.Popen[bytes]:
    """Start a server pinned to CPU ``cpu`` (0: the load generator takes CPU 1)."""
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def trained_iris(work: Path, algorithm: str = "logisticRegression", name: str = "iris") -> tuple[Registry, str]:
    """Train ``algorithm`` on iris (or another sample data set whose target is species: penguins) into
    ``work/registry`` as the model ``name``; return the registry and the version."""
    (work / f"{name}.csv").write_bytes(sample_csv(name))
    spec = parse_spec(
        TrainingJobSpec,
        {
            "dataset": {"uri": f"file://{work}/{name}.csv", "target": "species"},
            "model": {"algorithm": algorithm},
            "output": {"registry": f"file://{work}/registry", "modelName": name},
        },
    )
    registry = Registry(open_store(f"file://{work}/registry"))
    return registry, train(spec, (work / f"{name}.csv").read_bytes(), registry, {}).version


def regrow_serve(work: Path, version: str, port: int, *extra: str, model: str = "iris") -> list[str]:
    """``regrow serve``'s command line for the model ``trained_iris`` put in ``work``."""
    registry = f"file://{work}/registry"
    return [sys.executable, "-m", "regrow.cli", "serve", "--registry", registry, "--model", model,
            "--version", version, "--drain-seconds", "0", "--port", str(port), *extra]  # fmt: skip


def wrk(url: str, payload: str, seconds: int, connections: int, work: Path) -> tuple[float, float, float, int]:
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(payload)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return rps, latency("50"), latency("99"), errors
