"""Drift tests on binned counts, vectorised over features (pure numpy, no per-sample loops).

Inputs are count matrices of shape (features, bins) laid out as in ``regrow.drift.profile``: underflow,
the regular bins, overflow, missing, then zero padding up to the widest feature. ``positions`` gives
each ordinal bin a location on the feature's axis (NaN for the missing bin and for padding).

Empty bins: PSI needs a non-zero frequency in every bin, so frequencies are floored at ``EPSILON``
(1e-4) and renormalised. Chi-square compares the two samples (a test of homogeneity over the bins either
one reached); Jensen-Shannon, KS and Wasserstein need no floor.

The reference is a sample too, and its bins are cut at its own quantiles. ``null_counts`` draws the live
counts that a window of the reference's own distribution could bring, which is what calibrated thresholds
are taken from (see ``regrow.drift.policy``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

EPSILON = 1e-4
Matrix = npt.NDArray[np.float64]


def _f64(value: object) -> npt.NDArray[np.float64]:
    return np.asarray(value, dtype=np.float64)


def frequencies(counts: Matrix, mask: npt.NDArray[np.bool_]) -> Matrix:
    """Each row's counts over the bins in ``mask``, as frequencies that sum to 1 over those bins."""
    kept = np.where(mask, counts, 0.0)
    totals = kept.sum(axis=-1, keepdims=True)
    return _f64(np.divide(kept, totals, out=np.zeros_like(kept), where=totals > 0))


def floored(freq: Matrix, mask: npt.NDArray[np.bool_]) -> Matrix:
    out = np.where(mask, np.maximum(freq, EPSILON), 0.0)
    return _f64(out / out.sum(axis=-1, keepdims=True))


def psi(ref: Matrix, live: Matrix, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Population stability index: sum of (q - p) ln(q / p) over bins."""
    p, q = floored(frequencies(ref, mask), mask), floored(frequencies(live, mask), mask)
    terms = np.where(mask, (q - p) * np.log(np.where(mask, q, 1.0) / np.where(mask, p, 1.0)), 0.0)
    return _f64(terms.sum(axis=-1))


def jensen_shannon(ref: Matrix, live: Matrix, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Jensen-Shannon distance with base-2 logarithms (0 = same, 1 = disjoint), as scipy computes it."""
    p, q = frequencies(ref, mask), frequencies(live, mask)
    m = (p + q) / 2

    def kl(a: Matrix) -> npt.NDArray[np.float64]:
        return _f64(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=-1))

    divergence = (kl(p) + kl(q)) / 2 / math.log(2)
    return np.sqrt(np.clip(divergence, 0.0, None))


def chi_square(ref: Matrix, live: Matrix, mask: npt.NDArray[np.bool_]) -> tuple[Matrix, npt.NDArray[np.int64]]:
    """Pearson's chi-square test of homogeneity of the two samples over the bins that either reached:
    the statistic, sum over bins of (r N_l - l N_r)^2 / (N_r N_l (r + l)), and its degrees of freedom
    (those bins - 1). Zero when either sample is empty."""
    r, q = np.where(mask, ref, 0.0), np.where(mask, live, 0.0)
    n_r, n_l = r.sum(axis=-1, keepdims=True), q.sum(axis=-1, keepdims=True)
    total = r + q
    reached = total > 0
    terms = (r * n_l - q * n_r) ** 2 / np.where(reached, total, 1.0)
    scale = n_r * n_l
    statistic = np.divide(terms.sum(axis=-1, keepdims=True), scale, out=np.zeros_like(scale), where=scale > 0)
    return _f64(statistic[..., 0]), (reached.sum(axis=-1) - 1).astype(np.int64)


def _cdfs(ref: Matrix, live: Matrix, ordinal: npt.NDArray[np.bool_]) -> tuple[Matrix, Matrix]:
    return np.cumsum(frequencies(ref, ordinal), axis=-1), np.cumsum(frequencies(live, ordinal), axis=-1)


def ks(ref: Matrix, live: Matrix, ordinal: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Kolmogorov-Smirnov statistic on the binned CDFs of the present (non-missing) values."""
    f, g = _cdfs(ref, live, ordinal)
    return _f64(np.where(ordinal, np.abs(f - g), 0.0).max(axis=-1))


def wasserstein(
    ref: Matrix, live: Matrix, ordinal: npt.NDArray[np.bool_], positions: Matrix
) -> npt.NDArray[np.float64]:
    """Earth mover's distance between the binned distributions (mass at each bin's position), in units of
    the reference's standard deviation so that one threshold fits features of any scale."""
    f, g = _cdfs(ref, live, ordinal)
    x = np.where(ordinal, positions, np.nan)
    # Between consecutive ordinal bins the CDFs are flat; padding and missing come after the last one.
    steps = np.nan_to_num(np.diff(x, axis=-1), nan=0.0)
    distance = (np.abs(f - g)[..., :-1] * steps).sum(axis=-1)
    p = frequencies(ref, ordinal)
    xs = np.nan_to_num(x)
    mean = (p * xs).sum(axis=-1, keepdims=True)
    std = np.sqrt((p * (xs - mean) ** 2).sum(axis=-1))
    return _f64(np.divide(distance, std, out=np.zeros_like(distance), where=std > 0))


def chi2_sf(x: npt.NDArray[np.float64], dof: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """P(X > x) for chi-square with ``dof`` degrees of freedom: the regularised upper incomplete gamma
    Q(dof/2, x/2), by its series below a + 1 and its continued fraction above (Numerical Recipes 6.2)."""
    a = np.maximum(dof, 1).astype(np.float64) / 2
    z = np.maximum(np.asarray(x, dtype=np.float64), 0.0) / 2
    log_prefix = a * np.log(np.where(z > 0, z, 1.0)) - z - np.array([math.lgamma(v) for v in a])
    series = z < a + 1
    # Series for P(a, z) where it converges fast; elsewhere it runs on a harmless stand-in value.
    zs = np.where(series, z, 0.0)
    term = 1.0 / a
    total = term.copy()
    for n in range(1, 500):
        term = term * zs / (a + n)
        total = total + term
        if n % 8 == 0 and (term <= total * 1e-15).all():  # converged everywhere: later terms add nothing
            break
    lower = total * np.exp(log_prefix)
    # Lentz's continued fraction for Q(a, z), likewise only where the series is not used.
    zc = np.where(series, a + 2, z)
    tiny = 1e-300
    b = zc + 1 - a
    c = np.full_like(z, 1 / tiny)
    d = 1 / np.where(np.abs(b) < tiny, tiny, b)
    h = d.copy()
    for i in range(1, 500):
        an = -i * (i - a)
        b = b + 2
        d = an * d + b
        d = 1 / np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        h = h * d * c
        if i % 8 == 0 and (np.abs(d * c - 1) <= 1e-15).all():
            break
    upper = np.exp(log_prefix) * h
    result = np.where(series, 1 - lower, upper)
    return np.where(z > 0, np.clip(result, 0.0, 1.0), 1.0)


def null_counts(
    ref: Matrix, mask: npt.NDArray[np.bool_], ordinal: npt.NDArray[np.bool_], rows: npt.NDArray[np.int64],
    draws: int, rng: np.random.Generator,
) -> npt.NDArray[np.int64]:  # fmt: skip
    """``draws`` windows of ``rows`` (one per feature) from the reference's own distribution, as counts of
    shape (draws, features, bins): the bins' true masses drawn from what the reference tells of them,
    then the window's rows from those masses (a Dirichlet-multinomial).

    Bins cut at the reference's quantiles hold masses distributed as the spacings of its order statistics,
    Dirichlet(reference counts) whatever the feature's distribution; underflow and overflow, empty in the
    reference by construction, hold a spacing each (1); the missing bin and bins the reference left empty
    get Jeffreys' 1/2, and so does every class of a categorical feature beside its count. Discrete
    features (ties) are counted like categories, to which the same posterior applies."""
    width = ref.shape[1]
    last = np.arange(width)[None, :] == (ordinal.sum(axis=-1) - 1)[:, None]
    tails = ((np.arange(width)[None, :] == 0) | last) & ordinal  # a categorical feature has none
    jeffreys = mask & (~ordinal | (ref == 0))
    prior = np.where(tails, 1.0, np.where(jeffreys, 0.5, 0.0))
    regular = ordinal & ~tails
    present = np.where(regular, ref, 0.0).sum(axis=-1, keepdims=True)
    spacings = np.divide(present - 1, present, out=np.ones_like(present), where=present > 1)
    alpha = np.where(regular, ref * spacings, np.where(mask, ref, 0.0)) + prior
    masses = rng.standard_gamma(np.broadcast_to(alpha, (draws, *alpha.shape)))
    masses /= masses.sum(axis=2, keepdims=True)
    return rng.multinomial(rows[None, :], masses).astype(np.int64)
