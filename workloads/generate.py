"""Turning an open-loop workload config into arrays of requests.

Closed-loop workloads are not handled here: their arrival times depend on simulated
latencies, so the engine drives them, sampling lengths with the config's ``sample``.
"""

from __future__ import annotations

import itertools

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
    OpenLoopArrivals,
    PoissonArrivals,
    RateModulatedArrivals,
    RequestClass,
    Sessions,
    SharedPrefix,
    SyntheticWorkload,
    TraceWorkload,
)
from workloads.trace import RequestArrays, load_trace
from workloads.transforms import apply_transforms

__all__ = ["RequestArrays", "open_loop_arrival_times", "open_loop_requests"]


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
    request classes and shared prefixes, in that order; with ``sessions`` a sixth is
    spawned after them (only then, so workloads without sessions are unchanged).
    Changing a length distribution therefore leaves arrival times unchanged, adding
    ``classes`` or ``shared_prefix`` leaves the other streams unchanged, and a longer
    bound extends a shorter one: the first requests are identical. A trace passes ``rng`` to
    :func:`read_trace` (for ``sample_frac`` and ShareGPT arrivals).

    With ``classes``, each request draws its class (weights normalised); a class with its
    own length distribution draws its requests' lengths from a stream of its own, the
    others keep the workload's draws. With ``shared_prefix``, a request carries a prefix
    with probability ``request_frac``, chosen uniformly; each prefix's length is drawn
    once, and is added to the request's sampled prompt length. With ``sessions``, the
    arrival process starts sessions and the bounds count turns (see :func:`_sessions`).

    ``transforms`` apply last, to the requests within the bounds (so the bounds count
    client requests, not the parts Skeleton-of-Thought splits them into), drawing from
    one more child spawned from ``rng`` after all the others, and only when there are
    transforms (see :func:`workloads.transforms.apply_transforms`). A trace's transforms
    draw the same way, after its reader's two children.

    Raises TypeError for a closed-loop workload and ValueError for missing or invalid
    bounds or a bad trace file.
    """
    if isinstance(workload, TraceWorkload):
        return trace_requests(workload, num_requests=num_requests, duration_s=duration_s,
                              rng=rng)[0]
    process = workload.arrival
    if isinstance(process, ClosedLoopArrivals):
        raise TypeError(
            "closed-loop arrivals depend on simulated latencies: the engine drives them, "
            "open_loop_requests cannot generate them"
        )
    arrival_rng, prompt_rng, output_rng, class_rng, prefix_rng = rng.spawn(5)
    arrival_s = open_loop_arrival_times(
        process, arrival_rng, num_requests=num_requests, duration_s=duration_s
    )
    if workload.sessions is not None:
        (session_rng,) = rng.spawn(1)
        requests = _sessions(workload, workload.sessions, arrival_s, prompt_rng, output_rng,
                             session_rng, num_requests, duration_s)
        return _transformed(requests, workload, rng)
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
    return _transformed(requests, workload, rng)


def _transformed(requests: RequestArrays, workload: SyntheticWorkload | TraceWorkload,
                 rng: np.random.Generator) -> RequestArrays:
    """``requests`` after the workload's transforms, which draw from one child spawned
    from ``rng`` last, and only when there are transforms (so a workload without them
    draws exactly as before they existed)."""
    if not workload.transforms:
        return requests
    (transform_rng,) = rng.spawn(1)
    return apply_transforms(requests, workload.transforms, transform_rng)


def open_loop_arrival_times(
    process: OpenLoopArrivals,
    rng: np.random.Generator,
    *,
    num_requests: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """Arrival times (float64 s, non-decreasing) of any open-loop process, drawn from
    ``rng`` and cut to the first ``num_requests`` and/or those ``< duration_s``."""
    if isinstance(process, PoissonArrivals | GammaArrivals):
        gap_cv = process.cv if isinstance(process, GammaArrivals) else 1.0
        return arrival_times(
            lambda n: process.inter_arrivals(rng, n),
            rate_per_s=process.rate_per_s,
            gap_cv=gap_cv,
            num_requests=num_requests,
            duration_s=duration_s,
        )
    if isinstance(process, ConstantArrivals):
        return constant_arrival_times(
            process.rate_per_s, num_requests=num_requests, duration_s=duration_s
        )
    if isinstance(process, OfflineArrivals):
        return offline_arrival_times(num_requests, duration_s)
    assert isinstance(process, RateModulatedArrivals)
    return process.arrival_times(rng, num_requests=num_requests, duration_s=duration_s)


def _sessions(workload: SyntheticWorkload, sessions: Sessions, start_s: np.ndarray,
              prompt_rng: np.random.Generator, output_rng: np.random.Generator,
              rng: np.random.Generator, num_requests: int | None,
              duration_s: float | None) -> RequestArrays:
    """The turns of sessions starting at ``start_s``, sorted by arrival and cut to the
    bounds.

    Turn k+1 arrives one think time after turn k (open loop); its prompt is turn k's
    prompt + output + a new message. Draws are made per session, then per turn in
    session order (turn counts, first prompts, outputs, messages, think times), each
    from its own stream, so more sessions extend fewer. The sessions started within
    the bounds suffice: a session starting later has no turn before its start, which is
    after the first ``num_requests`` turns already started (every session has >= 1).
    """
    num_sessions = len(start_s)
    turns_rng, message_rng, think_rng = rng.spawn(3)
    if isinstance(sessions.num_turns, int):
        num_turns = np.full(num_sessions, sessions.num_turns, dtype=np.int64)
    else:
        num_turns = sessions.num_turns.sample(turns_rng, num_sessions)
    total = int(num_turns.sum())
    session = np.repeat(np.arange(num_sessions, dtype=np.int64), num_turns)
    first = np.cumsum(num_turns) - num_turns  # index of each session's first turn
    turn = np.arange(total, dtype=np.int64) - np.repeat(first, num_turns)  # 0-based
    output = workload.output_tokens.sample(output_rng, total)
    message = sessions.message_tokens.sample(message_rng, total)  # turn 0's unused
    if sessions.think_time_dist == "exponential":
        think_s = think_rng.exponential(sessions.mean_think_time_s, size=total)
    else:
        think_s = np.full(total, sessions.mean_think_time_s)
    prompt = np.empty(total, dtype=np.int64)
    arrival_s = np.empty(total)
    prompt[first] = workload.prompt_tokens.sample(prompt_rng, num_sessions)
    arrival_s[first] = start_s
    # One vectorised step per turn index: turn k of every session that has one.
    order = np.argsort(turn, kind="stable")
    bounds = np.searchsorted(turn[order], np.arange(1, int(num_turns.max(initial=0)) + 1))
    for lo, hi in itertools.pairwise(bounds):
        idx = order[lo:hi]
        prompt[idx] = prompt[idx - 1] + output[idx - 1] + message[idx]
        arrival_s[idx] = arrival_s[idx - 1] + think_s[idx]
    by_arrival = np.argsort(arrival_s, kind="stable")
    requests = RequestArrays(arrival_s[by_arrival], prompt[by_arrival], output[by_arrival],
                             prefix_id=session[by_arrival], prefix_tokens=prompt[by_arrival])
    return _truncate(requests, num_requests, duration_s)


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


def trace_requests(workload: TraceWorkload, *, num_requests: int | None,
                   duration_s: float | None, rng: np.random.Generator
                   ) -> tuple[RequestArrays, str]:
    """A trace's requests within the bounds, after the workload's transforms, and what
    was kept and dropped, in words: the reader's report (rows filtered and why) and the
    rows the bounds cut (counted before transforms)."""
    loaded = load_trace(workload, rng)
    requests = _truncate(loaded.requests, num_requests, duration_s)
    report = loaded.report.summary()
    cut = len(loaded.requests.arrival_s) - len(requests.arrival_s)
    if cut:
        report += f"; {cut} more after the stop bound (stop.num_requests / stop.duration_s)"
    return _transformed(requests, workload, rng), report


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
