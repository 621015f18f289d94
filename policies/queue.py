"""Queue orders: in which order waiting requests are considered for admission.

The replica shows a batching policy its waiting requests in the queue policy's order;
true output lengths stay hidden, so length-aware orders ask the scenario's predictor
(``engine.predictor``: oracle or noisy) through the view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
