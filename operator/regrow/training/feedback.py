"""Labelled live traffic: the predictions serving pods logged, joined on their request id to the labels
posted to ``/v2/models/<model>/feedback``, as training rows.

The prediction log writes ``<model>/predictions/<version>/*.jsonl`` (``{"id", "time", "inputs", "outputs"}``,
``inputs`` one row per input row, ``null`` for a missing value) and ``<model>/feedback/<version>/*.jsonl``
(``{"id", "label", "time"}``). A request of one row takes one label; a request of n rows takes a list of n
labels. The latest label for an id wins; predictions with no label, or a label that does not fit, are
counted and left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.storage import Store


@dataclass(frozen=True)
class Feedback:
    x: npt.NDArray[np.float64]
    y: npt.NDArray[Any]
    digest: str  # of the records joined, so that the same feedback makes the same dataset
    predictions: int  # logged predictions read
    unlabelled: int  # of those, without a label that fits


def _records(store: Store, prefix: str) -> Iterator[dict[str, Any]]:
    for key in store.list(prefix):
        if key.endswith(".jsonl"):
            for line in store.get(key).splitlines():
                if line.strip():
                    yield json.loads(line)


def labelled_rows(store: Store, model: str, n_features: int, max_rows: int) -> Feedback:
    """The newest ``max_rows`` labelled rows of ``model``'s live traffic."""
    labels = {record["id"]: record["label"] for record in _records(store, f"{model}/feedback/")}
    rows: list[list[Any]] = []
    targets: list[Any] = []
    predictions = unlabelled = 0
    for record in _records(store, f"{model}/predictions/"):
        predictions += 1
        inputs = record.get("inputs") or []
        label = labels.get(record.get("id"))
        fitted = label if isinstance(label, list) else [label] if label is not None else []
        if len(fitted) != len(inputs) or any(len(row) != n_features for row in inputs):
            unlabelled += 1
            continue
        rows.extend(inputs)
        targets.extend(fitted)
    rows, targets = rows[-max_rows:], targets[-max_rows:]
    x = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
    digest = hashlib.sha256(json.dumps([rows, targets], separators=(",", ":")).encode()).hexdigest()
    return Feedback(x.reshape(len(rows), n_features), np.array(targets, dtype=object), digest, predictions, unlabelled)
