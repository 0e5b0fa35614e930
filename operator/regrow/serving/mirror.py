"""Shadow traffic, both sides of it.

A stable pod mirrors a sampled share of the inference requests it answered with 200 to the candidate's
shadow pods (the ``<name>-shadow`` Service, by its fully qualified name: ``REGROW_SHADOW_URL``) and compares
their answers with its own, row by row. A shadow pod answers the mirrored requests with its predictions
alone (``{"model_version", "predictions"}``, whatever the protocol), counts no drift bins and logs nothing;
a client of the ModelDeployment's Service never reaches it.

- Neither side trusts a stranger. Any pod that carries the shadow pods' labels joins the shadow Service, so
  each connection a stable pod opens to it begins with a handshake under the deployment's key (the Secret
  that also signs prediction ids): the stable pod asks for the offer with a fresh challenge, and the answer
  must carry a proof (an HMAC of the challenge and the offer) that only a holder of the key can make. No
  request body is sent on a connection before its proof checks out; one that fails is counted
  ``untrusted``. Each request mirrored on it carries a pass bound to the challenge, which the shadow pod
  checks: without one, it answers 403 and counts nothing, so no client sending requests straight to the
  shadow Service reaches the model or the counters a shadow step is judged on. (A stranger that could
  reach a genuine shadow pod could relay its proofs: the chart's NetworkPolicy lets only the stable pods
  reach the shadow pods.)
- What to mirror: every POLL_SECONDS the stable pod asks the shadow Service for its offer
  (``GET /v2/shadow``: the candidate's version and the percent of requests it asks for). No offer, nothing
  is mirrored; a refused connection, or an offer without a valid proof, withdraws the offer until the next
  poll.
- A client never waits for the candidate: a request is sampled and queued as it is answered, and WORKERS
  tasks on the server's event loop send the queued ones after the answers are written, each on a kept-alive
  connection (opened again after REQUESTS_PER_CONNECTION, so that kube-proxy spreads them over the shadow
  pods), with a deadline. What is held is bounded in count and in bytes: a body over MAX_MIRRORED_BYTES is
  not mirrored, and one that would take the queue past QUEUE requests, or the bodies queued and being sent
  past QUEUE_BYTES, is dropped (counted), so a hung candidate costs the stable pod at most QUEUE_BYTES of
  bodies, whatever its clients send.
- Counted per candidate version, the offer's (``regrow_shadow_*``): requests answered, failed (an answer other
  than 200 or 429, none within TIMEOUT_SECONDS, one that is unreadable or names another version), dropped (too
  large, by the full queue, or shed by the candidate with 429), unreachable and untrusted (sent to no pod
  that proved it holds the key); how long the answered and failed ones
  took (``regrow_shadow_request_duration_seconds``: the candidate's latency gate at a shadow step reads this,
  not the shadow pods' own histogram, which counts whatever reaches them); the rows compared,
  and those whose label agreed (classifiers), or the absolute differences and the stable version's
  magnitudes (regressors).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import random
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from regrow.serving.metrics import Latency
from regrow.telemetry import SHED

log = logging.getLogger(__name__)

SHADOW_PATH = "/v2/shadow"
POLL_SECONDS = 5.0
QUEUE = 1000
QUEUE_BYTES = 32 * 1024 * 1024  # the bodies queued and being sent, at most
MAX_MIRRORED_BYTES = 1024 * 1024  # a larger request is answered but not mirrored
WORKERS = 4
TIMEOUT_SECONDS = 5.0
REQUESTS_PER_CONNECTION = 1000
MAX_HEAD = 64 * 1024
MAX_ANSWER = 16 * 1024 * 1024
CHALLENGE_HEADER = b"regrow-shadow-challenge"  # the stable pod's, asking for the offer
PROOF_HEADER = b"regrow-shadow-proof"  # the shadow pod's, answering it
PASS_HEADER = b"regrow-mirror-pass"  # on each mirrored request
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class ShadowKey:
    """The deployment's key as both sides of the shadow use it (each MAC names its purpose, so that neither a
    proof, a pass nor a prediction id's tag stands for another). Each side proves itself with the key, and
    takes the key before a rotation (``previous``) too, so that a roll to a new key does not cut the shadow."""

    key: bytes = field(repr=False)
    previous: bytes | None = field(default=None, repr=False)

    def _mac(self, key: bytes, purpose: bytes, *parts: bytes) -> bytes:
        message = b"\0".join((purpose, *parts))
        return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=")

    def _macs(self, purpose: bytes, *parts: bytes) -> list[bytes]:
        return [self._mac(key, purpose, *parts) for key in (self.key, self.previous) if key is not None]

    @staticmethod
    def challenge() -> bytes:
        return base64.urlsafe_b64encode(os.urandom(18))

    def proof(self, challenge: bytes, offer: bytes) -> bytes:
        """The shadow pod's answer to ``challenge``, for the ``offer`` it makes with it."""
        return self._mac(self.key, b"regrow-shadow-offer", challenge, offer)

    def proves(self, challenge: bytes, offer: bytes, proof: bytes | None) -> bool:
        return proof is not None and any(
            hmac.compare_digest(proof, mac) for mac in self._macs(b"regrow-shadow-offer", challenge, offer)
        )

    def mirror_pass(self, challenge: bytes) -> bytes:
        """What each request the stable pod mirrors on the connection of ``challenge`` carries."""
        return challenge + b"." + self._mac(self.key, b"regrow-mirror", challenge)

    def admits(self, token: bytes | None) -> bool:
        if token is None:
            return False
        challenge = token.partition(b".")[0]
        return any(
            hmac.compare_digest(token, challenge + b"." + mac) for mac in self._macs(b"regrow-mirror", challenge)
        )


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

    def __init__(self, model: str, classifier: bool, queued: Callable[[], tuple[int, int]]) -> None:
        self.model, self.classifier, self.queued = model, classifier, queued
        self.version = ""  # the stable version, once loaded
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rows: Counter[str] = Counter()
        self.agreed: defaultdict[str, float] = defaultdict(float)  # agreed rows, or summed absolute differences
        self.magnitude: defaultdict[str, float] = defaultdict(float)
        self.latency: defaultdict[str, Latency] = defaultdict(Latency)

    def add(self, candidate: str, outcome: str, seconds: float | None = None) -> None:
        """Count a request of ``outcome``; ``seconds``: how long the candidate took to answer it, or to fail."""
        self.requests[candidate, outcome] += 1
        if seconds is not None:
            self.latency[candidate].observe(seconds)

    def compared(self, candidate: str, counts: tuple[int, float, float], seconds: float) -> None:
        rows, agreed, magnitude = counts
        self.add(candidate, "answered", seconds)
        self.rows[candidate] += rows
        self.agreed[candidate] += agreed
        self.magnitude[candidate] += magnitude

    def collect(self) -> Iterator[Metric]:
        labels, output = ["model", "version", "candidate"], "label" if self.classifier else "value"
        requests = CounterMetricFamily(
            "regrow_shadow_requests", "Requests mirrored to a shadow candidate, by outcome: answered, failed (an "
            "answer other than 200 or 429, late, unreadable or another version's), dropped (too large, the queue "
            "was full, or the candidate shed it), unreachable or untrusted (no pod proved it holds the key).",
            labels=[*labels, "outcome"],
        )  # fmt: skip
        for (candidate, outcome), count in sorted(self.requests.items()):
            requests.add_metric([self.model, self.version, candidate, outcome], count)
        yield requests
        latency = HistogramMetricFamily(
            "regrow_shadow_request_duration_seconds", "Time a shadow candidate took to answer, or to fail, the "
            "requests mirrored to it, as the stable pod timed them.",
            labels=labels,
        )  # fmt: skip
        for candidate, histogram in sorted(self.latency.items()):
            histogram.add_to(latency, [self.model, self.version, candidate])
        yield latency
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
        requests_queued, bytes_held = self.queued()
        queue = GaugeMetricFamily("regrow_shadow_queue_requests", "Requests waiting to be mirrored.", labels=labels[:2])
        queue.add_metric([self.model, self.version], requests_queued)
        held = GaugeMetricFamily("regrow_shadow_queue_bytes", "Bytes of the request bodies waiting to be mirrored "
                                 "or being sent.", labels=labels[:2])  # fmt: skip
        held.add_metric([self.model, self.version], bytes_held)
        yield from (queue, held)

    def describe(self) -> list[Metric]:
        return []


class Mirror:
    """The stable pod's side: the offer it follows, its queue, and the tasks that send and compare."""

    def __init__(self, url: str, model: str, key: ShadowKey, classifier: bool = True) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the shadow URL must be http://host[:port], not {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.model, self.key = model, key
        self.offer: ShadowOffer | None = None
        self.queue: asyncio.Queue[tuple[str, Mirrored]] = asyncio.Queue(QUEUE)
        self.held = 0  # bytes of the bodies queued or being sent
        self.counts = ShadowCounts(model, classifier, lambda: (self.queue.qsize(), self.held))
        self.tasks: list[asyncio.Task[None]] = []

    def sample(self, size: int, make: Callable[[], Mirrored]) -> None:
        """Queue the request of a body of ``size`` bytes that ``make()`` builds, if the offer samples it; drop it,
        counted, if it is too large or the queue is full, in count or in bytes."""
        offer = self.offer
        if offer is None or random.random() * 100 >= offer.percent:
            return
        if size > MAX_MIRRORED_BYTES or self.held + size > QUEUE_BYTES or self.queue.full():
            self.counts.add(offer.version, "dropped")
            return
        self.queue.put_nowait((offer.version, make()))
        self.held += size

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
            offer, _ = await self._handshake((reader, writer))
        finally:
            writer.close()
        return offer

    async def _handshake(self, connection: Connection) -> tuple[ShadowOffer | None, bytes]:
        """Ask for the offer with a fresh challenge: the offer, if the answer proves its sender holds the key
        and is for this model (else None), and the pass for the requests mirrored on this connection."""
        challenge = self.key.challenge()
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n" % (
            SHADOW_PATH.encode(), self.host.encode(), CHALLENGE_HEADER, challenge
        )  # fmt: skip
        try:
            status, body, headers = await asyncio.wait_for(_exchange(*connection, head), TIMEOUT_SECONDS)
            proven = status == 200 and self.key.proves(challenge, body, headers.get(PROOF_HEADER.decode(), "").encode())
            offer = ShadowOffer.model_validate_json(body) if proven else None
        except (OSError, TimeoutError, Unreadable, ValidationError, asyncio.IncompleteReadError):
            offer = None
        return (offer if offer is not None and offer.model == self.model else None), self.key.mirror_pass(challenge)

    async def _work(self) -> None:
        connection: Connection | None = None
        used, token = 0, b""
        while True:
            candidate, item = await self.queue.get()
            try:
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
                    offer, token = await self._handshake(connection)
                    if offer is None or offer.version != candidate:  # a stranger, or no longer this candidate's
                        self.counts.add(candidate, "untrusted")
                        connection[1].close()
                        connection = None
                        continue
                used += 1
                if not await self._send(connection, candidate, item, token):
                    connection[1].close()
                    connection = None
            finally:
                self.held -= len(item.body)

    async def _send(self, connection: Connection, candidate: str, item: Mirrored, token: bytes) -> bool:
        """Send one request and compare the answer; whether the connection may carry another."""
        started = time.perf_counter()
        try:
            status, body, headers = await asyncio.wait_for(_exchange(*connection, _request(self.host, item, token)),
                                                           TIMEOUT_SECONDS)  # fmt: skip
            closing = headers.get("connection", "").lower() == "close"
            if status == SHED:  # it could not keep up: not its answer's fault, and it answered nothing
                self.counts.add(candidate, "dropped")
                return not closing
            if status != 200:
                raise Unreadable(f"the candidate answered {status}")
            answer = orjson.loads(body)
            if not isinstance(answer, dict) or answer.get("model_version") != candidate:
                raise Unreadable("the answer is not the offered version's")  # credited to no version it names
            counts = compare(item.predicted, answer.get("predictions"), self.counts.classifier)
        except (OSError, TimeoutError, Unreadable, orjson.JSONDecodeError, asyncio.IncompleteReadError):
            self.counts.add(candidate, "failed", time.perf_counter() - started)
            return False
        self.counts.compared(candidate, counts, time.perf_counter() - started)
        return not closing


def _request(host: str, item: Mirrored, token: bytes) -> bytes:
    binary = b"inference-header-content-length: %s\r\n" % item.binary if item.binary is not None else b""
    head = (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s: %s\r\n%s\r\n"
        % (
            urllib.parse.quote(item.path).encode(),
            host.encode(),
            len(item.body),
            PASS_HEADER,
            token,
            binary,
        )
    )
    return head + item.body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    """Send ``request``; the answer's status, body and headers (names in lower case)."""
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
    return int(parts[1]), body, headers
