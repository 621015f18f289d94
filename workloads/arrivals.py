"""Inter-arrival samplers and arrival-time generation for open-loop processes.

Gaps are float64 seconds; the ``i``-th arrival is the sum of the first ``i + 1``
gaps, so the first request arrives one gap after t = 0. Everything here is
vectorised and reads ``rng`` sequentially, which makes a run bounded by a longer
duration or more requests extend a shorter one bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MAX_REQUESTS = 2_000_000_000
"""Refuse to generate more requests than this (about 16 GB per float64 column)."""


def poisson_gaps(rng: np.random.Generator, n: int, rate_per_s: float) -> np.ndarray:
    """Exponential gaps with mean ``1 / rate_per_s`` seconds (a Poisson process)."""
    return rng.exponential(1.0 / rate_per_s, size=n)


def gamma_gaps(rng: np.random.Generator, n: int, rate_per_s: float, cv: float) -> np.ndarray:
    """Gamma gaps with mean ``1 / rate_per_s`` s and coefficient of variation ``cv``.

    Shape ``1 / cv**2`` and scale ``cv**2 / rate_per_s``; ``cv = 1`` is exponential,
    ``cv < 1`` smoother than Poisson, ``cv > 1`` burstier.
    """
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)


def constant_gaps(n: int, rate_per_s: float) -> np.ndarray:
    """``n`` gaps of exactly ``1 / rate_per_s`` seconds."""
    return np.full(n, 1.0 / rate_per_s)


def check_bounds(
    num_requests: int | None, duration_s: float | None, *, require_one: bool = True
) -> None:
    """Raise ValueError unless the bounds are valid (and, if ``require_one``, one is given)."""
    if require_one and num_requests is None and duration_s is None:
        raise ValueError("give num_requests, duration_s or both to bound an open-loop workload")
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")


def _expected_count(rate_per_s: float, duration_s: float, spread: float) -> int:
    """Requests to draw so that a chunk very likely covers ``duration_s`` seconds.

    ``spread`` is the coefficient of variation of a gap; the count in a window has
    standard deviation about ``spread * sqrt(mean)``, so mean + 4 sd rarely falls short
    (and when it does the caller draws another chunk).
    """
    mean = rate_per_s * duration_s
    if mean > MAX_REQUESTS:
        raise ValueError(
            f"rate {rate_per_s:g}/s x duration {duration_s:g} s is about {mean:.3g} requests, "
            f"more than the limit of {MAX_REQUESTS:.3g}; shorten duration_s or set num_requests"
        )
    return math.ceil(mean + 4.0 * spread * math.sqrt(mean)) + 16


def arrival_times(
    draw_gaps: Callable[[int], np.ndarray],
    *,
    rate_per_s: float,
    gap_cv: float,
    num_requests: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """Arrival times (s) of a renewal process, cut to ``num_requests`` and ``< duration_s``.

    ``draw_gaps(k)`` returns the next ``k`` gaps of the process; ``rate_per_s`` and
    ``gap_cv`` only size the chunks. With a duration, gaps are drawn in chunks until an
    arrival reaches the horizon, so memory stays proportional to the result. The
    running sum is a strict left fold across chunks, so the times do not depend on
    how the draws were chunked. Returns a non-decreasing float64 array.
    """
    check_bounds(num_requests, duration_s)
    if duration_s is None:
        assert num_requests is not None
        return np.cumsum(draw_gaps(num_requests))
    chunks: list[np.ndarray] = []
    count = 0
    last_s = 0.0
    while last_s < duration_s and (num_requests is None or count < num_requests):
        size = _expected_count(rate_per_s, duration_s - last_s, gap_cv)
        if num_requests is not None:
            size = min(size, num_requests - count)
        gaps = draw_gaps(size)
        gaps[0] += last_s  # fold the previous total in first: same sums as one big cumsum
        times = np.cumsum(gaps)
        chunks.append(times)
        count += size
        last_s = float(times[-1])
    times = np.concatenate(chunks) if chunks else np.empty(0)
    return times[: np.searchsorted(times, duration_s, side="left")]


def constant_arrival_times(
    rate_per_s: float, *, num_requests: int | None, duration_s: float | None
) -> np.ndarray:
    """Arrival times ``k / rate_per_s`` for k = 1, 2, ..., cut like :func:`arrival_times`.

    Computed by multiplication rather than a running sum, so no rounding drifts in and
    a request due exactly at the horizon is excluded.
    """
    check_bounds(num_requests, duration_s)
    if duration_s is not None:
        n = _expected_count(rate_per_s, duration_s, 0.0)
        if num_requests is not None:
            n = min(n, num_requests)
    else:
        assert num_requests is not None
        n = num_requests
    times = np.arange(1, n + 1, dtype=np.float64) / rate_per_s
    if duration_s is not None:
        times = times[: np.searchsorted(times, duration_s, side="left")]
    return times


def offline_arrival_times(num_requests: int | None, duration_s: float | None) -> np.ndarray:
    """``num_requests`` arrivals at t = 0 (a batch job); a duration alone cannot bound it."""
    check_bounds(num_requests, duration_s)
    if num_requests is None:
        raise ValueError(
            "offline arrivals all come at t=0, so duration_s cannot bound them; set num_requests"
        )
    return np.zeros(num_requests)
