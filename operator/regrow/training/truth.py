"""Ground truth in bulk: labels written to the store as files (a CRM export, a fraud desk's verdicts, a
warehouse join), trusted as the store is, which outrank any labeller's.

Files under ``<model>/labels/`` (beside the log's ``predictions/`` and ``feedback/``), CSV or Parquet, each
row one label: ``label``, and either ``prediction_id`` (with ``row``, the row of a request of several, 0 if
absent) or ``business_key``, the key a request carried (``parameters.business_key``) for that row. The
business key is compared by its hash (``regrow.contracts.business_key_hash``), which the prediction log
holds in its place. A file that is not one, or past MAX_FILES, is left out and counted; a row without a
label or a key is left out and counted.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from regrow.contracts import business_key_hash, log_prefix
from regrow.storage import Store

STORE = "@store"  # the source name of labels from the store (no labeller's name can be it)
MAX_FILES = 1000  # label files read at most, the newest names first
MAX_ROWS = 10_000_000  # labels held at most, all files together


@dataclass
class Truth:
    """The store's labels: by (prediction id, row) and by business key hash, and what was left out."""

    by_id: dict[tuple[str, int], Any] = field(default_factory=dict)
    by_key: dict[str, Any] = field(default_factory=dict)
    joined: set[str] = field(default_factory=set)  # the business keys that labelled a row already
    dropped: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.by_id) + len(self.by_key)

    def label(self, prediction_id: str, row: int, key: str | None) -> tuple[str | None, Any]:
        """How the store labels this row (``id``, ``key``; None: it does not) and the label. A business key
        labels one row, the first asked for (the newest logged), so that requests that repeat a key (a
        client may send any) take its label once."""
        if (prediction_id, row) in self.by_id:
            return "id", self.by_id[prediction_id, row]
        if key is not None and key in self.by_key and key not in self.joined:
            self.joined.add(key)
            return "key", self.by_key[key]
        return None, None


def _plain(value: Any) -> Any:
    """A cell as the JSON value a label is: a numpy scalar's Python value; None for a missing one, or for a
    cell that is no scalar (a list in a Parquet column)."""
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, str | int | float | bool) and value != "" else None


def _index(cell: Any) -> int | None:
    """A ``row`` cell as a row index (0 when missing); None when it is none."""
    if cell is None:
        return 0
    if isinstance(cell, str) and cell.isascii() and cell.isdigit():
        return int(cell)
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    return cell if isinstance(cell, int) and not isinstance(cell, bool) and cell >= 0 else None


def read_truth(store: Store, model: str) -> Truth:
    """Every label file of ``model`` in the store, the later file's label winning for a row both give."""
    truth = Truth()
    keys = sorted(k for k in store.list(log_prefix(model, "labels")) if k.endswith((".csv", ".parquet")))
    truth.dropped["files_beyond_limit"] = max(0, len(keys) - MAX_FILES)
    for key in keys[-MAX_FILES:]:
        raw = store.get(key)
        try:
            frame = (pd.read_parquet(io.BytesIO(raw)) if key.endswith(".parquet")
                     else pd.read_csv(io.BytesIO(raw), dtype={"prediction_id": str, "business_key": str},
                                      keep_default_na=False))  # fmt: skip
        except (ValueError, OSError, TypeError, NotImplementedError):  # never quoted: it may hold the content
            truth.dropped["unreadable_file"] += 1
            continue
        if "label" not in frame.columns or not {"prediction_id", "business_key"} & set(frame.columns):
            truth.dropped["unreadable_file"] += 1
            continue
        _take(frame, truth)
    truth.dropped = Counter({reason: n for reason, n in truth.dropped.items() if n})
    return truth


def _take(frame: pd.DataFrame, truth: Truth) -> None:
    ids = frame["prediction_id"] if "prediction_id" in frame.columns else None
    rows = frame["row"] if "row" in frame.columns else None
    business = frame["business_key"] if "business_key" in frame.columns else None
    for i, cell in enumerate(frame["label"].tolist()):
        label = _plain(cell)
        prediction_id = _plain(ids.iloc[i]) if ids is not None else None
        business_key = _plain(business.iloc[i]) if business is not None else None
        row = _index(_plain(rows.iloc[i]) if rows is not None else None)
        if len(truth) >= MAX_ROWS:
            truth.dropped["labels_beyond_limit"] += 1
        elif label is None or row is None:
            truth.dropped["label_row"] += 1
        elif isinstance(prediction_id, str) and prediction_id:
            truth.by_id[prediction_id, row] = label
        elif business_key is not None and str(business_key):
            truth.by_key[business_key_hash(str(business_key))] = label
        else:
            truth.dropped["label_row"] += 1
