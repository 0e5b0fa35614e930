"""Drift statistics against scipy's reference implementations, and the policy's verdicts. The calibration
sweep over feature shapes and sample sizes is in test_drift_calibration.py."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as sst  # type: ignore[import-untyped]
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]

from regrow.api.driftpolicy import DriftTestType as T
from regrow.drift import stats
from regrow.drift.policy import Layout, check, on_ladder, scores
from regrow.drift.profile import PREDICTION, Profile, fit_profile, prediction_profile

NAMES = ["a", "b", "c", "d"]


def reference(rows: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    x = np.column_stack(
        [rng.normal(0, 1, rows), rng.normal(50, 10, rows), rng.exponential(2, rows), rng.uniform(-1, 1, rows)]
    )
    x[rng.random(rows) < 0.02, 1] = np.nan
    return x


def shifted(rows: int, rng: np.random.Generator, sigmas: float = 2.0) -> npt.NDArray[np.float64]:
    x = reference(rows, rng)
    x[:, 0] += sigmas * 1.0
    x[:, 1] += sigmas * 10.0
    return x


@pytest.fixture(scope="module")
def fitted() -> tuple[Profile, Layout]:
    profile = fit_profile(reference(20000, np.random.default_rng(0)), NAMES)
    return profile, Layout.of(profile)


def live_counts(profile: Profile, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return Layout.pad(profile, profile.bin_counts(x))


def per_feature(
    layout: Layout, live: npt.NDArray[np.float64], j: int, ordinal: bool = False
) -> tuple[npt.NDArray[np.float64], ...]:
    keep = (layout.ordinal if ordinal else layout.mask)[j]
    p, q = layout.reference[j][keep], live[j][keep]
    return p / p.sum(), q / q.sum(), q, layout.positions[j][keep]


def test_psi_matches_its_definition(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(3000, np.random.default_rng(1), 0.5))
    got = stats.psi(layout.reference, live, layout.mask)
    for j in range(len(NAMES)):
        p, q, *_ = per_feature(layout, live, j)
        p, q = np.maximum(p, stats.EPSILON), np.maximum(q, stats.EPSILON)
        p, q = p / p.sum(), q / q.sum()
        assert got[j] == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-12)


def test_jensen_shannon_matches_scipy(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(3000, np.random.default_rng(2), 1.0))
    got = stats.jensen_shannon(layout.reference, live, layout.mask)
    for j in range(len(NAMES)):
        p, q, *_ = per_feature(layout, live, j)
        assert got[j] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


def test_chi_square_is_scipys_test_of_homogeneity(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(800, np.random.default_rng(3), 0.2))
    statistic, dof = stats.chi_square(layout.reference, live, layout.mask)
    pvalue = scores(layout, live, [T.CHI_SQUARE])[T.CHI_SQUARE]
    for j in range(len(NAMES)):
        table = np.stack([layout.reference[j], live[j]])[:, layout.mask[j]]
        want = sst.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
        assert statistic[j] == pytest.approx(want.statistic, rel=1e-10)
        assert dof[j] == want.dof
        assert pvalue[j] == pytest.approx(want.pvalue, rel=1e-8, abs=1e-300)


def test_chi2_survival_function_matches_scipy() -> None:
    x = np.array([0.0, 0.01, 0.5, 1.0, 3.0, 7.5, 12.0, 40.0, 150.0, 900.0, 3000.0])
    for dof in (1, 2, 5, 11, 12, 50, 200):
        assert stats.chi2_sf(x, np.full(len(x), dof)) == pytest.approx(sst.chi2.sf(x, dof), rel=1e-9, abs=1e-300)
    # Both expansions stop once converged everywhere: a wide sweep of sizes and degrees of freedom, mixed.
    rng = np.random.default_rng(0)
    dofs = rng.integers(1, 600, 20_000)
    xs = rng.uniform(0, 1, 20_000) * dofs * rng.choice([0.01, 0.5, 1, 2, 5], 20_000)
    assert stats.chi2_sf(xs, dofs) == pytest.approx(sst.chi2.sf(xs, dofs), rel=1e-9, abs=1e-300)


def test_wasserstein_matches_scipy_on_bin_positions(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(3000, np.random.default_rng(4), 0.7))
    got = stats.wasserstein(layout.reference, live, layout.ordinal, layout.positions)
    for j in range(len(NAMES)):
        p, q, _, x = per_feature(layout, live, j, ordinal=True)
        std = np.sqrt(np.sum(p * (x - np.sum(p * x)) ** 2))
        assert got[j] == pytest.approx(sst.wasserstein_distance(x, x, p, q) / std, rel=1e-9)


def test_binned_ks_approaches_ks_2samp_for_large_samples() -> None:
    rng = np.random.default_rng(5)
    ref_sample = rng.normal(0, 1, 50000)
    live_sample = rng.normal(0.1, 1, 50000)
    profile = fit_profile(ref_sample[:, None], ["x"], bins=500)
    layout = Layout.of(profile)
    got = stats.ks(layout.reference, live_counts(profile, live_sample[:, None]), layout.ordinal)[0]
    assert got == pytest.approx(sst.ks_2samp(ref_sample, live_sample).statistic, abs=0.005)


def test_same_distribution_scores_no_drift_and_empty_bins_stay_finite(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    same = scores(layout, layout.reference.copy(), list(T))
    assert np.allclose(same[T.PSI], 0) and np.allclose(same[T.JENSEN_SHANNON], 0)
    assert np.allclose(same[T.KS], 0) and np.allclose(same[T.WASSERSTEIN], 0)
    assert (same[T.CHI_SQUARE] == 1).all()
    one_value = live_counts(profile, np.full((50, 4), 1e9))  # everything in the overflow bins
    for values in scores(layout, one_value, list(T)).values():
        assert np.isfinite(values).all()


CALIBRATED: dict[T, Decimal | None] = dict.fromkeys(T)


def _rate(
    layout: Layout, profile: Profile, thresholds: dict[T, Decimal | None], sigmas: float, rows: int = 500
) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(100):
        x = shifted(rows, rng, sigmas) if sigmas else reference(rows, rng)
        hits += check(layout, live_counts(profile, x), thresholds, Decimal("0.5"), 500).breached
    return hits / 100


def test_no_false_alarms_at_min_samples_and_drift_is_caught(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    psi_only: dict[T, Decimal | None] = {T.PSI: None}
    assert _rate(layout, profile, psi_only, 0) < 0.05
    assert _rate(layout, profile, CALIBRATED, 0) < 0.05
    assert _rate(layout, profile, psi_only, 2.0) >= 0.95
    assert _rate(layout, profile, CALIBRATED, 2.0) >= 0.95
    alarms = (_rate(layout, profile, psi_only, 0), _rate(layout, profile, CALIBRATED, 0))
    print(f"\nfalse alarms in 100 windows of 500: psi {alarms[0]:.0%}, all five tests {alarms[1]:.0%}")


def test_too_few_samples_never_breach(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(499, np.random.default_rng(7), 3.0))
    result = check(layout, live, CALIBRATED, Decimal("0.5"), 500)
    assert result.samples == 499 and not result.breached and result.drifted_count == 0
    assert result.scores[T.PSI][0] > 1  # the scores are there, the verdict waits for more samples


def test_an_explicit_threshold_keeps_its_meaning(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    live = live_counts(profile, shifted(3000, np.random.default_rng(8), 0.3))
    explicit = {T.PSI: Decimal("0.05"), T.CHI_SQUARE: Decimal("0.001"), T.KS: None}
    result = check(layout, live, explicit, Decimal("0.5"), 1)
    psi, pvalue = result.scores[T.PSI], result.scores[T.CHI_SQUARE]
    assert (result.thresholds[T.PSI] == 0.05).all() and (result.thresholds[T.CHI_SQUARE] == 0.001).all()
    calibrated = check(layout, live, {T.KS: None}, Decimal("0.5"), 1)
    want = (psi > 0.05) | (pvalue < 0.001) | calibrated.drifted
    assert (result.drifted == want).all()
    assert want.any() and not want.all()  # the example decides both ways


def test_calibrated_thresholds_are_reported_and_follow_the_window(fitted: tuple[Profile, Layout]) -> None:
    profile, layout = fitted
    x = shifted(200_000, np.random.default_rng(9), 0.06)  # features a and b move, c and d do not
    for test in T:
        small = check(layout, live_counts(profile, x[:1000]), {test: None}, Decimal("0.5"), 1)
        large = check(layout, live_counts(profile, x), {test: None}, Decimal("0.5"), 1)
        for result in (small, large):  # the verdict is the reported score against the reported threshold
            score, limit = result.scores[test], result.thresholds[test]
            assert (result.drifted == (score < limit if test is T.CHI_SQUARE else score > limit)).all()
        assert not small.drifted[:2].any() and large.drifted[:2].all()  # 0.06 sd shows in 200,000 rows only
        if test is not T.CHI_SQUARE:
            # The reference (20,000 rows) is a sample too: more live rows shrink the threshold, not to zero.
            assert (large.thresholds[test] < small.thresholds[test]).all()
            assert (large.thresholds[test] > 0).all()
        again = check(layout, live_counts(profile, x[:1000]), {test: None}, Decimal("0.5"), 1)
        assert (again.thresholds[test] == small.thresholds[test]).all()  # a fixed seed: the same verdict


def test_window_sizes_round_down_to_a_ladder() -> None:
    steps = [on_ladder(n) for n in range(0, 5_000_000, 997)]
    assert all(0 <= s <= n for s, n in zip(steps, range(0, 5_000_000, 997), strict=True))
    assert all(s >= 0.9 * n for s, n in zip(steps, range(0, 5_000_000, 997), strict=True) if n > 16)
    assert len(set(steps)) < 200  # few steps, so steady traffic reuses its thresholds


def test_predictions_are_monitored_like_a_feature_but_count_apart() -> None:
    """A classifier's predicted classes are a categorical feature, __prediction__: scored by psi,
    jensenShannon and chiSquare (ks and wasserstein need an order), and left out of driftShare unless the
    policy counts it."""
    rng = np.random.default_rng(12)
    inputs = fit_profile(rng.normal(0, 1, (5000, 2)), ["a", "b"])
    classes = np.array(["cat", "dog", "eel"])
    profile = replace(
        inputs, prediction=prediction_profile(rng.choice(classes, 2000, p=[0.5, 0.3, 0.2]), list(classes))
    )
    assert Profile.from_json(profile.to_json()) == profile
    monitored = profile.monitored()
    layout = Layout.of(monitored)
    assert monitored.names == ["a", "b", PREDICTION] and layout.inputs == 2
    assert monitored.features[2].labels == ["cat", "dog", "eel"] and not layout.ordinal[2].any()

    def window(shares: list[float]) -> npt.NDArray[np.float64]:
        x = rng.normal(0, 1, (3000, 2))
        predicted = np.bincount(rng.choice(3, 3000, p=shares), minlength=3)
        return Layout.pad(monitored, np.concatenate([inputs.bin_counts(x), predicted]))

    every: dict[T, Decimal | None] = dict.fromkeys(T)
    same = check(layout, window([0.5, 0.3, 0.2]), every, Decimal("0.5"), 1)
    moved = check(layout, window([0.2, 0.3, 0.5]), every, Decimal("0.5"), 1)
    assert not same.drifted[2] and moved.drifted[2]
    for result in (same, moved):
        assert np.isnan(result.scores[T.KS][2]) and np.isnan(result.scores[T.WASSERSTEIN][2])
        assert np.isfinite(result.scores[T.PSI][2]) and np.isfinite(result.thresholds[T.CHI_SQUARE][2])
    assert not moved.breached and moved.counted == 2  # the inputs did not move
    counted = check(layout, window([0.2, 0.3, 0.5]), every, Decimal("0.3"), 1, count_prediction=True)
    assert counted.breached and counted.counted == 3
