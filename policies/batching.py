"""Batching policies: which requests run in the next iteration, and with how many tokens."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from policies.registry import Registry
from simulator.plan import BatchingPolicy, EngineLimits, IterationPlan, PolicyParams, ReplicaView
from simulator.request import Request

BATCHING: Registry[BatchingPolicy] = Registry("batching")


@BATCHING.register("token_budget")
class TokenBudgetBatching:
    """vLLM v1's scheduler: one token budget per iteration, running requests first.

    Every decoding request gets its one token; running prefills continue in admission
    order with chunks that fit the rest of the budget; then waiting requests are admitted
    first come, first served, while sequences, budget and KV blocks last. When decodes
    or chunks cannot get KV blocks, the most recently admitted running request is
    preempted (recompute), and nobody is admitted in that iteration, as in vLLM.
    """

    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        chunked_prefill: bool = True,
        long_prefill_token_threshold: int | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.long_prefill_token_threshold = long_prefill_token_threshold

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> TokenBudgetBatching:
        return cls(
            limits.max_num_seqs,
            limits.max_num_batched_tokens,
            limits.chunked_prefill,
            limits.long_prefill_token_threshold,
        )

    def _chunk(self, request: Request, budget: int) -> int:
        tokens = request.num_tokens_to_compute
        if self.chunked_prefill:
            if self.long_prefill_token_threshold is not None:
                tokens = min(tokens, self.long_prefill_token_threshold)
            return min(tokens, budget)
        return tokens if tokens <= budget else 0

    def schedule(self, view: ReplicaView) -> IterationPlan:
        block = view.block_size_tokens
        free = view.num_free_blocks
        victims = _Victims(view)

        # 1. Decodes: one token each; preempt from the tail until their blocks fit.
        decode_need = view.num_decode_blocks_needed()
        num_decode = view.num_decoding
        while decode_need > free:
            victim = victims.take()
            assert victim is not None, "decodes need more blocks than the whole cache"
            free += view.num_blocks_held(victim)
            if view.is_decoding(victim):
                num_decode -= 1
                decode_need -= _decode_blocks(view, victim, block)
        free -= decode_need
        budget = self.max_num_batched_tokens - num_decode

        # 2. Running prefills (chunked prompts, recomputes) continue in admission order;
        #    a chunk that lacks blocks preempts from the tail, possibly a decode.
        prefill: list[tuple[Request, int]] = []
        for request in view.prefilling:
            if budget <= 0 or victims.gone(request):
                continue
            tokens = self._chunk(request, budget)
            if tokens == 0:
                continue
            need = _blocks_for(request, tokens, block) - view.num_blocks_held(request)
            while need > free and not victims.gone(request):
                victim = victims.take()
                if victim is None:
                    break
                free += view.num_blocks_held(victim)
                if view.is_decoding(victim):  # it no longer decodes this iteration
                    num_decode -= 1
                    free += _decode_blocks(view, victim, block)
                    budget += 1
            if victims.gone(request) or need > free:
                continue
            free -= need
            budget -= tokens
            prefill.append((request, tokens))

        # 3. Waiting requests, first come first served, only if nobody was preempted.
        num_running = num_decode + len(prefill)
        if not victims.preempted:
            for request in view.waiting:
                if num_running >= self.max_num_seqs or budget <= 0:
                    break
                tokens = self._chunk(request, budget)
                need = _blocks_for(request, tokens, block)
                if tokens == 0 or need > free:
                    break
                free -= need
                budget -= tokens
                num_running += 1
                prefill.append((request, tokens))
        return IterationPlan(
            num_decode_seqs=num_decode,
            prefill=prefill,
            preempted=victims.preempted,
            # A newcomer joins the back of the queue: it can only be admitted when the
            # queue was empty, since FCFS admits nobody past a blocked head.
            wake_on_arrival=not view.waiting or len(prefill) > 0,
        )


class _Victims:
    """Running requests in preemption order (last admitted first), taken one by one."""

    def __init__(self, view: ReplicaView) -> None:
        self._view = view
        self._order: Iterator[Request] | None = None
        self.preempted: list[Request] = []
        self._ids: set[int] = set()

    def take(self) -> Request | None:
        if self._order is None:
            self._order = reversed(self._view.running)
        victim = next(self._order, None)
        if victim is not None:
            self.preempted.append(victim)
            self._ids.add(victim.request_id)
        return victim

    def gone(self, request: Request) -> bool:
        return request.request_id in self._ids


def _blocks_for(request: Request, tokens: int, block: int) -> int:
    """Blocks ``request`` holds once ``tokens`` more are computed."""
    return math.ceil((request.num_computed_tokens + tokens) / block)


def _decode_blocks(view: ReplicaView, request: Request, block: int) -> int:
    """Blocks a decoding request needs for its next token (0 or 1)."""
    held = view.num_blocks_held(request)
    return 1 if held * block <= view.num_computed(request) else 0
