"""One drift check: live bin counts against the reference profile, scored by the policy's tests.

A test given a threshold compares its score with it. A test without one is calibrated: its threshold is
the score that windows of the reference's own distribution exceed 5% of the time (``FALSE_FLAG_RATE``),
for this feature's reference and this window's number of rows. It is found by simulation
(``stats.null_counts``, ``NULL_DRAWS`` windows, a fixed seed, so the same check gets the same threshold)
and taken as the order statistic that makes a Monte Carlo test of exact size: a drift-free window is
flagged in at most 5% of checks, whatever the feature's shape and the two sample sizes. Window sizes are
rounded down to a ladder of eight steps per doubling (at most 9% fewer rows: a slightly higher threshold),
and the thresholds of each step are kept with the layout, so steady traffic reuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from regrow.api.driftpolicy import DriftTestType
from regrow.drift import stats
from regrow.drift.profile import PREDICTION, Profile

Vector = npt.NDArray[np.float64]
# Tests whose score is a p-value drift when it falls below the threshold; the others when it exceeds it.
BELOW_IS_DRIFT = frozenset({DriftTestType.CHI_SQUARE})
# Tests of an order (a CDF): they do not score categorical bins such as the predicted classes.
ORDERED = frozenset({DriftTestType.KS, DriftTestType.WASSERSTEIN})
FALSE_FLAG_RATE = 0.05
NULL_DRAWS = 499
SEED = 20261130
LADDER_STEPS = 8  # per doubling of the window's rows


@dataclass(frozen=True)
class Layout:
    """A profile's bins as padded (features, bins) matrices, built once per profile."""

    reference: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_]  # real bins
    ordinal: npt.NDArray[np.bool_]  # real bins but missing (none for a categorical feature)
    positions: npt.NDArray[np.float64]
    inputs: int  # the first rows are the model's inputs; a last one may be its predictions
    # Calibrated critical statistics, by (rows per feature on the ladder, test).
    critical: dict[tuple[tuple[int, ...], DriftTestType], Vector] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, profile: Profile) -> Layout:
        width = int(profile.sizes.max())
        features = len(profile.features)
        mask = np.arange(width)[None, :] < profile.sizes[:, None]
        numeric = np.array([not f.categories for f in profile.features])
        ordinal = mask & (np.arange(width)[None, :] < (profile.sizes - 1)[:, None]) & numeric[:, None]
        positions = np.full((features, width), np.nan)
        for j, feature in enumerate(profile.features):
            if feature.categories:
                continue
            edges = np.asarray(feature.edges)
            positions[j, : len(edges) + 1] = [edges[0], *((edges[:-1] + edges[1:]) / 2), edges[-1]]
        inputs = sum(f.name != PREDICTION for f in profile.features)
        return cls(cls.pad(profile, profile.reference_counts()), mask, ordinal, positions, inputs)

    @staticmethod
    def pad(profile: Profile, flat: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        out = np.zeros((len(profile.features), int(profile.sizes.max())))
        for j, part in enumerate(profile.split(flat)):
            out[j, : len(part)] = part
        return out


def statistics(layout: Layout, live: Vector, tests: list[DriftTestType]) -> dict[DriftTestType, Vector]:
    """Each test's distance per feature, larger meaning further from the reference (chi-square's statistic
    rather than its p-value). ``live`` may hold a stack of windows, (..., features, bins)."""
    ref = layout.reference
    compute = {
        DriftTestType.PSI: lambda: stats.psi(ref, live, layout.mask),
        DriftTestType.KS: lambda: stats.ks(ref, live, layout.ordinal),
        DriftTestType.JENSEN_SHANNON: lambda: stats.jensen_shannon(ref, live, layout.mask),
        DriftTestType.CHI_SQUARE: lambda: stats.chi_square(ref, live, layout.mask)[0],
        DriftTestType.WASSERSTEIN: lambda: stats.wasserstein(ref, live, layout.ordinal, layout.positions),
    }
    return {test: compute[test]() for test in tests}


def _degrees(layout: Layout, live: Vector) -> npt.NDArray[np.int64]:
    return stats.chi_square(layout.reference, live, layout.mask)[1]


def to_scores(values: dict[DriftTestType, Vector], degrees: npt.NDArray[np.int64]) -> dict[DriftTestType, Vector]:
    """Statistics as the scores a policy states thresholds in: chi-square's as its p-value, with the
    window's ``degrees`` of freedom."""
    out = dict(values)
    if DriftTestType.CHI_SQUARE in out:
        out[DriftTestType.CHI_SQUARE] = stats.chi2_sf(out[DriftTestType.CHI_SQUARE], degrees)
    return out


def scores(layout: Layout, live: Vector, tests: list[DriftTestType]) -> dict[DriftTestType, Vector]:
    return to_scores(statistics(layout, live, tests), _degrees(layout, live))


def on_ladder(rows: int) -> int:
    """The largest step of the ladder at or below ``rows`` (rows themselves up to 16)."""
    if rows <= 16:
        return max(rows, 0)
    return math.floor(2 ** (math.floor(LADDER_STEPS * math.log2(rows)) / LADDER_STEPS))


def critical_values(
    layout: Layout, rows: npt.NDArray[np.int64], tests: list[DriftTestType]
) -> dict[DriftTestType, Vector]:
    """Per feature, the statistic that a drift-free window of ``rows`` exceeds with probability at most
    ``FALSE_FLAG_RATE`` (NaN where the window is empty)."""
    steps = tuple(on_ladder(int(n)) for n in rows)
    missing = [test for test in tests if (steps, test) not in layout.critical]
    if missing:
        rng = np.random.default_rng(SEED)
        counts = stats.null_counts(layout.reference, layout.mask, layout.ordinal, np.array(steps), NULL_DRAWS, rng)
        simulated = statistics(layout, counts.astype(np.float64), missing)  # (draws, features) each
        # Flag when fewer than FALSE_FLAG_RATE x (draws + 1) simulated windows reach the observed statistic.
        rank = math.ceil((1 - FALSE_FLAG_RATE) * (NULL_DRAWS + 1)) - 1
        empty = np.array(steps) == 0
        for test, values in simulated.items():
            layout.critical[(steps, test)] = np.where(empty, np.nan, np.partition(values, rank, axis=0)[rank])
    return {test: layout.critical[(steps, test)] for test in tests}


BY_TYPE = {DriftTestType.PSI: True, DriftTestType.CHI_SQUARE: False}  # a policy without tests: numeric or not


@dataclass(frozen=True)
class Check:
    samples: int
    scores: dict[DriftTestType, Vector]  # NaN where a test does not apply (see ``applies``)
    thresholds: dict[DriftTestType, Vector]  # per feature: the threshold each score was held against
    drifted: npt.NDArray[np.bool_]  # per feature: any test past its threshold
    breached: bool  # enough samples, and at least driftShare of the counted features drifted
    counted: int  # the features driftShare applies to: the first ones
    applies: dict[DriftTestType, npt.NDArray[np.bool_]] = field(default_factory=dict)  # per test, per feature

    @property
    def drifted_count(self) -> int:
        """Drifted features among those driftShare applies to."""
        return int(self.drifted[: self.counted].sum())


def applying(
    layout: Layout, tests: list[DriftTestType], by_type: bool = False
) -> dict[DriftTestType, npt.NDArray[np.bool_]]:
    """Which features each test scores: ks and wasserstein only the numeric ones (a categorical feature has no
    order, so no CDF to compare); ``by_type`` (a policy that names no tests), psi the numeric features and
    chi-square the categorical ones, as Evidently picks distances for numbers and category tests for
    categories."""
    numeric: npt.NDArray[np.bool_] = np.asarray(layout.ordinal.any(axis=1), dtype=np.bool_)
    every = np.ones(len(numeric), dtype=np.bool_)
    out = {test: numeric.copy() if test in ORDERED else every.copy() for test in tests}
    if by_type:
        for test, numbers in BY_TYPE.items():
            if test in out:
                out[test] = out[test] & (numeric if numbers else ~numeric)
    return out


def check(
    layout: Layout, live: Vector, thresholds: dict[DriftTestType, Decimal | None], drift_share: Decimal,
    min_samples: int, count_prediction: bool = False, by_type: bool = False,
) -> Check:  # fmt: skip
    """Score ``live`` (padded counts, as ``Layout.pad`` makes them) against the policy's thresholds, each
    test without one calibrated to this window (see the module's docstring), on the features it applies to
    (``applying``). ``driftShare`` applies to the inputs, and to the predictions too with
    ``count_prediction``."""
    rows = live.sum(axis=1).round().astype(np.int64)
    samples = int(rows[: layout.inputs].max(initial=0))
    values = statistics(layout, live, list(thresholds))
    applies = applying(layout, list(thresholds), by_type)
    for test in values:
        values[test] = np.where(applies[test], values[test], np.nan)
    calibrated = [test for test, limit in thresholds.items() if limit is None]
    critical = critical_values(layout, rows, calibrated) if calibrated else {}
    degrees = _degrees(layout, live) if DriftTestType.CHI_SQUARE in values else np.zeros(0, dtype=np.int64)
    out = {test: np.where(applies[test], score, np.nan) for test, score in to_scores(values, degrees).items()}
    used = to_scores(critical, degrees) | {
        test: np.full(len(rows), float(limit)) for test, limit in thresholds.items() if limit is not None
    }
    drifted = np.zeros(len(rows), dtype=bool)
    for test, value in values.items():
        if test in critical:  # on the statistic: exact even where a p-value underflows to 0
            drifted |= value > critical[test]
        elif test in BELOW_IS_DRIFT:
            drifted |= out[test] < used[test]
        else:
            drifted |= out[test] > used[test]
    for test in used:
        used[test] = np.where(applies[test], used[test], np.nan)
    enough = samples >= min_samples
    counted = len(rows) if count_prediction else layout.inputs
    share = drifted[:counted]
    breached = bool(enough and share.sum() >= float(drift_share) * len(share) and share.any())
    return Check(samples, out, used, drifted & enough, breached, counted, applies)
