"""``regrow drift``: what a DriftPolicy would have decided on recorded traffic, one window of rows at a time.

The same check as in the cluster (``regrow.drift.policy.check``): the policy's tests with their thresholds
(calibrated when left out), ``driftShare``, ``minSamples``, and ``consecutiveBreaches`` for the verdict.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from regrow.api.driftpolicy import DriftPolicySpec
from regrow.drift.policy import Check, Layout, check
from regrow.drift.profile import Profile
from regrow.storage import NotFound, open_store
from regrow.storage.registry import PROFILE, Registry
from regrow.tabular import NotCategorical, canonical


class BacktestError(Exception):
    """Input the backtest cannot score (exit status 2): the message says which."""


def load_registry_profile(reference: str, *, endpoint_url: str | None = None, region: str | None = None) -> Profile:
    """The profile of ``<registry-uri>/<model>@<alias or version>``: an alias if the registry has one by
    that name, else a version."""
    where, _, ref = reference.rpartition("@")
    registry_uri, _, model = where.rstrip("/").rpartition("/")
    if not (ref and model and registry_uri):
        raise BacktestError(f"{reference}: expected <registry-uri>/<model>@<alias or version>")
    registry = Registry(open_store(registry_uri, endpoint_url=endpoint_url, region=region))
    version = registry.resolve(model, ref) or ref
    try:
        return Profile.from_json(registry.read(model, version, PROFILE))
    except NotFound:
        raise BacktestError(f"{model} has no alias or version {ref!r} in {registry_uri}") from None


def feature_matrix(raw: bytes, parquet: bool, profile: Profile) -> npt.NDArray[Any]:
    """The profile's features from a CSV or Parquet file, in the profile's order; other columns ignored. With
    categorical features, an object table: their canonical categories beside the numeric ones' floats."""
    import pandas as pd  # noqa: PLC0415 - needs [training]

    try:
        frame = pd.read_parquet(io.BytesIO(raw)) if parquet else pd.read_csv(io.BytesIO(raw))
    except (ValueError, OSError) as error:
        raise BacktestError(f"the data is not a readable {'parquet' if parquet else 'csv'} file: {error}") from None
    frame.columns = [str(c) for c in frame.columns]
    missing = [name for name in profile.names if name not in frame.columns]
    if missing:
        raise BacktestError(f"the data has no column for the profile's feature(s) {', '.join(missing)}")
    numbers = [f.name for f in profile.features if f.numeric]
    non_numeric = [name for name in numbers if not pd.api.types.is_numeric_dtype(frame[name])]
    if non_numeric:
        raise BacktestError(f"feature column(s) {', '.join(non_numeric)} are not numeric")
    if profile.numeric:
        return np.asarray(frame[profile.names].to_numpy(dtype=np.float64))
    table = np.empty((len(frame), len(profile.features)), dtype=object)
    for j, feature in enumerate(profile.features):
        values = frame[feature.name].to_numpy(dtype=object, na_value=None)
        try:
            table[:, j] = np.asarray(values, dtype=np.float64) if feature.numeric else canonical(values)
        except NotCategorical:
            raise BacktestError(f"feature column {feature.name} holds values that are not categories") from None
    return table


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Window:
    index: int
    first: int
    last: int
    result: Check
    drift_detected: bool
    counts: npt.NDArray[np.int64]  # the window's rows in the profile's bins, flat (see Profile.offsets)

    def record(self, profile: Profile) -> dict[str, Any]:
        """The window as one JSON object: scores and thresholds as numbers, null where undefined."""
        result = self.result
        features = [
            {
                "name": feature.name,
                "drifted": bool(result.drifted[j]),
                "scores": {test.value: _number(values[j]) for test, values in result.scores.items()},
                "thresholds": {test.value: _number(values[j]) for test, values in result.thresholds.items()},
            }
            for j, feature in enumerate(profile.features)
        ]
        return {
            "window": self.index,
            "rows": [self.first, self.last],
            "samples": result.samples,
            "breached": result.breached,
            "driftDetected": self.drift_detected,
            "driftedFeatures": result.drifted_count,
            "features": features,
        }


def windows(profile: Profile, x: npt.NDArray[Any], spec: DriftPolicySpec, rows: int | None) -> Iterator[Window]:
    """Consecutive windows of ``rows`` rows (the whole data when None; the last may be shorter), each
    checked as the policy would, with its breach streak carried from one window to the next."""
    layout = Layout.of(profile)
    thresholds = spec.thresholds()
    size = rows or max(len(x), 1)
    streak = 0
    for index, first in enumerate(range(0, max(len(x), 1), size)):
        chunk = x[first : first + size]
        counts = profile.bin_counts(chunk) if profile.numeric else profile.column_counts(list(chunk.T))
        live = Layout.pad(profile, counts)
        result = check(layout, live, thresholds, Decimal(spec.drift_share), spec.min_samples,
                       by_type=spec.tests is None)  # fmt: skip
        streak = streak + 1 if result.breached else 0
        detected = streak >= spec.consecutive_breaches
        yield Window(index, first, first + len(chunk) - 1, result, detected, counts)
