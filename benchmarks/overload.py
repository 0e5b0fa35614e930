"""Overload: `regrow serve` offered more than it can answer. Prints a table; asserts nothing.

    python benchmarks/overload.py [--seconds 10] [--batch 256] [--loads 0.1,1,2,3] [--budgets 100,50]
                                  [--large-rows 100000]

The server gets one worker pinned to CPU 0 and serves iris (logistic regression); the load generator runs on
CPU 1 (this script, under uvloop). First its capacity: answers per second to 8 connections that each send the
next request when the last is answered. Then an open loop: requests are offered on a fixed schedule at a
multiple of that capacity, whatever the server answers, each on an idle connection or a new one (up to 1,000,
the server's cap), as clients behind a Service do. A request's latency counts from when it was due, so
queueing in the generator counts against the server too; a request not answered within 2 s is a failure, and
its connection is dropped. Alongside, a health probe (`GET /v2/health/ready` on a connection of its own)
every 100 ms. Each load runs with shedding at each budget (`--shed-after-ms`) and with shedding off.

Last, the health probes while one client sends 100,000-row requests back to back: with the default bound on
rows (each is refused with 413) and with a bound that lets them run (inference on the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import uvloop
from common import free_port, infer_body, regrow_serve, serve, trained_iris, wait_up

from regrow.api.modeldeployment import DEFAULT_SERVER

TIMEOUT = 2.0  # seconds: a request not answered by then failed
MAX_CONNECTIONS = 1000
OFF = 3_600_000  # a shedding budget (ms) no lag reaches: shedding off


@dataclass
class Tally:
    """What became of the requests of one run."""

    codes: Counter[str] = field(default_factory=Counter)  # "200", "429", "timeout", "refused", "no connection"
    latencies: list[float] = field(default_factory=list)  # seconds from due to answered, of 200s
    probes: list[float] = field(default_factory=list)  # seconds each health probe took (TIMEOUT when it failed)
    late: list[float] = field(default_factory=list)  # seconds after its due time each request was written

    @property
    def total(self) -> int:
        return sum(self.codes.values()) or 1

    @property
    def unsent(self) -> int:
        """Requests the generator could not send: all its connections were waiting for answers."""
        return self.codes["no connection"]

    @property
    def failed(self) -> int:
        """No answer within TIMEOUT, a refused connection, or an answer but 200 or 429 (503: past the cap)."""
        return self.total - self.codes["200"] - self.codes["429"] - self.unsent


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding; it reads status and Content-Length."""

    def __init__(self, done: Callable[[Connection, str, float], None]) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.due: float | None = None  # when the outstanding request was due; None when idle
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].lower().split(b"\r\n")
        length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
        if len(self.buffer) < end + 4 + length:
            return
        code, self.buffer = self.buffer[9:12].decode(), self.buffer[end + 4 + length :]
        due, self.due = self.due, None
        if due is not None:
            self.done(self, code, due)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.due is not None:
            due, self.due = self.due, None
            self.done(self, "refused", due)
        self.transport = None


class Load:
    """Requests offered to one server, by schedule (open loop) or back to back (closed loop)."""

    def __init__(self, port: int, payload: bytes) -> None:
        self.port = port
        self.request = (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.opening = 0
        self.tally = Tally()
        self.closed_loop = False

    def answered(self, connection: Connection, code: str, due: float) -> None:
        self.busy.discard(connection)
        self.tally.codes[code] += 1
        if code == "200":
            self.tally.latencies.append(self.loop.time() - due)
        if connection.transport is None:
            return
        if self.closed_loop:
            self.send(connection, self.loop.time())
        else:
            self.idle.append(connection)

    def send(self, connection: Connection, due: float) -> None:
        self.busy.add(connection)
        self.tally.late.append(self.loop.time() - due)
        connection.send(self.request, due)

    def offer(self, due: float) -> None:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None:
                self.send(connection, due)
                return
        if len(self.busy) + self.opening >= MAX_CONNECTIONS:
            self.tally.codes["no connection"] += 1
            return
        self.opening += 1
        self.loop.create_task(self.open(due))

    async def open(self, due: float) -> None:
        try:
            _, connection = await self.loop.create_connection(lambda: Connection(self.answered), "127.0.0.1", self.port)
            self.send(connection, due)
        except OSError:
            self.tally.codes["refused"] += 1
        finally:
            self.opening -= 1

    def expire(self) -> None:
        """Count requests past TIMEOUT as failed and drop their connections."""
        now = self.loop.time()
        for connection in [c for c in self.busy if c.due is not None and now - c.due > TIMEOUT]:
            self.busy.discard(connection)
            connection.due = None
            self.tally.codes["timeout"] += 1
            if connection.transport is not None:
                connection.transport.abort()

    async def open_loop(self, rate: float, seconds: float) -> None:
        start, sent, total = self.loop.time(), 0, int(rate * seconds)
        expired = start
        while sent < total:
            now = self.loop.time()
            due_now = min(total, int((now - start) * rate) + 1)
            for i in range(sent, due_now):
                self.offer(start + i / rate)
            sent = due_now
            if now - expired > 0.05:
                self.expire()
                expired = now
            await asyncio.sleep(max(0.001, start + sent / rate - self.loop.time()))  # the timers tick in ms
        await self.settle()

    async def back_to_back(self, connections: int, seconds: float) -> None:
        self.closed_loop = True
        for _ in range(connections):
            self.offer(self.loop.time())
        await asyncio.sleep(seconds)
        self.closed_loop = False
        await self.settle()

    async def settle(self) -> None:
        deadline = self.loop.time() + TIMEOUT + 0.5
        while (self.busy or self.opening) and self.loop.time() < deadline:
            self.expire()
            await asyncio.sleep(0.01)
        for connection in [*self.idle, *self.busy]:
            if connection.transport is not None:
                connection.transport.abort()

    async def probe(self, stop: asyncio.Event) -> None:
        """GET /v2/health/ready every 100 ms on a connection of its own, timing each."""
        request = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        while not stop.is_set():
            start = self.loop.time()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), TIMEOUT)
                writer.write(request)
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                writer.close()
                self.tally.probes.append(self.loop.time() - start)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                self.tally.probes.append(TIMEOUT)
            await asyncio.sleep(max(0.0, 0.1 - (self.loop.time() - start)))


async def run(port: int, payload: bytes, rate: float | None, seconds: float) -> tuple[Tally, float]:
    """One run: back to back on 8 connections when ``rate`` is None, else open loop at ``rate``. Returns the
    tally and the seconds it took."""
    load = Load(port, payload)
    stop = asyncio.Event()
    prober = asyncio.create_task(load.probe(stop))
    start = load.loop.time()
    await (load.back_to_back(8, seconds) if rate is None else load.open_loop(rate, seconds))
    elapsed = load.loop.time() - start
    stop.set()
    await prober
    return load.tally, elapsed


async def large_requests(port: int, body: bytes, seconds: float) -> tuple[Tally, list[float]]:
    """One client sending ``body`` over and over on one connection for ``seconds``, with the health probe
    alongside: the tally (codes and probes) and the seconds each request took."""
    load, took = Load(port, body), []
    stop = asyncio.Event()
    prober = asyncio.create_task(load.probe(stop))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    deadline = load.loop.time() + seconds
    while load.loop.time() < deadline:
        start = load.loop.time()
        writer.write(load.request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)
        load.tally.codes[head[9:12].decode()] += 1
        took.append(load.loop.time() - start)
    writer.close()
    stop.set()
    await prober
    return load.tally, took


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--batch",
        type=int,
        default=256,
        help="rows per request (enough that the generator, one Python process, offers 3x what the server answers)",
    )
    parser.add_argument("--loads", default="0.1,1,2,3", help="offered load, as multiples of the capacity")
    parser.add_argument("--budgets", default="100,50", help="--shed-after-ms values to run with (100: the default)")
    parser.add_argument("--large-rows", type=int, default=100_000, help="rows of the large requests")
    return parser.parse_args()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="regrow-overload-"))
    _, version = trained_iris(work)
    payload = infer_body(args.batch).encode()
    budgets = [int(b) for b in args.budgets.split(",")] + [OFF]
    loads = [float(x) for x in args.loads.split(",")]
    lines: list[str] = []
    runs: dict[tuple[int, float], Tally] = {}
    capacity = 0.0
    for budget in budgets:
        port = free_port()
        proc = serve(regrow_serve(work, version, port, "--shed-after-ms", str(budget)))
        try:
            wait_up(f"http://127.0.0.1:{port}/v2/models/iris/infer", payload.decode())
            if not capacity:
                uvloop.run(run(port, payload, None, 2.0))  # warm up
                tally, elapsed = uvloop.run(run(port, payload, None, args.seconds))
                capacity = tally.codes["200"] / elapsed
                lines.append(row("closed loop, 8 conns", None, tally, elapsed))
            for load in loads:
                tally, elapsed = uvloop.run(run(port, payload, load * capacity, args.seconds))
                runs[budget, load] = tally
                lines.append(row(name(budget), load, tally, elapsed))
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        f"\nOverload: iris, {args.batch} rows per request, one server worker on CPU 0, the generator on CPU 1, "
        f"{args.seconds:.0f} s per run; capacity {capacity:.0f} answers/s\n"
    )
    print(f"{'server':<22}{'offered':>9}{'req/s':>8}{'200/s':>8}{'shed':>7}{'unsent':>8}{'failed':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'late ms':>9}{'probe p99':>10}{'probe max':>10}")  # fmt: skip
    print("\n".join(lines))
    print(
        "\noffered: load as a multiple of capacity; shed: share answered 429 (Retry-After: 1); unsent: share the "
        f"generator could not send, its {MAX_CONNECTIONS} connections all waiting; failed: share with no answer "
        f"within {TIMEOUT:.0f} s, a refused connection, or another status (503: past the server's cap); p50/p99: "
        "latency of the 200s from when each was due; late: how late the generator sent them (connecting "
        "included); probe: GET /v2/health/ready on a new connection every 100 ms, ms\n"
    )
    unloaded, top = min(loads), max(loads)
    for budget in budgets:
        base, busy = runs[budget, unloaded], runs[budget, top]
        print(
            f"{name(budget)}, {top:g}x capacity: the 200s' p99 {pct(busy.latencies, 99):.0f} ms against "
            f"{pct(base.latencies, 99):.1f} ms at {unloaded:g}x; {busy.codes['429'] / busy.total:.0%} shed, "
            f"{busy.unsent / busy.total:.0%} unsent, {busy.failed / busy.total:.0%} failed; "
            f"slowest health probe {max(busy.probes) * 1e3:.0f} ms"
        )
    print(
        f"\nHealth probes while one client sends {args.large_rows:,}-row requests back to back, {args.seconds:.0f} s:"
    )
    large = infer_body(args.large_rows).encode()
    for max_rows in (DEFAULT_SERVER.max_rows, args.large_rows):
        port = free_port()
        proc = serve(
            regrow_serve(work, version, port, "--max-rows", str(max_rows), "--max-body-bytes", str(len(large)))
        )
        try:
            wait_up(f"http://127.0.0.1:{port}/v2/models/iris/infer", payload.decode())
            tally, took = uvloop.run(large_requests(port, large, args.seconds))
        finally:
            proc.terminate()
            proc.wait(10)
        print(
            f"  --max-rows {max_rows}: answered {dict(tally.codes)} in {pct(took, 50):.0f} ms each (median); "
            f"probes p50 {pct(tally.probes, 50):.0f} ms, p99 {pct(tally.probes, 99):.0f} ms, "
            f"max {max(tally.probes) * 1e3:.0f} ms"
        )
    shutil.rmtree(work, ignore_errors=True)


def name(budget: int) -> str:
    return f"shed after {budget} ms" if budget != OFF else "shedding off"


def row(name: str, load: float | None, tally: Tally, elapsed: float) -> str:
    total, ok, shed = tally.total, tally.codes["200"], tally.codes["429"]
    offered = "-" if load is None else f"{load:g}x"
    latency = f"{pct(tally.latencies, 50):>9.1f}{pct(tally.latencies, 99):>9.1f}{pct(tally.late, 99):>9.1f}"
    probes = f"{pct(tally.probes, 99):>10.1f}{max(tally.probes, default=0) * 1e3:>10.1f}"
    return (
        f"{name:<22}{offered:>9}{total / elapsed:>8.0f}{ok / elapsed:>8.0f}{shed / total:>7.1%}"
        f"{tally.unsent / total:>8.1%}{tally.failed / total:>8.1%}{latency}{probes}"
    )


if __name__ == "__main__":
    os.sched_setaffinity(0, {1})
    main()
