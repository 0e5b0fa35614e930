"""Reference profiles: fitted bins, vectorised binning, and the JSON the trainer writes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from regrow.drift.profile import SORT_ROWS, Profile, fit_profile


def _data(rows: int = 5000, seed: int = 1) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.normal(10, 3, rows),  # continuous
            rng.integers(0, 4, rows).astype(float),  # discrete: duplicate quantiles collapse
            np.full(rows, 7.0),  # constant
            rng.exponential(2.0, rows),  # skewed
        ]
    )
    x[rng.random(rows) < 0.05, 0] = np.nan  # 5% missing in the first feature
    return x


def _independent_counts(values: npt.NDArray[np.float64], edges: tuple[float, ...]) -> list[int]:
    """underflow, regular bins (np.histogram: last bin closed), overflow, missing."""
    present = values[~np.isnan(values)]
    lo, hi = edges[0], edges[-1]
    inside = present[(present >= lo) & (present <= hi)]
    regular = np.histogram(inside, bins=np.array(edges))[0] if len(set(edges)) > 1 else [inside.size]
    return [
        int((present < lo).sum()),
        *map(int, regular),
        int((present > hi).sum()),
        int(np.isnan(values).sum()),
    ]


def test_fit_counts_the_training_data_like_numpy_histogram() -> None:
    x = _data()
    names = ["a", "b", "c", "d"]
    profile = fit_profile(x, names, bins=10)
    x32 = x.astype(np.float32).astype(np.float64)
    for j, feature in enumerate(profile.features):
        assert list(feature.counts) == _independent_counts(x32[:, j], feature.edges)
        assert sum(feature.counts) == len(x)
        assert feature.counts[0] == 0 and feature.counts[-2] == 0  # no under/overflow in its own data
    assert profile.names == names
    assert len(profile.features[0].edges) == 11
    # Duplicate quantiles collapse; the maximum, a quarter of the data, gets a bin of its own (3 to 3 + ulp).
    assert profile.features[1].edges == (0.0, 1.0, 2.0, 3.0, float(np.nextafter(np.float32(3), np.float32(4))))
    assert list(profile.features[1].counts[1:-2]) == [int((x[:, 1] == v).sum()) for v in range(4)]
    assert profile.features[2].edges == (7.0, 7.0)
    assert profile.features[0].counts[-1] == int(np.isnan(x[:, 0]).sum())


def test_a_heavy_value_gets_a_bin_of_its_own() -> None:
    rng = np.random.default_rng(3)
    zeros = np.where(rng.random(10_000) < 0.9, 0.0, rng.exponential(1.0, 10_000))
    ones = np.where(rng.random(10_000) < 0.8, 1.0, rng.uniform(0, 1, 10_000))  # a heavy maximum
    profile = fit_profile(np.column_stack([zeros, ones]), ["zeros", "ones"])
    for feature, column, value in zip(profile.features, (zeros, ones), (0.0, 1.0), strict=True):
        alone = feature.edges.index(value) + 1  # the bin that starts at the value (after underflow)
        assert feature.counts[alone] == int((column == value).sum())
    # Quantiles alone would cut the zeros' feature at [0, max]: a change in the share of zeros unseen.
    assert len(profile.features[0].edges) >= 3


def test_bins_of_edge_values() -> None:
    profile = fit_profile(np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), ["x"], bins=4)
    assert profile.features[0].edges == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert profile.features[0].labels == ["underflow", "b0", "b1", "b2", "b3", "overflow", "missing"]
    values = np.array([[-0.1], [0.0], [0.5], [1.0], [3.99], [4.0], [4.01], [np.nan], [np.inf], [-np.inf]])
    assert profile.bin_indices(values)[:, 0].tolist() == [0, 1, 1, 2, 4, 4, 5, 6, 5, 0]


def test_constant_feature_has_one_regular_bin() -> None:
    profile = fit_profile(np.full((10, 1), 3.0), ["k"])
    assert profile.bin_indices(np.array([[2.0], [3.0], [4.0]]))[:, 0].tolist() == [0, 1, 2]


def test_counts_are_flat_with_offsets_and_split_back() -> None:
    x = _data()
    profile = fit_profile(x, ["a", "b", "c", "d"])
    flat = profile.bin_counts(x)
    assert flat.tolist() == profile.reference_counts().tolist()
    parts = profile.split(flat)
    assert [len(p) for p in parts] == profile.sizes.tolist()
    assert profile.offsets.tolist() == np.concatenate([[0], np.cumsum(profile.sizes)[:-1]]).tolist()


def test_binning_in_chunks_matches_binning_at_once() -> None:
    x = _data(rows=40000, seed=3)
    profile = fit_profile(x[:1000], ["a", "b", "c", "d"])
    whole = profile.bin_indices(x)
    parts = np.vstack([profile.bin_indices(x[i : i + 777]) for i in range(0, len(x), 777)])
    assert np.array_equal(whole, parts)


def test_json_round_trip() -> None:
    profile = fit_profile(_data(), ["a", "b", "c", "d"])
    again = Profile.from_json(profile.to_json())
    assert again == profile
    assert np.array_equal(again.bin_indices(_data(seed=9)), profile.bin_indices(_data(seed=9)))


def test_shape_and_schema_errors() -> None:
    profile = fit_profile(_data(), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        profile.bin_indices(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        fit_profile(np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="unsupported profile schemaVersion"):
        Profile.from_json(b'{"schemaVersion": 99, "rows": 0, "features": []}')


def test_counting_by_sorting_matches_counting_by_comparing() -> None:
    x = _data(rows=30000, seed=4)
    x[::7, 3] = np.nan
    x[:50, 0] = 1e6  # overflow
    x[50:100, 1] = -1e6  # underflow
    x[100:110, 2], x[110:120, 2] = np.inf, -np.inf  # sorted next to NaN, and not missing
    profile = fit_profile(_data(rows=2000, seed=5), ["a", "b", "c", "d"])
    by_comparing = np.bincount((profile.bin_indices(x) + profile.offsets).ravel(), minlength=int(profile.sizes.sum()))
    assert len(x) >= SORT_ROWS
    assert profile.bin_counts(x).tolist() == by_comparing.tolist()
    assert (
        profile.bin_counts(x[:100]).tolist()
        == np.bincount(
            (profile.bin_indices(x[:100]) + profile.offsets).ravel(), minlength=int(profile.sizes.sum())
        ).tolist()
    )
