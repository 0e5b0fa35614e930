"""Labelled live traffic: the predictions serving pods logged, joined on their prediction id to the labels
posted to ``/v2/models/<model>/feedback``, as training rows.

The prediction log writes ``<model>/predictions/<version>/<time>-<host>-<n>.jsonl`` (``{"id", "time",
"inputs", "outputs"}``, ``inputs`` one row per input row, ``null`` for a missing value; for a model with
categorical columns ``columns`` instead, each column's values by its name) and
``<model>/feedback/<version>/...`` (``{"id", "label", "time"}``). A request of one row takes one label; a
request of n rows a list of n labels. The latest label for an id wins.

Only the files written within the window (``feedback.window``, by the time in their names) are read:
predictions newest first (across versions) until ``max_rows`` rows are labelled, so no more predictions than
that are held; every label of the window is read first (the latest one of each id). A record that does
not fit is left out and counted by reason, never fatal: ``malformed`` (not a record the log writes), ``shape``
(not the model's features, or a value of the wrong kind: a number for a numeric column, text for a categorical
one), ``label`` (a label of another kind than the dataset's, or not one per row); a prediction with no label is
counted as ``unlabelled``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.contracts import log_prefix, logged_at
from regrow.storage import Store

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


def _labels(store: Store, model: str, since: float, problems: Counter[str]) -> dict[str, Any]:
    """The latest label of every id (by the record's time; among equal times, the newest file's)."""
    latest: dict[str, tuple[float, Any]] = {}
    for key in _newest_first(store, log_prefix(model, "feedback"), since):
        for record in _records(store, key, problems):
            stamp = record.get("time")
            when = float(stamp) if isinstance(stamp, int | float) and not isinstance(stamp, bool) else 0.0
            if "label" in record and (record["id"] not in latest or when > latest[record["id"]][0]):
                latest[record["id"]] = (when, record["label"])
    return {key: label for key, (_, label) in latest.items()}


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
    (whole requests), in the order of ``features``, the ``categorical`` ones as canonical categories."""
    kinds = [name in categorical for name in features]
    dropped: Counter[str] = Counter()
    labels = _labels(store, model, since, dropped)
    rows: list[list[float | str]] = []
    targets: list[Any] = []
    groups: list[str] = []
    predictions = unlabelled = 0
    for key in _newest_first(store, log_prefix(model, "predictions"), since):
        for record in _records(store, key, dropped):
            predictions += 1
            parsed = [_row(values, kinds) for values in _logged(record, features)]
            label = labels.get(record["id"])
            given = label if isinstance(label, list) else [label]
            if any(row is None for row in parsed):
                dropped["shape"] += 1
            elif record["id"] not in labels:
                unlabelled += 1
            elif len(given) != len(parsed) or not all(fits(item) for item in given):
                dropped["label"] += 1
            elif len(rows) + len(parsed) > max_rows:  # full: older traffic is not read
                return _feedback(rows, targets, groups, kinds, predictions - 1, unlabelled, dropped)
            else:
                rows.extend(row for row in parsed if row is not None)
                targets.extend(given)
                groups.extend([record["id"]] * len(given))
    return _feedback(rows, targets, groups, kinds, predictions, unlabelled, dropped)


def _feedback(rows: list[list[float | str]], targets: list[Any], groups: list[str], kinds: list[bool],
              predictions: int, unlabelled: int, dropped: Counter[str]) -> Feedback:  # fmt: skip
    x = np.array(rows, dtype=object if any(kinds) else np.float64).reshape(len(rows), len(kinds))
    plain_rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows]
    body = json.dumps([plain_rows, targets], separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    labels = np.array(targets, dtype=object)
    return Feedback(x, labels, digest, predictions, unlabelled, dict(dropped), np.array(groups, dtype=str))
