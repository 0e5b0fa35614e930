"""Prediction ids the server issues, and the feedback that may label them.

A logged prediction's id is made by the server, never by the client: ``rg1.<payload>.<tag>``, where the
payload (base64url JSON) holds the model version, the request's row count, the issue time, a nonce and, for
a request of at most MAX_PREDICTED_ROWS rows whose id stays within MAX_ID_CHARS, the predictions; the tag
is an HMAC-SHA256 of it under the deployment's key (``REGROW_FEEDBACK_KEY``, from a Secret the
operator creates). Any replica, and any later version, verifies an id without shared state; a client can
neither invent an id nor label a prediction it was not given.

Feedback is accepted only whole: every item must name a valid id and carry a label the model can have (a
class of the model compared by JSON type, no coercion; a finite number for a regressor), a list of exactly
as many labels as the id's rows for a request of several rows. Otherwise the request is a 400 that names
the first bad item and says why, without echoing what it held.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

PREFIX = "rg1"
MAX_ITEMS = 1000  # feedback items in one request
MAX_ID_CHARS = 512
MAX_AGE_SECONDS = 30 * 24 * 3600  # how long after its prediction a label is taken
MAX_PREDICTED_ROWS = 16  # an id carries its rows' predictions up to this many: labels then grade them per version
_TAG_BYTES = 16


class Rejected(ValueError):
    """Feedback refused; ``reason`` is the metric label, the message what the client is told."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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


@dataclass(frozen=True)
class Signer:
    key: bytes

    @classmethod
    def from_env(cls, value: str | None) -> Signer:
        """The deployment's key; without one, a key of this process's own (ids verify only here)."""
        return cls(value.encode() if value else os.urandom(32))

    def _tag(self, payload: str) -> str:
        return _b64(hmac.new(self.key, f"{PREFIX}.{payload}".encode(), hashlib.sha256).digest()[:_TAG_BYTES])

    def issue(self, version: str, rows: int, now: float, predicted: list[Any] | None = None) -> str:
        """An id for a prediction of ``rows`` rows by ``version``, carrying ``predicted`` (one per row) when it
        is short enough."""
        fields: list[Any] = [version, rows, int(now), _b64(os.urandom(9))]
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
        if prefix != PREFIX or not hmac.compare_digest(tag.encode(), self._tag(payload).encode()):
            raise Rejected("bad_id", "id is not a prediction id this server issued")
        version, rows, issued, *rest = json.loads(_unb64(payload))  # signed by us: well formed
        if now - issued > max_age:
            raise Rejected("expired", f"the prediction is older than {max_age / 86400:g} days")
        predicted = tuple(rest[1]) if len(rest) > 1 else None
        return Claims(str(version), int(rows), int(issued), predicted)


def _valid(label: object, classes: list[Any] | None) -> bool:
    if classes is None:  # a regressor: a finite number, not a boolean
        return type(label) in (int, float) and math.isfinite(label)  # type: ignore[arg-type]
    return any(type(label) is type(c) and label == c for c in classes)


def check_label(label: object, classes: list[Any] | None, rows: int) -> None:
    """Raise unless ``label`` fits a prediction of ``rows`` rows: one label, or a list of ``rows``."""
    what = "one of the model's classes" if classes is not None else "a finite number"
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
    record: dict[str, Any]  # as the log writes it: {"id", "label", "time"}


def parse_feedback(parsed: Any, signer: Signer, classes: list[Any] | None, now: float,
                   max_age: float = MAX_AGE_SECONDS) -> list[Labelled]:  # fmt: skip
    """``{"id", "label"}`` or ``{"feedback": [such objects]}``, every item valid, or Rejected for the first
    that is not."""
    single = not (isinstance(parsed, dict) and "feedback" in parsed)
    items = [parsed] if single else parsed["feedback"]
    if not isinstance(items, list) or not items:
        raise Rejected("bad_request", 'feedback is {"id": ..., "label": ...} or {"feedback": [such objects]}')
    if len(items) > MAX_ITEMS:
        raise Rejected("too_many_items", f"at most {MAX_ITEMS} feedback items in one request")
    out = []
    for i, item in enumerate(items):
        where = "feedback" if single else f"feedback[{i}]"
        try:
            if not isinstance(item, dict) or set(item) != {"id", "label"}:
                raise Rejected("bad_request", 'an item is {"id": <the prediction_id>, "label": ...}')
            claims = signer.verify(item["id"], now, max_age)
            check_label(item["label"], classes, claims.rows)
        except Rejected as error:
            raise Rejected(error.reason, f"{where}: {error}") from None
        out.append(Labelled(claims, {"id": item["id"], "label": item["label"], "time": now}))
    return out


class FeedbackCounts:
    """``regrow_feedback_total{model,version,outcome,reason}``: accepted, dropped (queue full) or rejected,
    counted per item (a rejected request counts once, under the serving version). And the live quality of
    each version, from the accepted labels of predictions whose id carries them: labelled rows, and the
    correct ones (a classifier's) or the sum of absolute errors (a regressor's)."""

    def __init__(self, model: str, classifier: bool = True) -> None:
        self.model, self.classifier = model, classifier
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.labelled: Counter[str] = Counter()
        self.graded: defaultdict[str, float] = defaultdict(float)  # correct rows, or the sum of absolute errors

    def add(self, version: str, outcome: str, reason: str) -> None:
        self.counts[(version, outcome, reason)] += 1

    def grade(self, item: Labelled) -> None:
        """Grade an accepted label against what the server predicted, if its id says."""
        predicted, label = item.claims.predicted, item.record["label"]
        if predicted is None:
            return
        version = item.claims.version
        for truth, guess in zip(label if isinstance(label, list) else [label], predicted, strict=True):
            if self.classifier:
                self.graded[version] += int(type(truth) is type(guess) and truth == guess)
            elif type(guess) in (int, float):
                self.graded[version] += abs(float(truth) - float(guess))
            else:
                continue  # a regressor of several outputs: not graded
            self.labelled[version] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_feedback", "Feedback items by outcome and reason.", labels=["model", "version", "outcome", "reason"]
        )
        for (version, outcome, reason), value in sorted(self.counts.items()):
            family.add_metric([self.model, version, outcome, reason], value)
        labelled = CounterMetricFamily(
            "regrow_feedback_labelled_rows", "Predicted rows a label graded, by the version that predicted them.",
            labels=["model", "version"],
        )  # fmt: skip
        graded = CounterMetricFamily(
            "regrow_feedback_correct_rows" if self.classifier else "regrow_feedback_absolute_error",
            "Of the labelled rows, those predicted right (a classifier)" if self.classifier
            else "The labelled rows' absolute errors, summed (a regressor)",
            labels=["model", "version"],
        )  # fmt: skip
        for version in sorted(self.labelled):
            labelled.add_metric([self.model, version], self.labelled[version])
            graded.add_metric([self.model, version], self.graded[version])
        yield from (family, labelled, graded)

    def describe(self) -> list[Metric]:
        return []
