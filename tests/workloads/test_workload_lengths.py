"""Length distributions: bounds always hold, and the moments match the formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from workloads.config import (
    FixedLength,
    LogNormalLength,
    NormalLength,
    UniformLength,
    ZipfLength,
)

N = 200_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_fixed_is_constant() -> None:
    x = FixedLength(tokens=17).sample(rng(), 1000)
    assert x.dtype == np.int64
    assert (x == 17).all()


def test_uniform_hits_both_ends_with_equal_frequency() -> None:
    dist = UniformLength(min_tokens=3, max_tokens=12)
    x = dist.sample(rng(), N)
    counts = np.bincount(x, minlength=13)[3:]
    assert x.min() == 3 and x.max() == 12
    # each of the 10 values has p = 0.1; 5 sigma of a binomial count
    sd = np.sqrt(N * 0.1 * 0.9)
    assert np.abs(counts - N * 0.1).max() < 5 * sd


def test_normal_mean_and_std_far_from_bounds() -> None:
    x = NormalLength(mean_tokens=1000, std_tokens=50).sample(rng(), N)
    assert x.mean() == pytest.approx(1000, abs=5 * 50 / np.sqrt(N) + 0.01)
    # rounding adds variance 1/12, negligible next to 2500
    assert x.std() == pytest.approx(50, rel=0.02)


def test_normal_clips_onto_bounds() -> None:
    x = NormalLength(mean_tokens=100, std_tokens=100, min_tokens=50, max_tokens=150).sample(
        rng(), N
    )
    assert x.min() == 50 and x.max() == 150
    # P(X <= 50) = Phi(-0.495) with rounding: X rounds to <= 50 when Normal < 50.5
    expected = stats.norm.cdf(50.5, loc=100, scale=100)
    assert (x == 50).mean() == pytest.approx(expected, abs=0.01)


def test_lognormal_median_and_log_spread() -> None:
    x = LogNormalLength(median_tokens=300, sigma=0.8).sample(rng(), N)
    # sample median of a lognormal: sd ≈ 1.2533 * median * sigma / sqrt(n); rounding ±0.5
    assert np.median(x) == pytest.approx(300, abs=5 * 1.2533 * 300 * 0.8 / np.sqrt(N) + 0.5)
    assert np.log(x).std() == pytest.approx(0.8, rel=0.02)


def test_lognormal_without_max_never_overflows() -> None:
    x = LogNormalLength(median_tokens=1e6, sigma=50).sample(rng(), 10_000)
    assert x.dtype == np.int64
    assert x.min() >= 1 and x.max() <= 2**53


def test_zipf_matches_scipy_zipfian_on_small_range() -> None:
    x = ZipfLength(exponent=1.5, max_tokens=8).sample(rng(), N)
    freq = np.bincount(x, minlength=9)[1:] / N
    pmf = stats.zipfian.pmf(np.arange(1, 9), 1.5, 8)  # independent implementation
    assert np.abs(freq - pmf).max() < 5 * np.sqrt(0.25 / N)


def test_zipf_probabilities_with_lower_bound() -> None:
    lo, hi, s = 5, 20, 2.2
    x = ZipfLength(exponent=s, min_tokens=lo, max_tokens=hi).sample(rng(1), N)
    k = np.arange(lo, hi + 1)
    weights = np.array([float(v) ** -s for v in k])
    pmf = weights / weights.sum()
    freq = np.array([(x == v).mean() for v in k])
    assert x.min() >= lo and x.max() <= hi
    assert np.abs(freq - pmf).max() < 5 * np.sqrt(pmf * (1 - pmf) / N).max()


def test_zipf_on_single_value() -> None:
    assert (ZipfLength(exponent=3, min_tokens=9, max_tokens=9).sample(rng(), 100) == 9).all()


def test_zero_samples_is_empty_int64() -> None:
    for dist in (
        FixedLength(tokens=4),
        UniformLength(max_tokens=4),
        NormalLength(mean_tokens=4, std_tokens=1),
        LogNormalLength(median_tokens=4, sigma=1),
        ZipfLength(exponent=2, max_tokens=4),
    ):
        x = dist.sample(rng(), 0)
        assert x.shape == (0,) and x.dtype == np.int64


def test_same_seed_same_samples_other_seed_different() -> None:
    dist = LogNormalLength(median_tokens=200, sigma=1)
    assert np.array_equal(dist.sample(rng(3), 1000), dist.sample(rng(3), 1000))
    assert not np.array_equal(dist.sample(rng(3), 1000), dist.sample(rng(4), 1000))


# ---------------------------------------------------------------- property: bounds always hold

bounds = st.tuples(st.integers(1, 5000), st.integers(0, 5000)).map(lambda t: (t[0], t[0] + t[1]))
length_dists = st.one_of(
    st.builds(FixedLength, tokens=st.integers(1, 10**6)),
    bounds.map(lambda b: UniformLength(min_tokens=b[0], max_tokens=b[1])),
    st.builds(
        lambda b, m, s: NormalLength(mean_tokens=m, std_tokens=s, min_tokens=b[0], max_tokens=b[1]),
        bounds,
        st.floats(0.1, 1e5),
        st.floats(0, 1e5),
    ),
    st.builds(
        lambda b, m, s, clip: LogNormalLength(
            median_tokens=m, sigma=s, min_tokens=b[0], max_tokens=b[1] if clip else None
        ),
        bounds,
        st.floats(0.1, 1e5),
        st.floats(0, 5),
        st.booleans(),
    ),
    st.builds(
        lambda b, s: ZipfLength(exponent=s, min_tokens=b[0], max_tokens=b[1]),
        bounds,
        st.floats(1.0001, 6),
    ),
)


@settings(max_examples=200, deadline=None)
@given(dist=length_dists, n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_samples_are_int64_within_bounds(
    dist: FixedLength | UniformLength | NormalLength | LogNormalLength | ZipfLength,
    n: int,
    seed: int,
) -> None:
    x = dist.sample(np.random.default_rng(seed), n)
    assert x.dtype == np.int64 and x.shape == (n,)
    if isinstance(dist, FixedLength):
        assert (x == dist.tokens).all()
        return
    assert (x >= dist.min_tokens).all() and (x >= 1).all()
    if dist.max_tokens is not None:
        assert (x <= dist.max_tokens).all()
