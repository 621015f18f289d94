"""Simulated time: float seconds on a grid of 2^-30 s (about 0.93 ns).

Every duration and arrival time is rounded to this grid before it reaches SimPy. Sums
and differences of grid values below 2^23 s (97 days) are exact in float64, so a run
of iterations advanced in one event lands on exactly the time that stepping them one
by one would (DESIGN.md: fast-forwarding must give identical results).
"""

from __future__ import annotations

import numpy as np

TICKS_PER_S = float(2**30)


def on_grid(seconds: float) -> float:
    return round(seconds * TICKS_PER_S) / TICKS_PER_S


def on_grid_array(seconds: np.ndarray) -> np.ndarray:
    """A new array; rounds half to even like ``on_grid`` (numpy's rint and Python's round)."""
    ticks = np.rint(seconds * TICKS_PER_S)
    ticks /= TICKS_PER_S
    return ticks
