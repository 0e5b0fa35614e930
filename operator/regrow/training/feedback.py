"""Labelled live traffic: the predictions serving pods logged, joined on their prediction id to the labels
posted to ``/v2/models/<model>/feedback``, as training rows.

The prediction log writes ``<model>/predictions/<version>/<time>-<host>-<n>.jsonl`` (``{"id", "time",
"inputs", "outputs"}``, ``inputs`` one row per input row, ``null`` for a missing value; for a model with
categorical columns ``columns`` instead, each column's values by its name) and
``<model>/feedback/<version>/<issuer>/...`` (``{"id", "label", "time", "labeller"}``). A request of one row
takes one label; a request of n rows a list of n labels.

Only named labellers' labels are read: a label without ``labeller`` came from an anonymous client, who may
steer monitoring but never what a retrain learns (counted as ``anonymous``). Each labeller's latest label for
an id is kept; among labellers the latest wins, and an id whose winning label a second labeller gave alike is
``corroborated``. Rows are shared out by source: ``max_rows`` is split evenly among the labellers with labels
in the window (what one leaves unused goes to the others), so that a burst from one labeller cannot push
another's labels out.

Only the files written within the window (``feedback.window``, by the time in their names) are read:
predictions newest first (across versions), each labeller's until its share is full, so no more predictions
than ``max_rows`` are held; every label of the window is read first. A record that does not fit is left out
and counted by reason, never fatal: ``malformed`` (not a record the log writes), ``shape`` (not the model's
features, or a value of the wrong kind: a number for a numeric column, text for a categorical one), ``label``
(a label of another kind than the dataset's, or not one per row); a prediction with no label is counted as
``unlabelled``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.contracts import log_prefix, logged_at
from regrow.storage import Store
from regrow.training.truth import STORE, Truth, read_truth

Fits = Callable[[object], bool]  # whether one label is of the kind the dataset's target holds


@dataclass(frozen=True)
class Feedback:
    x: npt.NDArray[Any]  # floats, or with categorical columns canonical categories beside floats
    y: npt.NDArray[Any]
    digest: str  # of the records joined, so that the same feedback makes the same dataset
    predictions: int  # logged predictions read
    unlabelled: int  # of those, without a label
    dropped: dict[str, int] = field(default_factory=dict)  # of those, left out, by reason
    groups: npt.NDArray[np.str_] = field(default_factory=lambda: np.array([], dtype=str))  # each row's prediction id
    sources: npt.NDArray[np.str_] = field(default_factory=lambda: np.array([], dtype=str))  # each row's labeller
    corroborated: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))  # by a second one
    anonymous: int = 0  # labels no labeller gave, left out

    def only(self, rows: npt.NDArray[np.bool_]) -> Feedback:
        """The rows ``rows`` marks, with a digest of which."""
        if rows.all():
            return self
        digest = hashlib.sha256(self.digest.encode() + np.packbits(rows).tobytes()).hexdigest()
        return replace(self, x=self.x[rows], y=self.y[rows], digest=digest, groups=self.groups[rows],
                       sources=self.sources[rows], corroborated=self.corroborated[rows])  # fmt: skip


@dataclass(frozen=True)
class Label:
    """An id's label: the latest of its labellers', and whether another labeller gave the same."""

    value: Any
    source: str
    corroborated: bool

    @property
    def values(self) -> list[Any]:
        """One label per row: a request of one row takes a label, of n rows a list of n."""
        return self.value if isinstance(self.value, list) else [self.value]


def plain(value: object) -> object:
    """A numpy scalar (as a dataset's labels come) as the Python value it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def label_kind(value: object) -> str | None:
    """A label's JSON kind: str, bool or number (finite); None for anything else."""
    value = plain(value)
    if isinstance(value, str | bool):
        return type(value).__name__
    if isinstance(value, int | float) and math.isfinite(value):
        return "number"
    return None


def _newest_first(store: Store, prefix: str, since: float) -> list[str]:
    """The log's files under ``prefix`` written at ``since`` or later, the newest first."""
    keys = [key for key in store.list(prefix) if key.endswith(".jsonl") and (logged_at(key) or 0) >= since]
    return sorted(keys, key=lambda key: key.rsplit("/", 1)[-1], reverse=True)


def _records(store: Store, key: str, problems: Counter[str]) -> Iterator[dict[str, Any]]:
    """A file's records, newest (last written) first; lines that are not JSON objects are counted."""
    for line in reversed(store.get(key).splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            yield record
        else:
            problems["malformed"] += 1


def _labels(store: Store, model: str, since: float, problems: Counter[str]) -> tuple[dict[str, Label], int]:
    """Every id's label (the latest by the record's time; among equal times, the newest file's), and how many
    labels no labeller gave."""
    given: dict[str, dict[str, tuple[float, Any]]] = {}  # id -> labeller -> its latest (time, label)
    anonymous = 0
    for key in _newest_first(store, log_prefix(model, "feedback"), since):
        for record in _records(store, key, problems):
            stamp, source = record.get("time"), record.get("labeller")
            when = float(stamp) if isinstance(stamp, int | float) and not isinstance(stamp, bool) else 0.0
            if "label" not in record:
                continue
            if not isinstance(source, str) or not source:
                anonymous += 1
                continue
            latest = given.setdefault(record["id"], {})
            if source not in latest or when > latest[source][0]:
                latest[source] = (when, record["label"])
    labels = {}
    for key, sources in given.items():
        source, (_, value) = max(sources.items(), key=lambda item: item[1][0])  # the first of equal times
        alike = sum(1 for _, label in sources.values() if label == value)
        labels[key] = Label(value, source, alike >= 2)
    return labels, anonymous


def shares(available: dict[str, int], total: int) -> dict[str, int]:
    """``total`` split among sources with ``available`` rows each: evenly, none given more than it has, what
    one cannot use going to the others (the smallest served first, so the last get what the even split
    leaves over; what remains then goes a row each to the first names)."""
    out, left = dict.fromkeys(available, 0), total
    for i, (name, rows) in enumerate(sorted(available.items(), key=lambda item: (item[1], item[0]))):
        out[name] = min(rows, left // (len(available) - i))
        left -= out[name]
    for name in sorted(available):  # the remainder of the even split, one row each
        if left and out[name] < available[name]:
            out[name], left = out[name] + 1, left - 1
    return out


def _row(values: object, categorical: list[bool]) -> list[float | str] | None:
    """One logged row as a training row (None: not one): numbers, and canonical categories ("" missing)."""
    if not isinstance(values, list | tuple) or len(values) != len(categorical):
        return None
    out: list[float | str] = []
    for v, text in zip(values, categorical, strict=True):
        if v is None:
            out.append("" if text else math.nan)
        elif text and isinstance(v, str):
            out.append(v)
        elif not text and isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
        else:
            return None
    return out


def _logged(record: dict[str, Any], features: list[str]) -> list[Any]:
    """A record's rows as they were logged: ``inputs``, or ``columns`` by name turned into rows."""
    inputs, columns = record.get("inputs"), record.get("columns")
    if isinstance(columns, dict) and sorted(columns) == sorted(features):
        values = [columns[name] for name in features]
        if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1 and values[0]:
            return list(zip(*values, strict=True))
    return inputs if isinstance(inputs, list) and inputs else [None]


def labelled_rows(store: Store, model: str, features: list[str], categorical: set[str], max_rows: int,
                  fits: Fits, since: float = 0.0) -> Feedback:  # fmt: skip
    """The newest labelled rows of ``model``'s live traffic logged at ``since`` or later, at most ``max_rows``
    (whole requests) shared out among the sources (the store's ground truth, each labeller), in the order of
    ``features``, the ``categorical`` ones as canonical categories. A row the store labels takes the store's
    label (regrow.training.truth); else its request's labeller's."""
    kinds = [name in categorical for name in features]
    dropped: Counter[str] = Counter()
    labels, anonymous = _labels(store, model, since, dropped)
    truth = read_truth(store, model)
    dropped.update(truth.dropped)
    available: Counter[str] = Counter({STORE: len(truth)} if len(truth) else {})
    for given in labels.values():
        available[given.source] += len(given.values)
    quota = _Quota(shares(dict(available), max_rows))
    read = _Read(kinds, anonymous)
    if not available:  # nothing to join: the predictions are not read
        return read.feedback(dropped)
    for key in _newest_first(store, log_prefix(model, "predictions"), since):
        for record in _records(store, key, dropped):
            read.predictions += 1
            logged = _logged(record, features)
            parsed = [row for values in logged if (row := _row(values, kinds)) is not None]
            if len(parsed) != len(logged):
                dropped["shape"] += 1
                continue
            named = labels.get(record["id"])
            found = _labelled(record, len(parsed), named, truth, fits, dropped)
            if not found:
                read.unlabelled += named is None  # a labeller's label that does not fit is counted as dropped
                continue
            admitted = quota.admit(Counter(source for _, _, source, _ in found))
            for i, value, source, corroborated in found:
                if source in admitted:
                    read.add(parsed[i], record["id"], Label(value, source, corroborated))
            if quota.spent:
                read.predictions -= not admitted
                return read.feedback(dropped)
    return read.feedback(dropped)


@dataclass
class _Quota:
    """What each source may still add (``left``), and the sources whose share is full: whole requests, the
    newest first, so that a request that does not fit ends the source's reading."""

    left: dict[str, int]
    full: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.full = {source for source, share in self.left.items() if not share}

    def admit(self, wanted: Counter[str]) -> set[str]:
        """The sources whose rows of a request are taken (``wanted``: rows by source)."""
        admitted = set()
        for source, count in wanted.items():
            if source in self.full:
                continue
            if count > self.left[source]:  # its share is full: its older traffic is not read
                self.full.add(source)
            else:
                self.left[source] -= count
                admitted.add(source)
        return admitted

    @property
    def spent(self) -> bool:
        return self.full >= set(self.left)


def _labelled(record: dict[str, Any], rows: int, named: Label | None, truth: Truth, fits: Fits,
              dropped: Counter[str]) -> list[tuple[int, Any, str, bool]]:  # fmt: skip
    """Each labelled row of a logged request: (row, label, source, corroborated), the store's label first (by
    the prediction id and row, or by the row's business key), else its labeller's. A label the store gives by
    prediction id is corroborated (the store chose the prediction); one by business key is not (any client may
    send a key)."""
    if named is not None and (len(named.values) != rows or not all(fits(item) for item in named.values)):
        dropped["label"] += 1
        named = None
    hashes = record.get("keys")
    hashes = hashes if isinstance(hashes, list) and len(hashes) == rows else [None] * rows
    found = []
    for i in range(rows):
        by, value = truth.label(record["id"], i, hashes[i] if isinstance(hashes[i], str) else None)
        if by is not None and fits(value):  # trusted as the store is; by a key any client may send, uncorroborated
            found.append((i, value, STORE, by == "id"))
            continue
        if by is not None:
            dropped["label"] += 1  # not of the dataset's kind: the labeller's, if any, stands
        if named is not None:
            found.append((i, named.values[i], named.source, named.corroborated))
    return found


@dataclass
class _Read:
    """The rows read so far, and what they came with."""

    kinds: list[bool]
    anonymous: int
    predictions: int = 0
    unlabelled: int = 0
    rows: list[list[float | str]] = field(default_factory=list)
    targets: list[Any] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    corroborated: list[bool] = field(default_factory=list)

    def add(self, row: list[float | str], key: str, label: Label) -> None:
        """One row, labelled ``label.value`` by ``label.source``, of the request ``key``."""
        self.rows.append(row)
        self.targets.append(label.value)
        self.groups.append(key)
        self.sources.append(label.source)
        self.corroborated.append(label.corroborated)

    def feedback(self, dropped: Counter[str]) -> Feedback:
        rows, targets = self.rows, self.targets
        x = np.array(rows, dtype=object if any(self.kinds) else np.float64).reshape(len(rows), len(self.kinds))
        plain_rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows]
        body = json.dumps([plain_rows, targets], separators=(",", ":"))
        digest = hashlib.sha256(body.encode()).hexdigest()
        return Feedback(
            x, np.array(targets, dtype=object), digest, self.predictions, self.unlabelled, dict(dropped),
            np.array(self.groups, dtype=str), np.array(self.sources, dtype=str),
            np.array(self.corroborated, dtype=bool), self.anonymous,
        )  # fmt: skip
