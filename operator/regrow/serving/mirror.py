"""Shadow traffic, both sides of it.

A stable pod mirrors a sampled share of the inference requests it answered with 200 to the candidate's
shadow pods (the ``<name>-shadow`` Service, ``REGROW_SHADOW_URL``) and compares their answers with its own,
row by row. A shadow pod answers every inference request with its predictions alone
(``{"model_version", "predictions"}``, whatever the protocol), counts no drift bins and logs nothing: all
that reaches it is taken for mirrored traffic, so no header a client could set decides what is counted
where, and a client of the ModelDeployment's Service never reaches it.

- What to mirror: every POLL_SECONDS the stable pod asks the shadow Service for its offer
  (``GET /v2/shadow``: the candidate's version and the percent of requests it asks for). No offer, nothing
  is mirrored; a refused connection withdraws the offer until the next poll.
- A client never waits for the candidate: a request is sampled and queued (at most QUEUE) as it is
  answered, a full queue drops it (counted), and WORKERS tasks on the server's event loop send the queued
  ones after the answers are written, each on a kept-alive connection (opened again after
  REQUESTS_PER_CONNECTION, so that kube-proxy spreads them over the shadow pods), with a deadline.
- Counted per candidate version (``regrow_shadow_*``): requests answered, failed (an answer other than
  200 or 429, none within TIMEOUT_SECONDS, or one that is unreadable), dropped (by the full queue, or shed
  by the candidate with 429) and unreachable; the rows compared,
  and those whose label agreed (classifiers), or the absolute differences and the stable version's
  magnitudes (regressors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from regrow.telemetry import SHED

log = logging.getLogger(__name__)

SHADOW_PATH = "/v2/shadow"
POLL_SECONDS = 5.0
QUEUE = 1000
WORKERS = 4
TIMEOUT_SECONDS = 5.0
REQUESTS_PER_CONNECTION = 1000
MAX_HEAD = 64 * 1024
MAX_ANSWER = 16 * 1024 * 1024
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ShadowOffer(BaseModel):
    """What a shadow pod asks of the stable pods: mirror ``percent`` of the requests of ``model`` to it, which
    it answers with ``version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: str
    percent: int = Field(ge=1, le=100)


@dataclass(frozen=True, slots=True)
class Mirrored:
    """One answered request, as it is to be sent again: its path, body and binary-extension header, and what
    the stable version predicted for each row."""

    path: str
    body: bytes
    binary: bytes | None
    predicted: list[Any]


class Unreadable(Exception):
    """The candidate's answer is not one a shadow pod gives."""


def compare(stable: list[Any], candidate: object, classifier: bool) -> tuple[int, float, float]:
    """Rows compared, and the rows that agree (a classifier's labels) or the summed absolute differences and
    the stable values' summed magnitudes (a regressor's): Unreadable when the answers do not pair up."""
    if not isinstance(candidate, list) or len(candidate) != len(stable):
        raise Unreadable("the candidate predicted another number of rows")
    if classifier:
        agreed = np.asarray(stable, dtype=object) == np.asarray(candidate, dtype=object)
        return len(stable), float(np.count_nonzero(agreed)), 0.0
    try:
        ours, theirs = np.asarray(stable, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    except (TypeError, ValueError):
        raise Unreadable("the candidate's predictions are not numbers") from None
    if ours.shape != theirs.shape or not np.isfinite(theirs).all():
        raise Unreadable("the candidate's predictions do not pair up with the stable version's")
    return len(stable), float(np.abs(theirs - ours).sum()), float(np.abs(ours).sum())


class ShadowCounts:
    """The comparisons, by candidate version: ``regrow_shadow_requests_total{outcome}``, and the rows compared,
    agreed (classifiers) or their absolute differences and the stable values' magnitudes (regressors)."""

    def __init__(self, model: str, classifier: bool, queued: Any) -> None:
        self.model, self.classifier, self.queued = model, classifier, queued
        self.version = ""  # the stable version, once loaded
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rows: Counter[str] = Counter()
        self.agreed: defaultdict[str, float] = defaultdict(float)  # agreed rows, or summed absolute differences
        self.magnitude: defaultdict[str, float] = defaultdict(float)

    def add(self, candidate: str, outcome: str) -> None:
        self.requests[candidate, outcome] += 1

    def compared(self, candidate: str, counts: tuple[int, float, float]) -> None:
        rows, agreed, magnitude = counts
        self.requests[candidate, "answered"] += 1
        self.rows[candidate] += rows
        self.agreed[candidate] += agreed
        self.magnitude[candidate] += magnitude

    def collect(self) -> Iterator[Metric]:
        labels, output = ["model", "version", "candidate"], "label" if self.classifier else "value"
        requests = CounterMetricFamily(
            "regrow_shadow_requests", "Requests mirrored to a shadow candidate, by outcome: answered, failed (an "
            "answer other than 200 or 429, late or unreadable), dropped (the queue was full, or the candidate shed "
            "it) or unreachable.",
            labels=[*labels, "outcome"],
        )  # fmt: skip
        for (candidate, outcome), count in sorted(self.requests.items()):
            requests.add_metric([self.model, self.version, candidate, outcome], count)
        yield requests
        per_row: list[tuple[str, str, Mapping[str, float]]] = [
            ("regrow_shadow_compared_rows", "Rows both versions predicted, compared.", self.rows)
        ]
        if self.classifier:
            per_row.append(("regrow_shadow_agreed_rows", "Compared rows the candidate labelled as the stable version "
                            "did.", self.agreed))  # fmt: skip
        else:
            per_row.append(("regrow_shadow_absolute_difference", "The compared rows' absolute differences between "
                            "the two versions' predictions, summed.", self.agreed))  # fmt: skip
            per_row.append(("regrow_shadow_stable_magnitude", "The compared rows' absolute values as the stable "
                            "version predicted them, summed.", self.magnitude))  # fmt: skip
        for name, documentation, values in per_row:
            family = CounterMetricFamily(name, documentation, labels=[*labels, "output"])
            for candidate in sorted(self.rows):
                family.add_metric([self.model, self.version, candidate, output], values[candidate])
            yield family
        queue = GaugeMetricFamily("regrow_shadow_queue_requests", "Requests waiting to be mirrored.", labels=labels[:2])
        queue.add_metric([self.model, self.version], self.queued())
        yield queue

    def describe(self) -> list[Metric]:
        return []


class Mirror:
    """The stable pod's side: the offer it follows, its queue, and the tasks that send and compare."""

    def __init__(self, url: str, model: str, classifier: bool = True) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the shadow URL must be http://host[:port], not {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.model = model
        self.offer: ShadowOffer | None = None
        self.queue: asyncio.Queue[tuple[str, Mirrored]] = asyncio.Queue(QUEUE)
        self.counts = ShadowCounts(model, classifier, self.queue.qsize)
        self.tasks: list[asyncio.Task[None]] = []

    def sample(self, make: Any) -> None:
        """Queue the request ``make()`` builds, if the offer samples it; drop it, counted, if the queue is full."""
        offer = self.offer
        if offer is None or random.random() * 100 >= offer.percent:
            return
        try:
            self.queue.put_nowait((offer.version, make()))
        except asyncio.QueueFull:
            self.counts.add(offer.version, "dropped")

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._poll()), *(asyncio.create_task(self._work()) for _ in range(WORKERS))]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connect(self) -> Connection:
        return await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)

    async def _poll(self) -> None:
        while True:
            self.offer = await self._ask()
            await asyncio.sleep(POLL_SECONDS)

    async def _ask(self) -> ShadowOffer | None:
        try:
            reader, writer = await asyncio.wait_for(self._connect(), TIMEOUT_SECONDS)
        except (OSError, TimeoutError):
            return None  # no shadow pod ready: nothing to mirror
        try:
            head = f"GET {SHADOW_PATH} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
            status, body, _ = await asyncio.wait_for(_exchange(reader, writer, head), TIMEOUT_SECONDS)
            offer = ShadowOffer.model_validate_json(body) if status == 200 else None
        except (OSError, TimeoutError, Unreadable, ValidationError, asyncio.IncompleteReadError):
            offer = None
        finally:
            writer.close()
        return offer if offer is not None and offer.model == self.model else None

    async def _work(self) -> None:
        connection: Connection | None = None
        used = 0
        while True:
            candidate, item = await self.queue.get()
            if connection is not None and used >= REQUESTS_PER_CONNECTION:
                connection[1].close()
                connection = None
            if connection is None:
                try:
                    connection, used = await asyncio.wait_for(self._connect(), TIMEOUT_SECONDS), 0
                except (OSError, TimeoutError):
                    self.counts.add(candidate, "unreachable")
                    self.offer = None  # gone: until the next poll finds one
                    continue
            used += 1
            if not await self._send(connection, candidate, item):
                connection[1].close()
                connection = None

    async def _send(self, connection: Connection, candidate: str, item: Mirrored) -> bool:
        """Send one request and compare the answer; whether the connection may carry another."""
        try:
            status, body, closing = await asyncio.wait_for(_exchange(*connection, _request(self.host, item)),
                                                           TIMEOUT_SECONDS)  # fmt: skip
            if status == SHED:  # it could not keep up: not its answer's fault, and it answered nothing
                self.counts.add(candidate, "dropped")
                return not closing
            if status != 200:
                raise Unreadable(f"the candidate answered {status}")
            answer = orjson.loads(body)
            if not isinstance(answer, dict) or not isinstance(answer.get("model_version"), str):
                raise Unreadable("the candidate's answer names no version")
            counts = compare(item.predicted, answer.get("predictions"), self.counts.classifier)
        except (OSError, TimeoutError, Unreadable, orjson.JSONDecodeError, asyncio.IncompleteReadError):
            self.counts.add(candidate, "failed")
            return False
        self.counts.compared(answer["model_version"], counts)
        return not closing


def _request(host: str, item: Mirrored) -> bytes:
    binary = b"inference-header-content-length: %s\r\n" % item.binary if item.binary is not None else b""
    head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        urllib.parse.quote(item.path).encode(),
        host.encode(),
        len(item.body),
        binary,
    )
    return head + item.body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes, bool]:  # fmt: skip
    """Send ``request``; the answer's status, body and whether the server closes the connection after it."""
    writer.write(request)
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Unreadable("the answer's head is too long") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Unreadable("the answer has no status line")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_ANSWER:
        raise Unreadable("the answer has no length, or one past the limit")
    body = await reader.readexactly(int(length))
    return int(parts[1]), body, headers.get("connection", "").lower() == "close"
