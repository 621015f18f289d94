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


# ---------------------------------------------------------------- rate-modulated processes
#
# A nonhomogeneous Poisson process with rate r(t) is a unit-rate one seen through the
# cumulative rate Λ(t) = ∫₀ᵗ r: if E₁ < E₂ < ... are unit-rate arrivals, Λ⁻¹(Eᵢ) are
# exact arrivals of rate r (time rescaling). The unit-rate arrivals are drawn like any
# Poisson process, so a longer bound extends a shorter one here too.


def rescaled_arrival_times(
    rng: np.random.Generator,
    cumulative: Callable[[float], float],
    inverse: Callable[[np.ndarray], np.ndarray],
    *,
    num_requests: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """Arrival times (s) of the process with cumulative rate ``cumulative``, cut like
    :func:`arrival_times`. ``inverse`` maps sorted unit-rate times to times (s)."""
    check_bounds(num_requests, duration_s)
    if duration_s is None:
        assert num_requests is not None
        unit = np.cumsum(rng.exponential(1.0, size=num_requests))
    else:
        mass = cumulative(duration_s)
        if not mass > 0:
            return np.empty(0)
        unit = arrival_times(
            lambda n: rng.exponential(1.0, size=n),
            rate_per_s=1.0, gap_cv=1.0, num_requests=num_requests, duration_s=mass,
        )
    if len(unit) == 0:
        return np.empty(0)
    times = np.maximum.accumulate(inverse(unit))  # rounding must not reorder arrivals
    if duration_s is not None:
        times = times[: np.searchsorted(times, duration_s, side="left")]
    return times


class PiecewiseRate:
    """A rate given at knots: constant from each knot to the next (``ramp=False``) or
    linear between them (``ramp=True``); the last knot's rate holds for ever after."""

    def __init__(self, starts_s: np.ndarray, rates_per_s: np.ndarray, *, ramp: bool) -> None:
        self.starts_s = np.asarray(starts_s, dtype=np.float64)
        self.rates_per_s = np.asarray(rates_per_s, dtype=np.float64)
        widths_s = np.diff(self.starts_s)
        self.slopes = np.zeros_like(self.rates_per_s)  # rate change per second, per segment
        if ramp and len(widths_s):
            self.slopes[:-1] = np.diff(self.rates_per_s) / widths_s
        masses = (self.rates_per_s[:-1] + 0.5 * self.slopes[:-1] * widths_s) * widths_s
        self.masses = np.concatenate([[0.0], np.cumsum(masses)])
        """Cumulative rate Λ at each knot (expected arrivals since t = 0)."""

    def cumulative(self, t_s: float) -> float:
        """Λ(t_s): expected arrivals in [0, t_s)."""
        k = int(np.searchsorted(self.starts_s, t_s, side="right")) - 1
        tau = t_s - self.starts_s[k]
        return float(self.masses[k] + (self.rates_per_s[k] + 0.5 * self.slopes[k] * tau) * tau)

    def inverse(self, unit: np.ndarray) -> np.ndarray:
        """Λ⁻¹ of each value: solves Λ_k + r_k τ + s_k τ²/2 = u in the knot's segment."""
        k = np.searchsorted(self.masses, unit, side="right") - 1
        d = unit - self.masses[k]
        r, s = self.rates_per_s[k], self.slopes[k]
        # τ = 2d / (r + sqrt(r² + 2sd)): the stable root, also right when s = 0.
        denom = r + np.sqrt(np.maximum(r * r + 2.0 * s * d, 0.0))
        tau = np.divide(2.0 * d, denom, out=np.zeros_like(d), where=denom > 0)
        return self.starts_s[k] + tau


def schedule_arrival_times(
    rng: np.random.Generator, rate: PiecewiseRate, *,
    num_requests: int | None, duration_s: float | None,
) -> np.ndarray:
    """Arrival times (s) of a Poisson process with a piecewise (step or ramp) rate."""
    if duration_s is None and rate.rates_per_s[-1] <= 0:
        raise ValueError(
            "the last segment's rate_per_s is 0, so num_requests alone may never be "
            "reached; set duration_s or give the last segment a positive rate"
        )
    return rescaled_arrival_times(
        rng, rate.cumulative, rate.inverse, num_requests=num_requests, duration_s=duration_s
    )


def diurnal_arrival_times(
    rng: np.random.Generator, mean_rate_per_s: float, amplitude_frac: float,
    period_s: float, phase_s: float, *, num_requests: int | None, duration_s: float | None,
) -> np.ndarray:
    """Arrival times (s) of a Poisson process with rate
    ``mean * (1 + amplitude * sin(2π (t - phase) / period))``.

    Λ(t) = m t + m A P/(2π) (cos(2π(0 - φ)/P) - cos(2π(t - φ)/P)) stays within
    m A P/π of m t, so Λ⁻¹(u) is bracketed and found by vectorised bisection.
    """
    omega = 2.0 * math.pi / period_s
    swing = mean_rate_per_s * amplitude_frac / omega
    cos0 = math.cos(-omega * phase_s)

    def cumulative_array(t_s: np.ndarray) -> np.ndarray:
        return mean_rate_per_s * t_s + swing * (cos0 - np.cos(omega * (t_s - phase_s)))

    def inverse(unit: np.ndarray) -> np.ndarray:
        lo = np.maximum((unit - 2.0 * swing) / mean_rate_per_s, 0.0)
        hi = (unit + 2.0 * swing) / mean_rate_per_s
        for _ in range(100):  # halves the bracket down to float resolution
            mid = 0.5 * (lo + hi)
            below = cumulative_array(mid) < unit
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= 4e-16 * np.maximum(hi, 1.0)):
                break
        return 0.5 * (lo + hi)

    return rescaled_arrival_times(
        rng, lambda t: float(cumulative_array(np.float64(t))), inverse,
        num_requests=num_requests, duration_s=duration_s,
    )


def mmpp_path(
    rng: np.random.Generator, rates_per_s: np.ndarray, mean_dwells_s: np.ndarray,
    *, horizon_s: float | None, mass: float | None,
) -> PiecewiseRate:
    """The state path of a Markov-modulated Poisson process, as a step rate.

    Starts in state 0; each visit lasts an exponential time with the state's mean
    dwell, then the next state is uniform among the others. Jumps are drawn in
    chunks, one dwell and one jump uniform per visit from two streams, so the path does
    not depend on the chunking. Extends until it covers ``horizon_s`` (s) or cumulative
    rate ``mass``, whichever is given.
    """
    dwell_rng, jump_rng = rng.spawn(2)
    num_states = len(rates_per_s)
    states: list[np.ndarray] = []
    dwells: list[np.ndarray] = []
    state, end_s, end_mass = 0, 0.0, 0.0
    chunk = 256
    while (horizon_s is not None and end_s < horizon_s) or (
        mass is not None and end_mass < mass
    ):
        offsets = 1 + np.floor(jump_rng.random(chunk) * (num_states - 1)).astype(np.int64)
        offsets[0] = 0 if not states else offsets[0]
        seq = (state + np.cumsum(offsets)) % num_states
        dwell_s = dwell_rng.exponential(1.0, size=chunk) * mean_dwells_s[seq]
        states.append(seq)
        dwells.append(dwell_s)
        state = int(seq[-1])
        end_s += float(dwell_s.sum())
        end_mass += float((dwell_s * rates_per_s[seq]).sum())
        chunk *= 2
    seq = np.concatenate(states) if states else np.zeros(1, dtype=np.int64)
    dwell_s = np.concatenate(dwells) if dwells else np.ones(1)
    starts_s = np.concatenate([[0.0], np.cumsum(dwell_s[:-1])])
    return PiecewiseRate(starts_s, rates_per_s[seq], ramp=False)


def mmpp_arrival_times(
    rng: np.random.Generator, rates_per_s: np.ndarray, mean_dwells_s: np.ndarray,
    *, num_requests: int | None, duration_s: float | None,
) -> np.ndarray:
    """Arrival times (s) of a Markov-modulated Poisson process (see :func:`mmpp_path`):
    exact, by time rescaling along the simulated state path."""
    check_bounds(num_requests, duration_s)
    path_rng, unit_rng = rng.spawn(2)
    if duration_s is not None:
        path = mmpp_path(path_rng, rates_per_s, mean_dwells_s, horizon_s=duration_s, mass=None)
        return rescaled_arrival_times(unit_rng, path.cumulative, path.inverse,
                                      num_requests=num_requests, duration_s=duration_s)
    assert num_requests is not None
    unit = np.cumsum(unit_rng.exponential(1.0, size=num_requests))
    if num_requests == 0:
        return unit
    path = mmpp_path(path_rng, rates_per_s, mean_dwells_s, horizon_s=None, mass=float(unit[-1]))
    return np.maximum.accumulate(path.inverse(unit))
