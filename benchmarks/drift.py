"""Drift scoring speed: bin 1,000,000 rows x 20 features into their reference profiles and score all five
tests, vectorised, against a per-feature scipy loop doing the same. Prints figures; asserts nothing.

The tests are calibrated (no thresholds given): a window size's thresholds are simulated once per
profile and ladder step, then reused; the table shows both the check with them at hand and the first
check at a new size.

    python benchmarks/drift.py [--rows 1000000] [--features 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from decimal import Decimal

import numpy as np
import numpy.typing as npt
from scipy import stats as sst  # type: ignore[import-untyped]
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]

from regrow.api.driftpolicy import DriftTestType
from regrow.drift.policy import Layout, check
from regrow.drift.profile import Profile, fit_profile


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def scipy_loop(profile: Profile, live_rows: npt.NDArray[np.float32]) -> None:
    """The same binning and five scores, one feature at a time with numpy's histogram and scipy."""
    for j, feature in enumerate(profile.features):
        column = live_rows[:, j].astype(np.float64)
        edges = np.asarray(feature.edges)
        present = column[~np.isnan(column)]
        regular = np.histogram(present[(present >= edges[0]) & (present <= edges[-1])], bins=edges)[0]
        live = np.array([(present < edges[0]).sum(), *regular, (present > edges[-1]).sum(), np.isnan(column).sum()])
        ref = np.asarray(feature.counts, dtype=np.float64)
        p, q = ref / ref.sum(), live / live.sum()
        pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        float(np.sum((qf - pf) * np.log(qf / pf)))
        jensenshannon(p, q, base=2)
        table = np.stack([ref, live])
        sst.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
        x = np.array([edges[0], *((edges[:-1] + edges[1:]) / 2), edges[-1]])
        sst.wasserstein_distance(x, x, p[:-1] + 1e-12, q[:-1] + 1e-12)
        np.max(np.abs(np.cumsum(p[:-1]) - np.cumsum(q[:-1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(args.features)]
    profile = fit_profile(rng.normal(0, 1, (50_000, args.features)), names)
    layout = Layout.of(profile)
    live_rows = rng.normal(0.3, 1.1, (args.rows, args.features)).astype(np.float32)
    thresholds: dict[DriftTestType, Decimal | None] = dict.fromkeys(DriftTestType)

    def vectorised() -> None:
        counts = Layout.pad(profile, profile.bin_counts(live_rows))
        check(layout, counts, thresholds, Decimal("0.5"), 500)

    counts = Layout.pad(profile, profile.bin_counts(live_rows))

    def bin_only() -> None:
        profile.bin_counts(live_rows)

    def score_only() -> None:
        check(layout, counts, thresholds, Decimal("0.5"), 500)

    def first_at_size(tests: dict[DriftTestType, Decimal | None]) -> Callable[[], object]:
        def run() -> None:
            layout.critical.clear()  # no thresholds simulated yet
            check(layout, counts, tests, Decimal("0.5"), 500)

        return run

    total = best_of(3, vectorised)
    binning = best_of(3, bin_only)
    scoring = best_of(5, score_only)
    cold = best_of(5, first_at_size(thresholds))
    cold_psi = best_of(5, first_at_size({DriftTestType.PSI: None}))
    loop = best_of(2, lambda: scipy_loop(profile, live_rows))
    tests = ", ".join(t.value for t in DriftTestType)
    print(f"{args.rows:,} rows x {args.features} features, {len(profile.features[0].counts)} bins each; tests: {tests}")
    print(
        f"  vectorised bin + score   {total * 1e3:9.1f} ms   (bin {binning * 1e3:.1f} ms, score {scoring * 1e3:.2f} ms)"
    )
    print(
        f"  score, new window size   {cold * 1e3:9.1f} ms   (thresholds simulated; psi alone {cold_psi * 1e3:.1f} ms)"
    )
    print(f"  per-feature scipy loop   {loop * 1e3:9.1f} ms")
    print(f"  speed-up                 {loop / total:9.1f} x")


if __name__ == "__main__":
    main()
