"""Arrival processes: rates and burstiness as configured, exact truncation, chunk-invariance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads.arrivals import (
    arrival_times,
    constant_arrival_times,
    offline_arrival_times,
    poisson_gaps,
)
from workloads.config import (
    ConstantArrivals,
    GammaArrivals,
    OfflineArrivals,
    PoissonArrivals,
)

N = 400_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_poisson_rate_and_cv() -> None:
    gaps = PoissonArrivals(rate_per_s=8.0).inter_arrivals(rng(), N)
    assert gaps.dtype == np.float64 and gaps.shape == (N,)
    # mean gap 1/8 with sd (1/8)/sqrt(N)
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=5 / np.sqrt(N))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.01)


def test_poisson_counts_in_windows_have_poisson_dispersion() -> None:
    times = np.cumsum(PoissonArrivals(rate_per_s=20.0).inter_arrivals(rng(), N))
    counts = np.bincount(times.astype(np.int64))[:-1]  # drop the last, partial second
    assert counts.mean() == pytest.approx(20.0, rel=0.01)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.25, 1.0, 3.0])
def test_gamma_mean_and_cv(cv: float) -> None:
    gaps = GammaArrivals(rate_per_s=5.0, cv=cv).inter_arrivals(rng(), N)
    assert gaps.mean() == pytest.approx(0.2, rel=5 * cv / np.sqrt(N))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.02)


def test_constant_gaps_are_exactly_one_over_rate() -> None:
    gaps = ConstantArrivals(rate_per_s=3.0).inter_arrivals(rng(), 100)
    assert (gaps == 1 / 3.0).all()


def test_offline_gaps_are_zero() -> None:
    assert (OfflineArrivals().inter_arrivals(rng(), 10) == 0).all()


def test_constant_arrival_times_exclude_the_horizon() -> None:
    times = constant_arrival_times(10.0, num_requests=None, duration_s=10.0)
    assert len(times) == 99  # 0.1, 0.2, ..., 9.9; the one due at 10.0 is outside
    assert times[0] == 0.1 and times[-1] == 9.9
    assert (times == np.arange(1, 100) / 10.0).all()


def test_constant_arrival_times_by_count_and_both_bounds() -> None:
    assert len(constant_arrival_times(2.0, num_requests=7, duration_s=None)) == 7
    assert len(constant_arrival_times(2.0, num_requests=7, duration_s=100.0)) == 7
    assert len(constant_arrival_times(2.0, num_requests=700, duration_s=1.0)) == 1


def test_offline_needs_num_requests() -> None:
    assert (offline_arrival_times(5, None) == 0).all()
    with pytest.raises(ValueError, match="num_requests"):
        offline_arrival_times(None, 10.0)


def test_bounds_are_checked() -> None:
    draw = lambda n: poisson_gaps(rng(), n, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="num_requests, duration_s or both"):
        arrival_times(draw, rate_per_s=1.0, gap_cv=1.0, num_requests=None, duration_s=None)
    with pytest.raises(ValueError, match="duration_s must be > 0"):
        arrival_times(draw, rate_per_s=1.0, gap_cv=1.0, num_requests=None, duration_s=0.0)
    with pytest.raises(ValueError, match="num_requests must be >= 0"):
        arrival_times(draw, rate_per_s=1.0, gap_cv=1.0, num_requests=-1, duration_s=None)


def test_absurd_horizon_is_refused_with_the_numbers() -> None:
    draw = lambda n: poisson_gaps(rng(), n, 1e9)  # noqa: E731
    with pytest.raises(ValueError, match=r"1e\+09/s x duration 1e\+09 s"):
        arrival_times(draw, rate_per_s=1e9, gap_cv=1.0, num_requests=None, duration_s=1e9)


def _poisson_times(
    seed: int, rate: float, num_requests: int | None, duration_s: float | None
) -> np.ndarray:
    g = rng(seed)
    return arrival_times(
        lambda n: poisson_gaps(g, n, rate),
        rate_per_s=rate,
        gap_cv=1.0,
        num_requests=num_requests,
        duration_s=duration_s,
    )


def test_duration_truncation_is_exact_and_chunking_invisible() -> None:
    long = _poisson_times(7, 50.0, num_requests=20_000, duration_s=None)
    for duration_s in (0.01, 1.0, 33.3, 200.0):
        times = _poisson_times(7, 50.0, num_requests=None, duration_s=duration_s)
        n = len(times)
        assert (times < duration_s).all()
        assert long[n] >= duration_s  # the next arrival of the same stream is past the horizon
        assert np.array_equal(times, long[:n])  # bit for bit, however it was chunked


def test_many_chunks_give_the_same_times_as_one() -> None:
    # A rate hint 50x too low makes arrival_times draw many small chunks.
    sizes: list[int] = []
    g = rng(11)

    def draw(n: int) -> np.ndarray:
        sizes.append(n)
        return poisson_gaps(g, n, 50.0)

    times = arrival_times(draw, rate_per_s=1.0, gap_cv=1.0, num_requests=None, duration_s=100.0)
    assert len(sizes) > 10
    one_draw = np.cumsum(poisson_gaps(rng(11), sum(sizes), 50.0))
    assert np.array_equal(times, one_draw[: len(times)])
    assert one_draw[len(times)] >= 100.0 > times[-1]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0.01, 1e3),
    cv=st.floats(0.05, 10),
    duration_s=st.floats(1e-3, 100),
    num_requests=st.none() | st.integers(0, 5000),
)
def test_gamma_times_are_sorted_and_within_bounds(
    seed: int, rate: float, cv: float, duration_s: float, num_requests: int | None
) -> None:
    process = GammaArrivals(rate_per_s=rate, cv=cv)
    g = rng(seed)
    times = arrival_times(
        lambda n: process.inter_arrivals(g, n),
        rate_per_s=rate,
        gap_cv=cv,
        num_requests=num_requests,
        duration_s=duration_s,
    )
    assert times.dtype == np.float64
    assert (np.diff(times) >= 0).all() and (times >= 0).all() and (times < duration_s).all()
    if num_requests is not None:
        assert len(times) <= num_requests
