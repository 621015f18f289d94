"""Token-count samplers behind the length distributions in :mod:`workloads.config`.

Each function draws ``n`` integer token counts from a caller-supplied generator and
returns an ``int64`` array whose values all lie in ``[min_tokens, max_tokens]``. They
are vectorised (no Python loop per sample) and draw from ``rng`` sequentially, so
``n`` values drawn at once equal the same ``n`` drawn in several calls.

Continuous distributions are rounded to the nearest integer and then clipped; the
clipping puts the probability mass of the cut-off tails on the bounds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MAX_TOKENS_CAP = 2**53
"""Upper clip used when a distribution has no ``max_tokens``: the largest integer a
float64 holds exactly, so the cast to int64 never overflows."""

MAX_ZIPF_RANGE = 2**22
"""Most integers a Zipf distribution may span (``max_tokens - min_tokens + 1``); its
cumulative table costs 8 bytes per integer."""


def _round_clip(x: np.ndarray, min_tokens: int, max_tokens: int | None) -> np.ndarray:
    hi = MAX_TOKENS_CAP if max_tokens is None else max_tokens
    return np.clip(np.rint(x), min_tokens, hi).astype(np.int64)


def sample_fixed(n: int, tokens: int) -> np.ndarray:
    """``n`` copies of ``tokens``; consumes no randomness."""
    return np.full(n, tokens, dtype=np.int64)


def sample_uniform(
    rng: np.random.Generator, n: int, min_tokens: int, max_tokens: int
) -> np.ndarray:
    """Integers uniform on ``[min_tokens, max_tokens]``, both ends included."""
    return rng.integers(min_tokens, max_tokens, size=n, endpoint=True, dtype=np.int64)


def sample_normal(
    rng: np.random.Generator,
    n: int,
    mean_tokens: float,
    std_tokens: float,
    min_tokens: int,
    max_tokens: int | None,
) -> np.ndarray:
    """Normal(mean_tokens, std_tokens), rounded to the nearest integer and clipped."""
    return _round_clip(rng.normal(mean_tokens, std_tokens, size=n), min_tokens, max_tokens)


def sample_lognormal(
    rng: np.random.Generator,
    n: int,
    median_tokens: float,
    sigma: float,
    min_tokens: int,
    max_tokens: int | None,
) -> np.ndarray:
    """exp(Normal(ln median_tokens, sigma)), rounded and clipped.

    ``sigma`` is the standard deviation of the log; the median of the unclipped
    distribution is ``median_tokens`` whatever ``sigma`` is.
    """
    x = rng.lognormal(np.log(median_tokens), sigma, size=n)
    return _round_clip(x, min_tokens, max_tokens)


@lru_cache(maxsize=16)
def zipf_cdf(exponent: float, min_tokens: int, max_tokens: int) -> np.ndarray:
    """Cumulative probabilities of the truncated Zipf law on ``[min_tokens, max_tokens]``.

    Entry ``i`` is P(X <= min_tokens + i) with P(k) ∝ k^-exponent; the last entry is
    exactly 1. The array is read-only: it is memoised (a pure function of its
    arguments, so the cache changes speed, never results) because building it costs
    O(max_tokens - min_tokens) and callers may sample a few values at a time.
    """
    k = np.arange(min_tokens, max_tokens + 1, dtype=np.float64)
    cdf = np.cumsum(k**-exponent)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    cdf.flags.writeable = False
    return cdf


def sample_zipf(
    rng: np.random.Generator, n: int, exponent: float, min_tokens: int, max_tokens: int
) -> np.ndarray:
    """Zipf law truncated to ``[min_tokens, max_tokens]``: P(k) ∝ k^-exponent there.

    Inverse-CDF sampling on an exact table of the range, so the cost is one uniform
    draw and one binary search per sample, with no rejection step.
    """
    cdf = zipf_cdf(float(exponent), min_tokens, max_tokens)
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    # rng.random() < 1 == cdf[-1], so idx < len(cdf); the minimum guards rounding only.
    return min_tokens + np.minimum(idx, len(cdf) - 1).astype(np.int64)
