"""Reference profiles: per-feature bins fitted on the training data, and vectorised binning.

A numeric feature with ``m`` edges (quantiles of the training data, the first the minimum and the last
the maximum) has ``m + 2`` bins, in this order: underflow (below the minimum), ``m - 1`` regular bins
(the last one closed on the right), overflow (above the maximum), and missing (NaN). The profile keeps
the reference counts; the serving process counts live values into the same bins.

Values and edges are float32, the precision the model sees, so a value lands in the same bin in the
trainer, in the serving process and in the tests, whatever precision it arrived in.

A categorical input feature (``grouped``) has one bin per category kept from the training data (the most
frequent, at most ``max_categories``, ties by name), then ``<other>`` (any other category: rarer in training,
or never seen) and ``<missing>``, counted from canonical values (``regrow.tabular``). No category's bin
label can be a reserved one: a category that starts with ``<`` is labelled with one more ``<`` in front.
The model's predictions of a classifier are categorical too, one bin per class and nothing else.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

SCHEMA_VERSION = 1
PREDICTION = "__prediction__"  # the reserved feature name the model's outputs are monitored under
OTHER, MISSING_BIN = "<other>", "<missing>"  # a categorical input's last two bins
DEFAULT_MAX_CATEGORIES = 20
DEFAULT_BINS = 10
_CHUNK_ROWS = 16384
SORT_ROWS = 4096


@dataclass(frozen=True)
class FeatureProfile:
    """A numeric feature's edges and counts, or a categorical one's categories (then edges is empty) and
    counts, one per category."""

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    categories: tuple[str, ...] = ()
    grouped: bool = False  # a categorical input: ``<other>`` and ``<missing>`` bins follow the categories

    @property
    def numeric(self) -> bool:
        return not self.categories and not self.grouped

    @property
    def labels(self) -> list[str]:
        if self.grouped:
            return [("<" + c if c.startswith("<") else c) for c in self.categories] + [OTHER, MISSING_BIN]
        if self.categories:
            return list(self.categories)
        return ["underflow", *(f"b{i}" for i in range(len(self.edges) - 1)), "overflow", "missing"]

    @cached_property
    def _index(self) -> dict[str, int]:
        return {category: i for i, category in enumerate(self.categories)}

    def count(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Counts of one-dimensional ``values`` in this feature's bins: by category (canonical text, see
        ``regrow.tabular``), or binned like any numeric feature. Each distinct value is looked up once; no
        fixed-width copy of the values is made (its size would be rows times the longest value)."""
        if self.numeric:
            return Profile((self,), 0).bin_counts(np.asarray(values, dtype=np.float32).reshape(-1, 1))
        distinct, counts = tally(values)
        size = len(self.categories) + (2 if self.grouped else 0)
        # A grouped input's unknown value is other, and "" missing; a classifier's unknown class counts nowhere.
        unknown = size - 2 if self.grouped else size
        where = np.fromiter((self._index.get(v, size - 1 if self.grouped and v == "" else unknown) for v in distinct),
                            dtype=np.int64, count=len(distinct))  # fmt: skip
        return np.bincount(where, weights=counts, minlength=size + 1)[:size].astype(np.int64)

    def to_dict(self) -> dict[str, object]:
        if self.categories or self.grouped:
            return {"name": self.name, "type": "categorical", "categories": list(self.categories),
                    "counts": list(self.counts), **({"grouped": True} if self.grouped else {})}  # fmt: skip
        return {"name": self.name, "type": "numeric", "edges": list(self.edges), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, f: dict[str, Any]) -> FeatureProfile:
        counts = tuple(int(c) for c in f["counts"])
        if f.get("type") == "categorical":
            categories = tuple(str(c) for c in f["categories"])
            return cls(str(f["name"]), (), counts, categories, bool(f.get("grouped", False)))
        return cls(str(f["name"]), tuple(float(e) for e in f["edges"]), counts)


@dataclass(frozen=True)
class Profile:
    """The inputs' reference bins, and the model's predictions' on the training holdout (``prediction``,
    named ``__prediction__``: class shares, or bins of a regressor's outputs)."""

    features: tuple[FeatureProfile, ...]
    rows: int
    prediction: FeatureProfile | None = None

    def monitored(self) -> Profile:
        """The profile of everything drift is measured on: the inputs, then the predictions."""
        if self.prediction is None:
            return self
        return Profile((*self.features, self.prediction), self.rows)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> bool:
        """Whether every input is numeric (its rows then come as one float matrix)."""
        return all(f.numeric for f in self.features)

    @cached_property
    def _numbers(self) -> tuple[Profile, list[int]]:
        """The numeric features' own profile, and where they are among all features."""
        where = [j for j, f in enumerate(self.features) if f.numeric]
        return Profile(tuple(self.features[j] for j in where), self.rows), where

    def column_counts(self, columns: Sequence[npt.ArrayLike]) -> npt.NDArray[np.int64]:
        """Counts of one column per feature (floats for a numeric one, canonical text for a categorical one)
        in every bin, as one flat vector (see ``offsets``): the numeric ones binned together."""
        numbers, where = self._numbers
        parts: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)] * len(self.features)
        if where:
            matrix = np.column_stack([np.asarray(columns[j], dtype=np.float32).reshape(-1) for j in where])
            parts_of_numbers = numbers.split(numbers.bin_counts(matrix))
            for j, part in zip(where, parts_of_numbers, strict=True):
                parts[j] = part
        for j, feature in enumerate(self.features):
            if not feature.numeric:
                parts[j] = feature.count(columns[j])
        return np.concatenate(parts).astype(np.int64)

    @cached_property
    def sizes(self) -> npt.NDArray[np.int64]:
        """Number of bins of each feature."""
        return np.array([len(f.counts) for f in self.features], dtype=np.int64)

    @cached_property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Where each feature's bins start in the flat vector of all bins."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @cached_property
    def _edges(self) -> npt.NDArray[np.float32]:
        width = max(len(f.edges) for f in self.features)
        out = np.full((len(self.features), width), np.nan, dtype=np.float32)
        for j, f in enumerate(self.features):
            out[j, : len(f.edges)] = f.edges
        return out

    @cached_property
    def _last(self) -> npt.NDArray[np.float32]:
        return np.array([f.edges[-1] for f in self.features], dtype=np.float32)

    def reference_counts(self) -> npt.NDArray[np.int64]:
        """All features' reference counts as one flat vector (see ``offsets``)."""
        return np.concatenate([np.asarray(f.counts, dtype=np.int64) for f in self.features])

    def _matrix(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        values = np.asarray(x, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(self.features):
            raise ValueError(f"expected an array of shape (n, {len(self.features)}), got {values.shape}")
        return values

    def bin_indices(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Bin of each value of an (n, features) array, per feature (0 = underflow)."""
        values = self._matrix(x)
        out = np.empty(values.shape, dtype=np.int64)
        for start in range(0, len(values), _CHUNK_ROWS):
            chunk = values[start : start + _CHUNK_ROWS]
            # How many edges each value reaches; NaN padding never compares true.
            reached = (chunk[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
            reached -= chunk == self._last  # the maximum belongs to the last regular bin
            out[start : start + _CHUNK_ROWS] = np.where(np.isnan(chunk), self.sizes - 1, reached)
        return out

    def bin_counts(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Counts of an (n, features) array in every bin, as one flat vector (see ``offsets``).

        Small batches compare every value with every edge at once; from ``SORT_ROWS`` rows on, sorting
        each column and locating the edges in it is faster (O(n log n) in C instead of n x edges)."""
        values = self._matrix(x)
        if len(values) < SORT_ROWS:
            flat = (self.bin_indices(values) + self.offsets).ravel()
            return np.bincount(flat, minlength=int(self.sizes.sum())).astype(np.int64)
        return self._counts_by_sorting(values)

    def _counts_by_sorting(self, values: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        # One contiguous row per feature: sorting (and counting NaN along) strided columns costs 3x as much.
        rows = np.sort(np.ascontiguousarray(values.T), axis=1)
        parts = []
        for feature, row in zip(self.features, rows, strict=True):
            present = int(np.searchsorted(row, np.inf, side="right"))  # NaN sorts after +inf: the missing values
            column = row[:present]
            edges = np.asarray(feature.edges, dtype=np.float32)
            reached = present - np.searchsorted(column, edges, side="left")  # values >= each edge
            above = present - int(np.searchsorted(column, edges[-1], side="right"))
            regular = reached[:-1] - reached[1:]
            regular[-1] += reached[-1] - above  # the maximum belongs to the last regular bin
            parts.append(np.concatenate([[present - reached[0]], regular, [above, len(row) - present]]))
        return np.concatenate(parts).astype(np.int64)

    def split(self, flat: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """A flat vector of bin counts cut into one array per feature."""
        return np.split(flat, self.offsets[1:])

    def to_json(self) -> bytes:
        body = {
            "schemaVersion": SCHEMA_VERSION,
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            **({"prediction": self.prediction.to_dict()} if self.prediction is not None else {}),
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Profile:
        body = json.loads(data)
        if body.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"unsupported profile schemaVersion {body.get('schemaVersion')!r}")
        features = tuple(FeatureProfile.from_dict(f) for f in body["features"])
        prediction = FeatureProfile.from_dict(body["prediction"]) if body.get("prediction") else None
        return cls(features, int(body["rows"]), prediction)


def _isolate_point_masses(
    present: npt.NDArray[np.float32], cuts: npt.NDArray[np.float32], bins: int
) -> npt.NDArray[np.float32]:
    """Quantile cuts, plus an edge just above every value that holds more than a bin's share of the data
    and shares its bin with other values, so that the value has a bin of its own. Without it, a feature
    that is 90% zeros gets the edges [0, max], and a change in its share of zeros never shows."""
    lo, hi = np.searchsorted(present, cuts, side="left"), np.searchsorted(present, cuts, side="right")
    heavy = (hi - lo) * bins > present.size
    shared = np.empty(len(cuts), dtype=bool)
    shared[:-1] = lo[1:] > hi[:-1]  # a value between this cut and the next
    shared[-1] = len(cuts) > 1 and lo[-1] > lo[-2]  # the last bin is closed: values below the maximum in it
    above = np.nextafter(cuts[heavy & shared], np.float32(np.inf))
    return np.unique(np.concatenate([cuts, above]))


def prediction_profile(outputs: npt.ArrayLike, classes: list[Any]) -> FeatureProfile:
    """The reference of a model's predictions: each class's count (a classifier's), or a regressor's
    outputs binned like a numeric feature."""
    if classes:
        categories = FeatureProfile(PREDICTION, (), (), tuple(str(c) for c in classes))
        return replace(categories, counts=tuple(int(n) for n in categories.count(outputs)))
    return fit_profile(np.asarray(outputs, dtype=np.float64).reshape(-1, 1), [PREDICTION]).features[0]


def tally(values: npt.ArrayLike) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The distinct values of ``values`` (any shape) as text, and how often each occurs: counted by hashing the
    values as they are, never copied into a fixed-width array."""
    merged: collections.Counter[str] = collections.Counter()
    for value, n in collections.Counter(np.asarray(values, dtype=object).reshape(-1).tolist()).items():
        merged[value if type(value) is str else str(value)] += n  # once per distinct value: 1 and "1" are one
    return list(merged), np.fromiter(merged.values(), dtype=np.int64, count=len(merged))


def fit_categories(values: npt.ArrayLike, name: str, max_categories: int = DEFAULT_MAX_CATEGORIES) -> FeatureProfile:
    """A categorical input's reference from canonical ``values``: the ``max_categories`` most frequent
    categories (ties by name), then the rest as other, then the missing ones."""
    distinct, counts = tally(values)
    present = [(-int(n), v) for v, n in zip(distinct, counts.tolist(), strict=True) if v != ""]
    kept = tuple(v for _, v in sorted(present)[:max_categories])
    empty = FeatureProfile(name, (), (0,) * (len(kept) + 2), kept, grouped=True)
    return replace(empty, counts=tuple(int(n) for n in empty.count(values)))


def fit_columns(columns: Sequence[npt.ArrayLike], names: list[str], categorical: set[str],
                max_categories: int = DEFAULT_MAX_CATEGORIES, bins: int = DEFAULT_BINS) -> Profile:  # fmt: skip
    """The reference profile of training data given one column per feature: the ``categorical`` ones by
    ``fit_categories``, the others as ``fit_profile`` bins them."""
    rows = len(np.asarray(columns[0]).reshape(-1)) if columns else 0
    numeric = [j for j, name in enumerate(names) if name not in categorical]
    stacked = [np.asarray(columns[j], dtype=np.float32).reshape(-1) for j in numeric]
    fitted = fit_profile(np.column_stack(stacked), [names[j] for j in numeric], bins) if numeric else None
    by_name = {f.name: f for f in fitted.features} if fitted else {}
    features = tuple(
        by_name[name] if name in by_name else fit_categories(columns[j], name, max_categories)
        for j, name in enumerate(names)
    )
    return Profile(features, rows)


def fit_profile(x: npt.ArrayLike, names: list[str], bins: int = DEFAULT_BINS) -> Profile:
    """The reference profile of training data: quantile edges per feature and the data's own counts."""
    values = np.asarray(x, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"expected an array of shape (n, {len(names)}), got {values.shape}")
    edges = []
    for column in values.T:
        present = np.sort(column[~np.isnan(column)])
        if present.size == 0:
            cuts = np.zeros(2, dtype=np.float32)
        else:
            quantiles = np.quantile(present.astype(np.float64), np.linspace(0.0, 1.0, bins + 1))
            cuts = _isolate_point_masses(present, np.unique(quantiles.astype(np.float32)), bins)
            if cuts.size == 1:
                cuts = np.repeat(cuts, 2)  # a constant feature still gets one regular bin
        edges.append(tuple(float(e) for e in cuts))
    empty = Profile(tuple(FeatureProfile(n, e, (0,) * (len(e) + 2)) for n, e in zip(names, edges, strict=True)), 0)
    counts = empty.split(empty.bin_counts(values))
    return Profile(
        tuple(FeatureProfile(n, e, tuple(int(c) for c in k)) for n, e, k in zip(names, edges, counts, strict=True)),
        len(values),
    )
