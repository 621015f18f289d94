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
    RequestClass,
    SharedPrefix,
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

    Randomness: five child generators are spawned from ``rng`` (which advances its
    spawn counter and nothing else) for arrivals, prompt lengths, output lengths,
    request classes and shared prefixes, in that order. Changing a length distribution
    therefore leaves arrival times unchanged, adding ``classes`` or ``shared_prefix``
    leaves the other streams unchanged, and a longer bound extends a shorter one: the
    first requests are identical. A trace uses no randomness.

    With ``classes``, each request draws its class (weights normalised); a class with its
    own length distribution draws its requests' lengths from a stream of its own, the
    others keep the workload's draws. With ``shared_prefix``, a request carries a prefix
    with probability ``request_frac``, chosen uniformly; each prefix's length is drawn
    once, and is added to the request's sampled prompt length.

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
    arrival_rng, prompt_rng, output_rng, class_rng, prefix_rng = rng.spawn(5)
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
    requests = RequestArrays(
        arrival_s,
        workload.prompt_tokens.sample(prompt_rng, n),
        workload.output_tokens.sample(output_rng, n),
    )
    if workload.classes is not None:
        requests = _with_classes(requests, workload.classes, class_rng)
    if workload.shared_prefix is not None:
        requests = _with_prefixes(requests, workload.shared_prefix, prefix_rng)
    return requests


def _with_classes(requests: RequestArrays, classes: tuple[RequestClass, ...],
                  rng: np.random.Generator) -> RequestArrays:
    """Each request's class (drawn in proportion to the weights), its priority and TTFT
    target, and the lengths of classes with their own distributions."""
    n = len(requests.arrival_s)
    choice_rng, *class_rngs = rng.spawn(1 + len(classes))
    cumulative = np.cumsum([c.weight for c in classes])
    # Inverse CDF on one uniform per request; the last edge is the total, so every draw
    # (< total) lands on a class, whatever the rounding of the sum.
    index = np.searchsorted(cumulative, choice_rng.random(n) * cumulative[-1], side="right")
    index = np.minimum(index, len(classes) - 1)
    prompt, output = requests.prompt_tokens.copy(), requests.output_tokens.copy()
    for k, (cls, cls_rng) in enumerate(zip(classes, class_rngs, strict=True)):
        mine = np.flatnonzero(index == k)
        prompt_rng, output_rng = cls_rng.spawn(2)
        if cls.prompt_tokens is not None:
            prompt[mine] = cls.prompt_tokens.sample(prompt_rng, len(mine))
        if cls.output_tokens is not None:
            output[mine] = cls.output_tokens.sample(output_rng, len(mine))
    priority = np.array([c.priority for c in classes], dtype=np.int64)[index]
    ttft = np.array([np.nan if c.ttft_slo_s is None else c.ttft_slo_s for c in classes])
    return requests._replace(prompt_tokens=prompt, output_tokens=output,
                             priority=priority, ttft_slo_s=ttft[index])


def _with_prefixes(requests: RequestArrays, shared: SharedPrefix,
                   rng: np.random.Generator) -> RequestArrays:
    """Prefix ids and lengths; the prefix is prepended to the sampled prompt."""
    n = len(requests.arrival_s)
    carry_rng, id_rng, length_rng = rng.spawn(3)
    carries = carry_rng.random(n) < shared.request_frac
    ids = id_rng.integers(0, shared.num_prefixes, size=n, dtype=np.int64)
    if isinstance(shared.tokens, int):
        lengths = np.full(shared.num_prefixes, shared.tokens, dtype=np.int64)
    else:
        lengths = shared.tokens.sample(length_rng, shared.num_prefixes)
    prefix_id = np.where(carries, ids, -1)
    prefix_tokens = np.where(carries, lengths[ids], 0)
    return requests._replace(prompt_tokens=requests.prompt_tokens + prefix_tokens,
                             prefix_id=prefix_id, prefix_tokens=prefix_tokens)


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
