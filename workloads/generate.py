"""Turning an open-loop workload config into arrays of requests.

Closed-loop workloads are not handled here: their arrival times depend on simulated
latencies, so the engine drives them, sampling lengths with the config's ``sample``.
"""

from __future__ import annotations

import numpy as np

from workloads.arrivals import (
    arrival_times,
    check_bounds,
    constant_arrival_times,
    offline_arrival_times,
)
from workloads.config import (
    ClosedLoopArrivals,
    ConstantArrivals,
    GammaArrivals,
    OfflineArrivals,
    PoissonArrivals,
    SyntheticWorkload,
    TraceWorkload,
)
from workloads.trace import RequestArrays, read_trace

__all__ = ["RequestArrays", "open_loop_requests"]


def open_loop_requests(
    workload: SyntheticWorkload | TraceWorkload,
    *,
    num_requests: int | None,
    duration_s: float | None,
    rng: np.random.Generator,
) -> RequestArrays:
    """The requests of an open-loop workload, in arrival order.

    Keeps the first ``num_requests`` requests and/or those with ``arrival_s <
    duration_s``; a synthetic workload needs at least one bound (offline arrivals need
    ``num_requests``), a trace with neither is returned whole. Arrival times start
    one gap after t = 0 for synthetic processes (all at 0 for offline) and at
    exactly 0 for a trace (its first arrival is shifted there).

    Randomness: three child generators are spawned from ``rng`` (which advances its
    spawn counter and nothing else) for arrivals, prompt lengths and output lengths,
    in that order. Changing a length distribution therefore leaves arrival times
    unchanged, and a longer bound extends a shorter one: the first requests are
    identical. A trace uses no randomness.

    Raises TypeError for a closed-loop workload and ValueError for missing or invalid
    bounds or a bad trace file.
    """
    if isinstance(workload, TraceWorkload):
        return _truncate(read_trace(workload), num_requests, duration_s)
    process = workload.arrival
    if isinstance(process, ClosedLoopArrivals):
        raise TypeError(
            "closed-loop arrivals depend on simulated latencies: the engine drives them, "
            "open_loop_requests cannot generate them"
        )
    arrival_rng, prompt_rng, output_rng = rng.spawn(3)
    if isinstance(process, PoissonArrivals | GammaArrivals):
        gap_cv = process.cv if isinstance(process, GammaArrivals) else 1.0
        arrival_s = arrival_times(
            lambda n: process.inter_arrivals(arrival_rng, n),
            rate_per_s=process.rate_per_s,
            gap_cv=gap_cv,
            num_requests=num_requests,
            duration_s=duration_s,
        )
    elif isinstance(process, ConstantArrivals):
        arrival_s = constant_arrival_times(
            process.rate_per_s, num_requests=num_requests, duration_s=duration_s
        )
    else:
        assert isinstance(process, OfflineArrivals)
        arrival_s = offline_arrival_times(num_requests, duration_s)
    n = len(arrival_s)
    return RequestArrays(
        arrival_s,
        workload.prompt_tokens.sample(prompt_rng, n),
        workload.output_tokens.sample(output_rng, n),
    )


def _truncate(
    requests: RequestArrays, num_requests: int | None, duration_s: float | None
) -> RequestArrays:
    check_bounds(num_requests, duration_s, require_one=False)
    n = len(requests.arrival_s)
    if num_requests is not None:
        n = min(n, num_requests)
    if duration_s is not None:
        n = min(n, int(np.searchsorted(requests.arrival_s, duration_s, side="left")))
    return requests.take(slice(0, n))
