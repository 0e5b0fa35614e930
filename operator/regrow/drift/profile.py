"""Reference profiles: per-feature bins fitted on the training data, and vectorised binning.

A numeric feature with ``m`` edges (quantiles of the training data, the first the minimum and the last
the maximum) has ``m + 2`` bins, in this order: underflow (below the minimum), ``m - 1`` regular bins
(the last one closed on the right), overflow (above the maximum), and missing (NaN). The profile keeps
the reference counts; the serving process counts live values into the same bins.

Values and edges are float32, the precision the model sees, so a value lands in the same bin in the
trainer, in the serving process and in the tests, whatever precision it arrived in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

SCHEMA_VERSION = 1
PREDICTION = "__prediction__"  # the reserved feature name the model's outputs are monitored under
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

    @property
    def labels(self) -> list[str]:
        if self.categories:
            return list(self.categories)
        return ["underflow", *(f"b{i}" for i in range(len(self.edges) - 1)), "overflow", "missing"]

    def count(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Counts of one-dimensional ``values`` in this feature's bins: by category (as text), or binned like
        any numeric feature."""
        if self.categories:
            found = dict(zip(*np.unique(np.asarray(values).astype(str), return_counts=True), strict=True))
            return np.array([int(found.get(c, 0)) for c in self.categories], dtype=np.int64)
        return Profile((self,), 0).bin_counts(np.asarray(values, dtype=np.float32).reshape(-1, 1))

    def to_dict(self) -> dict[str, object]:
        if self.categories:
            return {"name": self.name, "type": "categorical", "categories": list(self.categories),
                    "counts": list(self.counts)}  # fmt: skip
        return {"name": self.name, "type": "numeric", "edges": list(self.edges), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, f: dict[str, Any]) -> FeatureProfile:
        counts = tuple(int(c) for c in f["counts"])
        if f.get("type") == "categorical":
            return cls(str(f["name"]), (), counts, tuple(str(c) for c in f["categories"]))
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
