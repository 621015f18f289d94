"""Queue orders: in which order waiting requests are considered for admission.

The replica shows a batching policy its waiting requests in the queue policy's order;
true output lengths stay hidden, so length-aware orders ask the scenario's predictor
(``engine.predictor``) through the view. Preemptive orders (preemptive ``priority``,
``mlfq``) rank waiting and running requests alike; the batching policy preempts running
requests that rank after a blocked waiting one.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
from pydantic import Field

from policies.registry import Registry
from simulator.plan import EngineLimits, PolicyParams, QueueOrder, ReplicaView
from simulator.request import Request

QUEUE: Registry[QueueOrder] = Registry("queue")


@QUEUE.register("fcfs")
class FirstComeFirstServed:
    """Arrival order, preempted requests back at the front (vLLM's default)."""

    fifo = True
    preemptive = False

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> FirstComeFirstServed:
        return cls()

    def rank(self, request: Request, view: ReplicaView) -> float:
        return request.arrival_s

    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        return waiting


@QUEUE.register("sjf")
class ShortestJobFirst:
    """Fewest predicted output tokens first, ties in arrival order (non-preemptive SJF,
    as in the length-predicting schedulers of e.g. Qiu et al., 2024 and Fu et al.,
    "Efficient LLM Scheduling by Learning to Rank", 2024). Long requests can starve; the
    summary's ``queue_max_s`` shows it."""

    fifo = False
    preemptive = False
    needs_predictor = True

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> ShortestJobFirst:
        return cls()

    def rank(self, request: Request, view: ReplicaView) -> float:
        return view.predicted_output_tokens(request)

    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        if len(waiting) < 2:
            return waiting
        return sorted(waiting, key=lambda r: (view.predicted_output_tokens(r), r.arrival_s))


# ---------------------------------------------------------------- priority and deadlines

_BY_PRIORITY = attrgetter("priority", "arrival_s")
_BY_DEADLINE = attrgetter("deadline_s", "arrival_s")


def _sorted(waiting: Sequence[Request], key: Callable[[Request], Any]) -> Sequence[Request]:
    """``waiting`` sorted by ``key``, stably (exact ties keep the queue's order, preempted
    requests first). Keys are C-level attribute tuples and the queue is mostly in order
    already, so timsort's cost is close to one pass."""
    if len(waiting) < 2:
        return waiting
    return sorted(waiting, key=key)


class PriorityParams(PolicyParams):
    preemptive: bool = Field(
        default=False,
        description="A waiting request displaces running requests of a strictly lower "
        "priority (larger value) when it cannot be admitted otherwise (vLLM's priority "
        "scheduling); False: it waits for room.",
    )


@QUEUE.register("priority", params=PriorityParams)
class PriorityOrder:
    """``request.priority`` first (lower is served first), ties in arrival order: vLLM's
    ``--scheduling-policy priority`` (its waiting queue is a heap on (priority, arrival)).

    With ``preemptive``, a waiting request that cannot be admitted preempts running
    requests of a strictly lower priority, worst first, as vLLM's priority scheduling
    preempts its lowest-priority running requests first. Its rank is
    the priority alone, so requests of equal priority never displace each other (that
    would only trade one recompute for another)."""

    fifo = False
    needs_predictor = False

    def __init__(self, preemptive: bool = False) -> None:
        self.preemptive = preemptive

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> PriorityOrder:
        assert isinstance(params, PriorityParams)
        return cls(params.preemptive)

    def rank(self, request: Request, view: ReplicaView) -> float:
        return float(request.priority)

    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        return _sorted(waiting, _BY_PRIORITY)


@QUEUE.register("edf")
class EarliestDeadlineFirst:
    """Earliest TTFT deadline first (``request.deadline_s``: arrival plus the request's own
    TTFT target, else the scenario's ``slo.ttft_s``), ties in arrival order;
    non-preemptive. Liu and Layland's earliest deadline first (JACM 1973) applied to
    per-request TTFT targets, as SLO-aware LLM schedulers order their queues. With one
    target for everybody, deadlines follow arrivals and EDF is FCFS."""

    fifo = False
    preemptive = False
    needs_predictor = False

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> EarliestDeadlineFirst:
        return cls()

    def rank(self, request: Request, view: ReplicaView) -> float:
        return request.deadline_s

    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        return _sorted(waiting, _BY_DEADLINE)


# ---------------------------------------------------------------- FastServe's MLFQ

_REQUEST_ID = attrgetter("request_id")
_NUM_OUTPUT_TOKENS = attrgetter("num_output_tokens")
_LEVEL_SPAN_S = float(2**24)
"""Rank = level x this + arrival: lexicographic (level, arrival) in one float while
arrivals stay below 2^24 s (the clock is exact below 2^23 s; simulator/clock.py)."""


class MLFQParams(PolicyParams):
    num_levels: int = Field(
        default=6, ge=1, le=64, description="Priority levels (queues); the last has no quantum."
    )
    base_quantum_tokens: int = Field(
        default=16, ge=1,
        description="Quantum of the top level, in decode tokens (one decode step each).",
    )
    growth: float = Field(
        default=2.0, ge=1,
        description="Ratio of each level's quantum to the one above (FastServe doubles it).",
    )
    prefill_tokens_per_step: int = Field(
        default=256, ge=1,
        description="Prompt tokens whose prefill costs about one decode step: the first "
        "iteration counts as max(1, ceil(prompt / this)) tokens of service. About the "
        "roofline ridge (peak FLOP/s / HBM bytes/s; ~300 on an H100 in bf16), where a "
        "forward pass turns from memory- to compute-bound.",
    )
    promote_after_steps: int | None = Field(
        default=None, ge=1,
        description="Starvation prevention: a request that has waited this many decode steps "
        "of its replica (since it joined the queue or was last promoted) moves to the top "
        "level with fresh quanta (FastServe promotes after a waiting-time threshold; policies "
        "count decode steps, never the clock). None: off.",
    )


@QUEUE.register("mlfq", params=MLFQParams)
class SkipJoinMLFQ:
    """FastServe's skip-join multi-level feedback queue (Wu et al., 2023, "Fast Distributed
    Inference Serving for Large Language Models"), preemptive.

    Level ``i`` has a quantum of ``base_quantum_tokens * growth**i`` tokens of service
    (the last level none). Service is counted in decode steps: the first iteration (the
    prefill) counts ``max(1, ceil(prompt / prefill_tokens_per_step))``, each generated
    token after the first one more. A request *skip-joins* the highest level whose
    quantum covers its first iteration (long prompts start lower, so they cannot hog
    the top level), and is demoted to the next level when it has used up its level's
    quantum (its service exceeds the sum of the quanta from its join level down to here).

    Requests are served by (level, arrival); a blocked waiting request displaces running
    requests that rank after it, worst first (``preemptive``), so new short jobs overtake
    long ones that have been demoted, approximating shortest-remaining-first without
    knowing output lengths. Pair it with ``engine.preemption_mode: swap`` to keep the
    displaced KV, as FastServe's proactive swapping does.

    ``promote_after_steps`` (off by default) is FastServe's starvation prevention: a
    request that has waited that many decode steps of its replica since it joined the
    queue (or was last promoted) returns to the top level with fresh quanta. The policy
    then keeps, per request, when it started waiting and its service when last promoted
    (``waiting_since_``, ``promoted_at_``).
    """

    fifo = False
    preemptive = True
    needs_predictor = False

    def __init__(self, num_levels: int = 6, base_quantum_tokens: int = 16,
                 growth: float = 2.0, prefill_tokens_per_step: int = 256,
                 promote_after_steps: int | None = None) -> None:
        self.num_levels = num_levels
        self.base_quantum_tokens = base_quantum_tokens
        self.growth = growth
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.promote_after_steps = promote_after_steps
        # Derived tables (pure functions of the parameters): the finite quanta, and for
        # each join level j the service at which a request leaves levels j, j+1, ...
        self._quanta = [base_quantum_tokens * growth**i for i in range(num_levels - 1)]
        self._leave_at = [list(itertools.accumulate(self._quanta[j:]))
                          for j in range(num_levels)]
        self.waiting_since_: dict[int, int] = {}
        self.promoted_at_: dict[int, int] = {}
        self.num_promotions_ = 0
        self._waiting_ids: tuple[int, ...] = ()
        self._next_promotion_step = 0
        self._last_order: tuple[tuple[int, ...], tuple[tuple[int, ...], int],
                                list[Request]] | None = None

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> SkipJoinMLFQ:
        assert isinstance(params, MLFQParams)
        return cls(params.num_levels, params.base_quantum_tokens, params.growth,
                   params.prefill_tokens_per_step, params.promote_after_steps)

    def first_iteration_tokens(self, prompt_tokens: int) -> int:
        """The prefill's cost in decode steps (units of service)."""
        return max(1, -(-prompt_tokens // self.prefill_tokens_per_step))

    def join_level(self, prompt_tokens: int) -> int:
        """The highest level whose quantum covers the first iteration (skip-join)."""
        return bisect.bisect_left(self._quanta, self.first_iteration_tokens(prompt_tokens))

    def _level(self, request: Request, generated: int) -> int:
        first = self.first_iteration_tokens(request.prompt_tokens)
        service = first + max(0, generated - 1)
        promoted_at = self.promoted_at_.get(request.request_id) if self.promoted_at_ else None
        if promoted_at is None:
            join = bisect.bisect_left(self._quanta, first)
        else:
            join, service = 0, service - promoted_at
        # Demoted past each level whose cumulative quantum the service exceeds.
        return join + bisect.bisect_left(self._leave_at[join], service)

    def level(self, request: Request, view: ReplicaView) -> int:
        """``request``'s level now (read-only; progress read through ``view``)."""
        if view.is_decoding(request):
            # Exact inside fast-forwarded runs, where num_output_tokens lags: a decoding
            # request has all its tokens but the newest one in the KV cache.
            return self._level(request, view.num_computed(request) - request.prompt_tokens + 1)
        return self._level(request, request.num_output_tokens)

    def rank(self, request: Request, view: ReplicaView) -> float:
        return self.level(request, view) * _LEVEL_SPAN_S + request.arrival_s

    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        # Batching policies read the queue several times per plan, and a blocked queue
        # stays the same for many plans; a waiting request's level depends only on its
        # tokens generated and promotions, so the same queue gives the same order. The
        # check is C-level passes; sorting needs a Python call per request.
        ids = tuple(map(_REQUEST_ID, waiting))
        if self.promote_after_steps is not None:
            self._promote_starving(waiting, ids, view)
        if len(waiting) < 2:
            return waiting
        state = (tuple(map(_NUM_OUTPUT_TOKENS, waiting)), self.num_promotions_)
        last = self._last_order
        if last is not None and last[0] == ids and last[1] == state:
            return last[2]
        ordered = sorted(waiting, key=lambda r: (self._level(r, r.num_output_tokens),
                                                 r.arrival_s))
        self._last_order = (ids, state, ordered)
        return ordered

    def _promote_starving(self, waiting: Sequence[Request], ids: tuple[int, ...],
                          view: ReplicaView) -> None:
        """Learned state only: restart the wait of requests that left the queue since the
        last call, and promote those that waited ``promote_after_steps`` decode steps.
        Idempotent within a decode step, so the batching policy may read the queue twice."""
        assert self.promote_after_steps is not None
        step = view.decode_step
        if ids == self._waiting_ids and step < self._next_promotion_step:
            return  # the same queue, and nobody due yet
        since = self.waiting_since_
        fresh: dict[int, int] = {}
        for request in waiting:
            rid = request.request_id
            start = since.get(rid, step)
            if step - start >= self.promote_after_steps:
                generated = request.num_output_tokens  # exact: it is not decoding
                self.promoted_at_[rid] = (
                    self.first_iteration_tokens(request.prompt_tokens) + max(0, generated - 1)
                )
                self.num_promotions_ += 1
                start = step
            fresh[rid] = start
        self._waiting_ids = ids
        self._next_promotion_step = min(fresh.values(), default=step) + self.promote_after_steps
        self.waiting_since_ = fresh
        if len(self.promoted_at_) > 2 * (len(waiting) + view.num_running) + 64:
            live = fresh.keys() | {r.request_id for r in view.running}
            self.promoted_at_ = {k: v for k, v in self.promoted_at_.items() if k in live}
