"""One drift check: live bin counts against the reference profile, scored by the policy's tests."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from regrow.api.driftpolicy import DriftTestType
from regrow.drift import stats
from regrow.drift.profile import Profile

# Tests whose score is a p-value drift when it falls below the threshold; the others when it exceeds it.
BELOW_IS_DRIFT = frozenset({DriftTestType.CHI_SQUARE})
DEFAULT_THRESHOLDS = {
    DriftTestType.PSI: Decimal("0.2"),
    DriftTestType.KS: Decimal("0.1"),
    DriftTestType.JENSEN_SHANNON: Decimal("0.1"),
    DriftTestType.CHI_SQUARE: Decimal("0.01"),
    DriftTestType.WASSERSTEIN: Decimal("0.1"),
}


@dataclass(frozen=True)
class Layout:
    """A profile's bins as padded (features, bins) matrices, built once per profile."""

    reference: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_]  # real bins
    ordinal: npt.NDArray[np.bool_]  # real bins but missing
    positions: npt.NDArray[np.float64]

    @classmethod
    def of(cls, profile: Profile) -> Layout:
        width = int(profile.sizes.max())
        features = len(profile.features)
        mask = np.arange(width)[None, :] < profile.sizes[:, None]
        ordinal = mask & (np.arange(width)[None, :] < (profile.sizes - 1)[:, None])
        positions = np.full((features, width), np.nan)
        for j, feature in enumerate(profile.features):
            edges = np.asarray(feature.edges)
            positions[j, : len(edges) + 1] = [edges[0], *((edges[:-1] + edges[1:]) / 2), edges[-1]]
        return cls(cls.pad(profile, profile.reference_counts()), mask, ordinal, positions)

    @staticmethod
    def pad(profile: Profile, flat: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        out = np.zeros((len(profile.features), int(profile.sizes.max())))
        for j, part in enumerate(profile.split(flat)):
            out[j, : len(part)] = part
        return out


def scores(
    layout: Layout, live: npt.NDArray[np.float64], tests: list[DriftTestType]
) -> dict[DriftTestType, npt.NDArray[np.float64]]:
    ref = layout.reference
    compute = {
        DriftTestType.PSI: lambda: stats.psi(ref, live, layout.mask),
        DriftTestType.KS: lambda: stats.ks(ref, live, layout.ordinal),
        DriftTestType.JENSEN_SHANNON: lambda: stats.jensen_shannon(ref, live, layout.mask),
        DriftTestType.CHI_SQUARE: lambda: stats.chi_square(ref, live, layout.mask)[1],
        DriftTestType.WASSERSTEIN: lambda: stats.wasserstein(ref, live, layout.ordinal, layout.positions),
    }
    return {test: compute[test]() for test in tests}


@dataclass(frozen=True)
class Check:
    samples: int
    scores: dict[DriftTestType, npt.NDArray[np.float64]]
    drifted: npt.NDArray[np.bool_]  # per feature: any test past its threshold
    breached: bool  # enough samples, and at least driftShare of the features drifted

    @property
    def drifted_count(self) -> int:
        return int(self.drifted.sum())


def check(
    layout: Layout, live: npt.NDArray[np.float64], thresholds: dict[DriftTestType, Decimal], drift_share: Decimal,
    min_samples: int,
) -> Check:  # fmt: skip
    """Score ``live`` (padded counts, as ``Layout.pad`` makes them) and apply the policy's thresholds."""
    samples = int(live.sum(axis=1).max(initial=0))
    values = scores(layout, live, list(thresholds))
    drifted = np.zeros(layout.reference.shape[0], dtype=bool)
    for test, value in values.items():
        limit = float(thresholds[test])
        drifted |= value < limit if test in BELOW_IS_DRIFT else value > limit
    enough = samples >= min_samples
    breached = bool(enough and drifted.sum() >= float(drift_share) * len(drifted) and drifted.any())
    return Check(samples, values, drifted & enough, breached)
