"""Prediction ids the server issues, and the feedback that may label them.

A logged prediction's id is made by the server, never by the client: ``rg1.<payload>.<tag>``, where the
payload (base64url JSON) holds the model version, the request's row count, the issue time, a nonce, the
process that issued it (which grades its labels once: regrow.serving.labels) and, for a request of at most
MAX_PREDICTED_ROWS rows whose id stays within MAX_ID_CHARS, the predictions; the tag
is an HMAC-SHA256 of it under the deployment's key (``REGROW_FEEDBACK_KEY``, from a Secret the
operator creates; after a rotation, an id of the key before, ``REGROW_FEEDBACK_PREVIOUS_KEY``, still
verifies). Any replica, and any later version, verifies an id without shared state; a client can
neither invent an id nor label a prediction it was not given.

Feedback is accepted only whole: every item must name a valid id and carry a label the model can have (a
class of the model compared by JSON type, no coercion; a finite number for a regressor), a list of exactly
as many labels as the id's rows for a request of several rows. Otherwise the request is a 400 that names
the first bad item and says why, without echoing what it held. An id given more than once in a request is
folded into its last item first, so that replays cost one check and are written once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from regrow.serving.metrics import Latency

PREFIX = "rg1"
MAX_ITEMS = 1000  # feedback items in one request
MAX_ID_CHARS = 512
MAX_AGE_SECONDS = 30 * 24 * 3600  # how long after its prediction a label is taken
MAX_PREDICTED_ROWS = 16  # an id carries its rows' predictions up to this many: labels then grade them per version
FEEDBACK_SHARE = 0.25  # of the event loop's time, about, that feedback may take before it is shed
RECENT_IDS = 100_000  # the labels a process remembers accepting, to drop replays unchecked
MAX_SKEW_SECONDS = 60  # an id issued later than this after now (by this process's clock) is refused
MAX_LABEL = 1e15  # a regressor's label, in magnitude at most: sums of errors stay finite and exact enough
_TAG_BYTES = 16


class Rejected(ValueError):
    """Feedback refused; ``reason`` is the metric label, the message what the client is told."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason, self.status = reason, status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    """What a verified id says of its prediction."""

    version: str
    rows: int
    issued: int
    predicted: tuple[Any, ...] | None = None  # what the server predicted for each row, when the id carries it
    nonce: str = ""  # the id's own random part
    issuer: str | None = None  # the process that issued it, which grades its labels (regrow.serving.labels)


@dataclass(frozen=True)
class Signer:
    key: bytes = field(repr=False)  # signs ids, and verifies them
    previous: bytes | None = field(default=None, repr=False)  # the key before a rotation: verifies, signs none

    @classmethod
    def from_env(cls, value: str | None, previous: str | None = None) -> Signer:
        """The deployment's key (and the one before it); without one, a key of this process's own (ids verify
        only here)."""
        return cls(value.encode() if value else os.urandom(32), previous.encode() if previous else None)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return (self.key,) if self.previous is None else (self.key, self.previous)

    def _tag(self, payload: str, key: bytes | None = None) -> str:
        mac = hmac.new(key or self.key, f"{PREFIX}.{payload}".encode(), hashlib.sha256)
        return _b64(mac.digest()[:_TAG_BYTES])

    def issue(self, version: str, rows: int, now: float, predicted: list[Any] | None = None,
              issuer: str = "") -> str:  # fmt: skip
        """An id for a prediction of ``rows`` rows by ``version``, issued by the process ``issuer``, carrying
        ``predicted`` (one per row) when it is short enough."""
        nonce = _b64(os.urandom(9))
        fields: list[Any] = [version, rows, int(now), f"{issuer}.{nonce}" if issuer else nonce]
        if predicted is not None and len(predicted) == rows <= MAX_PREDICTED_ROWS:
            token = self._sign([*fields, predicted])
            if len(token) <= MAX_ID_CHARS:
                return token
        return self._sign(fields)

    def _sign(self, fields: list[Any]) -> str:
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{PREFIX}.{payload}.{self._tag(payload)}"

    def verify(self, token: object, now: float, max_age: float = MAX_AGE_SECONDS) -> Claims:
        if not isinstance(token, str) or len(token) > MAX_ID_CHARS or token.count(".") != 2:
            raise Rejected("bad_id", "id is not a prediction id this server issued")
        prefix, payload, tag = token.split(".")
        if prefix != PREFIX or not any(hmac.compare_digest(tag.encode(), self._tag(payload, key).encode())
                                       for key in self.keys):  # fmt: skip
            raise Rejected("bad_id", "id is not a prediction id this server issued")
        version, rows, issued, nonce, *rest = json.loads(_unb64(payload))  # signed by us: well formed
        issuer = str(nonce).rpartition(".")[0]  # none in an id issued before ids named their issuer
        if now - issued > max_age:
            raise Rejected("expired", f"the prediction is older than the label horizon ({max_age / 3600:g}h)")
        if issued - now > MAX_SKEW_SECONDS:  # only a holder of the key could make one: never valid
            raise Rejected("future", "the id was issued in the future")
        predicted = tuple(rest[0]) if rest else None
        return Claims(str(version), int(rows), int(issued), predicted, str(nonce), issuer or None)


def _valid(label: object, classes: list[Any] | None) -> bool:
    if classes is None:  # a regressor: a finite number of bounded size, not a boolean
        return type(label) in (int, float) and math.isfinite(label) and abs(label) <= MAX_LABEL  # type: ignore[arg-type]
    return any(type(label) is type(c) and label == c for c in classes)


def check_label(label: object, classes: list[Any] | None, rows: int) -> None:
    """Raise unless ``label`` fits a prediction of ``rows`` rows: one label, or a list of ``rows``."""
    what = "one of the model's classes" if classes is not None else f"a finite number of at most {MAX_LABEL:g}"
    if isinstance(label, list):
        if len(label) != rows:
            raise Rejected("bad_label", f"a list of labels must have one per row of the prediction ({rows})")
        if not all(_valid(item, classes) for item in label):
            raise Rejected("bad_label", f"every label must be {what}")
    elif rows != 1:
        raise Rejected("bad_label", f"the prediction has {rows} rows: give a list of {rows} labels")
    elif not _valid(label, classes):
        raise Rejected("bad_label", f"the label must be {what}")


@dataclass(frozen=True)
class Labelled:
    claims: Claims
    record: dict[str, Any]  # as the log writes it: {"id", "label", "time"}, and "labeller" when one gave it


class Share:
    """How much of the event loop feedback took lately (seconds, decaying over ``window``): past ``share`` of
    it, feedback is shed (429), so that however much of it clients send, inference keeps the rest."""

    def __init__(self, share: float = FEEDBACK_SHARE, window: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.share, self.window, self.clock = share, window, clock
        self.spent, self.at = 0.0, clock()

    def _decay(self) -> None:
        now = self.clock()
        self.spent *= math.exp(-(now - self.at) / self.window)
        self.at = now

    def exhausted(self) -> bool:
        self._decay()
        return self.spent > self.share * self.window

    def charge(self, seconds: float) -> None:
        self._decay()
        self.spent += seconds


class Recent:
    """The labels this process accepted lately, by id: a bounded memory, the oldest forgotten first. An item
    that repeats one (the same id, the same label) is neither checked nor written again, so that a batch
    replayed costs a hash per item; ``repeated`` counts them."""

    def __init__(self, most: int = RECENT_IDS) -> None:
        self.most = most
        self.labels: dict[bytes, bytes] = {}  # digest of the id: digest of its label
        self.repeated = 0

    @staticmethod
    def _digests(token: str, label: Any, labeller: str | None) -> tuple[bytes, bytes]:
        return (hashlib.blake2b(f"{labeller or ''}\0{token}".encode(), digest_size=16).digest(),
                hashlib.blake2b(json.dumps(label).encode(), digest_size=8).digest())  # fmt: skip

    def repeats(self, token: str, label: Any, labeller: str | None = None) -> bool:
        """Whether ``labeller`` (None: an anonymous client) gave this label for this id lately."""
        if not _flat(label):  # not a label at all: left to the checks, which refuse it
            return False
        key, value = self._digests(token, label, labeller)
        if self.labels.get(key) != value:
            return False
        self.repeated += 1
        return True

    def remember(self, items: list[Labelled]) -> None:
        for item in items:
            key, value = self._digests(item.record["id"], item.record["label"], item.record.get("labeller"))
            self.labels.pop(key, None)
            self.labels[key] = value
        while len(self.labels) > self.most:
            del self.labels[next(iter(self.labels))]


def _flat(label: object) -> bool:
    """A label's shape, at most: a scalar, or a list of scalars."""
    return all(isinstance(v, str | int | float | bool) for v in (label if isinstance(label, list) else [label]))


def parse_feedback(parsed: Any, signer: Signer, classes: list[Any] | None, now: float,
                   max_age: float = MAX_AGE_SECONDS, recent: Recent | None = None,
                   labeller: str | None = None) -> list[Labelled]:  # fmt: skip
    """``{"id", "label"}`` or ``{"feedback": [such objects]}``, every item valid, or Rejected for the first
    that is not. An id given more than once is folded into its last item before any is verified (so that a
    batch of one id repeated costs one check and is written once), and an item that repeats a label ``recent``
    holds is left out unchecked: the result has one item per new label, in the order of their last items, each
    recording the ``labeller`` that gave it (none: an anonymous client)."""
    single = not (isinstance(parsed, dict) and "feedback" in parsed)
    items = [parsed] if single else parsed["feedback"]
    if not isinstance(items, list) or not items:
        raise Rejected("bad_request", 'feedback is {"id": ..., "label": ...} or {"feedback": [such objects]}')
    if len(items) > MAX_ITEMS:
        raise Rejected("too_many_items", f"at most {MAX_ITEMS} feedback items in one request")
    last: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"id", "label"} or not isinstance(item["id"], str):
            where = "feedback" if single else f"feedback[{i}]"
            raise Rejected("bad_request", f'{where}: an item is {{"id": <the prediction_id>, "label": ...}}')
        last.pop(item["id"], None)  # so that the order is the last items'
        last[item["id"]] = i
    out = []
    for i in last.values():
        item = items[i]
        if recent is not None and recent.repeats(item["id"], item["label"], labeller):
            continue
        try:
            claims = signer.verify(item["id"], now, max_age)
            check_label(item["label"], classes, claims.rows)
        except Rejected as error:
            raise Rejected(error.reason, f"{'feedback' if single else f'feedback[{i}]'}: {error}") from None
        record = {"id": item["id"], "label": item["label"], "time": now}
        out.append(Labelled(claims, record | {"labeller": labeller} if labeller else record))
    return out


class FeedbackCounts:
    """``regrow_feedback_total{model,version,outcome,reason}``: accepted, repeated (a label this process
    accepted lately, not written again; under the serving version), dropped (queue full) or rejected, counted
    per item (a rejected request counts once, under the serving version), and how long feedback
    requests took. (The labels' grades are counted where each id is graded once: regrow.serving.labels.)"""

    def __init__(self, model: str) -> None:
        self.model = model
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.latency = Latency()  # of feedback requests, as the server timed them

    def add(self, version: str, outcome: str, reason: str, items: int = 1) -> None:
        self.counts[(version, outcome, reason)] += items

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_feedback", "Feedback items by outcome and reason.", labels=["model", "version", "outcome", "reason"]
        )
        for (version, outcome, reason), value in sorted(self.counts.items()):
            family.add_metric([self.model, version, outcome, reason], value)
        latency = HistogramMetricFamily(
            "regrow_feedback_request_duration_seconds",
            "Time to answer a feedback request (shed, refused or accepted), from its first byte.",
            labels=["model"],
        )
        self.latency.add_to(latency, [self.model])
        yield from (family, latency)

    def describe(self) -> list[Metric]:
        return []
