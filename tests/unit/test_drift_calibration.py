"""Calibrated drift tests: the false-flag rate of every test on drift-free windows, swept over feature
shapes, reference sizes (100 to 100,000 training rows) and window sizes (100 to 1,000,000 rows), and
the power to see a 0.5 standard-deviation mean shift.

Each cell fits one profile whose features are independent reference samples of one shape, so one check
scores them all. Windows are drawn as bin counts from the shape's exact bin masses (from its CDF at the
profile's edges) rather than as rows, which keeps a million-row window cheap. A feature's false-flag
rate is averaged over reference samples as well as windows: the reference is a sample too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as sst  # type: ignore[import-untyped]

from regrow.api.driftpolicy import DriftTestType as T
from regrow.drift.policy import FALSE_FLAG_RATE, Layout, check
from regrow.drift.profile import Profile, fit_profile

Array = npt.NDArray[np.float64]
REFERENCES = (100, 1_000, 10_000, 100_000)
WINDOWS = (100, 1_000, 10_000, 100_000, 1_000_000)
FEATURES = 100  # independent reference samples per cell
REPEATS = 4  # drift-free windows per cell


@dataclass(frozen=True)
class Shape:
    """A feature's distribution: P(X < x), P(X <= x), its missing share, a sampler, and the same shape with
    its mean moved up by half a standard deviation."""

    name: str
    below: Callable[[Array], Array]
    at_most: Callable[[Array], Array]
    draw: Callable[[np.random.Generator, tuple[int, int]], Array]
    missing: float = 0.0
    moved: Shape | None = None

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> Array:
        x = self.draw(rng, size)
        return np.where(rng.random(size) < self.missing, np.nan, x)

    def masses(self, edges: Array) -> Array:
        """Exact masses of a profile's bins: underflow, [e0, e1), ..., [e_m-1, e_m], overflow, missing."""
        lt, le = self.below(edges), self.at_most(edges)
        regular = np.diff(lt)
        regular[-1] = le[-1] - lt[-2]
        present = np.clip([lt[0], *regular, 1 - le[-1]], 0, None)
        return np.array([*(present * (1 - self.missing)), self.missing])


def continuous(name: str, dist: Callable[[float], object], loc: float, missing: float = 0.0) -> Shape:
    """A shape from a scipy distribution family, which takes its location, and its copy half an sd higher."""

    def make(at: float) -> Shape:
        frozen = dist(at)
        cdf: Callable[[Array], Array] = frozen.cdf  # type: ignore[attr-defined]
        return Shape(name, cdf, cdf, lambda rng, size: frozen.rvs(size=size, random_state=rng), missing)  # type: ignore[attr-defined]

    sd = float(dist(loc).std())  # type: ignore[attr-defined]
    return replace(make(loc), moved=make(loc + sd / 2))


class Bimodal:
    """Half N(-2, 0.5), half N(2, 1), shifted by ``loc``."""

    def __init__(self, loc: float) -> None:
        self.loc = loc

    def cdf(self, x: Array) -> Array:
        return 0.5 * sst.norm.cdf(x, -2 + self.loc, 0.5) + 0.5 * sst.norm.cdf(x, 2 + self.loc, 1)  # type: ignore[no-any-return]

    def rvs(self, size: tuple[int, int], random_state: np.random.Generator) -> Array:
        left = random_state.random(size) < 0.5
        return np.where(left, random_state.normal(-2, 0.5, size), random_state.normal(2, 1, size)) + self.loc

    def std(self) -> float:
        return math.sqrt(0.5 * 0.25 + 0.5 * 1 + 4)


def poisson(rate: float) -> Shape:
    """Counts with ties: the moved copy has its rate raised by half an sd (sqrt(rate) / 2)."""

    def make(lam: float) -> Shape:
        d = sst.poisson(lam)
        return Shape(
            "discrete (Poisson)",
            lambda x: d.cdf(np.ceil(x) - 1),
            lambda x: d.cdf(np.floor(x)),
            lambda rng, size: rng.poisson(lam, size).astype(np.float64),
        )

    return replace(make(rate), moved=make(rate + math.sqrt(rate) / 2))


def mostly_zeros(zeros: float) -> Shape:
    """Exactly 0 with probability ``zeros``, else exponential(1); the moved copy has fewer zeros, its mean
    half an sd higher."""

    def make(z: float) -> Shape:
        return Shape(
            "90% zeros",
            lambda x: z * (x > 0) + (1 - z) * sst.expon.cdf(x),
            lambda x: z * (x >= 0) + (1 - z) * sst.expon.cdf(x),
            lambda rng, size: np.where(rng.random(size) < z, 0.0, rng.exponential(1, size)),
        )

    sd = math.sqrt((1 - zeros) * 2 - (1 - zeros) ** 2)
    return replace(make(zeros), moved=make(zeros - sd / 2))


SHAPES = [
    continuous("normal", sst.norm, 0.0),
    continuous("skewed (lognormal)", lambda at: sst.lognorm(1.0, loc=at), 0.0),
    continuous("bimodal", Bimodal, 0.0),
    poisson(3.0),
    mostly_zeros(0.9),
    continuous("30% missing", sst.norm, 0.0, missing=0.3),
]


def exact_masses(shape: Shape, profile: Profile, layout: Layout) -> Array:
    out = np.zeros_like(layout.reference)
    for j, feature in enumerate(profile.features):
        part = shape.masses(np.asarray(feature.edges, dtype=np.float64))
        out[j, : len(part)] = part
    return np.asarray(out / out.sum(axis=1, keepdims=True), dtype=np.float64)


def flagged(layout: Layout, live: Array, test: T) -> npt.NDArray[np.bool_]:
    return check(layout, live, {test: None}, Decimal("0.5"), 1).drifted


@dataclass
class Sweep:
    false_flags: dict[tuple[str, int, int, T], float]
    power: dict[tuple[str, int, T], float]


@pytest.fixture(scope="module")
def sweep() -> Sweep:
    rng = np.random.default_rng(20261130)
    result = Sweep({}, {})
    names = [f"sample{i}" for i in range(FEATURES)]
    for shape in SHAPES:
        for n_ref in REFERENCES:
            profile = fit_profile(shape.sample(rng, (n_ref, FEATURES)), names)
            layout = Layout.of(profile)
            same = exact_masses(shape, profile, layout)
            for rows in WINDOWS:
                windows = [rng.multinomial(rows, same).astype(np.float64) for _ in range(REPEATS)]
                for test in T:
                    hits = sum(int(flagged(layout, live, test).sum()) for live in windows)
                    result.false_flags[(shape.name, n_ref, rows, test)] = hits / (REPEATS * FEATURES)
            if n_ref >= 10_000 and shape.moved is not None:
                live = rng.multinomial(5_000, exact_masses(shape.moved, profile, layout)).astype(np.float64)
                for test in T:
                    result.power[(shape.name, n_ref, test)] = float(flagged(layout, live, test).mean())
    _print(result)
    return result


def _print(result: Sweep) -> None:
    print(f"\nfalse flags per feature, worst shape of {len(SHAPES)}, {FEATURES} references x {REPEATS} windows a cell")
    print("| test | reference rows | " + " | ".join(f"{w:,}" for w in WINDOWS) + " |")
    for test in T:
        for n_ref in REFERENCES:
            worst = [max(result.false_flags[(s.name, n_ref, w, test)] for s in SHAPES) for w in WINDOWS]
            print(f"| {test.value} | {n_ref:,} | " + " | ".join(f"{v:.1%}" for v in worst) + " |")
    pooled = {t.value: np.mean([v for k, v in result.false_flags.items() if k[3] is t]) for t in T}
    print("over the whole sweep: " + ", ".join(f"{name} {rate:.2%}" for name, rate in pooled.items()))
    print("power against a 0.5 sd mean shift, 5,000-row windows, the weakest shape and reference")
    for test in T:
        weakest = min((v, k) for k, v in result.power.items() if k[2] is test)
        print(f"  {test.value}: {weakest[0]:.0%} ({weakest[1][0]}, {weakest[1][1]:,} reference rows)")


@pytest.mark.parametrize("test", list(T), ids=[t.value for t in T])
def test_drift_free_windows_are_flagged_at_most_five_percent_of_the_time(sweep: Sweep, test: T) -> None:
    rates = {key: rate for key, rate in sweep.false_flags.items() if key[3] is test}
    # A cell's rate is an estimate over FEATURES reference samples (its windows share them): three standard
    # errors of slack, as a rate of exactly 5% could show.
    slack = 3 * math.sqrt(FALSE_FLAG_RATE * (1 - FALSE_FLAG_RATE) / FEATURES)
    too_many = {key[:3]: f"{rate:.1%}" for key, rate in rates.items() if rate > FALSE_FLAG_RATE + slack}
    assert not too_many, f"{test.value} flags drift-free windows too often: {too_many}"
    # Over the sweep: pooled over every reference sample (each cell's windows share theirs), two of them.
    pooled = float(np.mean(list(rates.values())))
    samples = len(SHAPES) * len(REFERENCES) * FEATURES
    limit = FALSE_FLAG_RATE + 2 * math.sqrt(FALSE_FLAG_RATE * (1 - FALSE_FLAG_RATE) / samples)
    assert pooled <= limit, f"{test.value}: {pooled:.2%} of drift-free features flagged over the sweep"


@pytest.mark.parametrize("test", list(T), ids=[t.value for t in T])
def test_half_a_standard_deviation_is_caught_in_five_thousand_rows(sweep: Sweep, test: T) -> None:
    weak = {key[:2]: f"{v:.0%}" for key, v in sweep.power.items() if key[2] is test and v < 0.9}
    assert not weak, f"{test.value} misses a 0.5 sd shift in 5,000 rows: {weak}"
    assert len([k for k in sweep.power if k[2] is test]) == 2 * len(SHAPES)
