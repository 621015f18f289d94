"""Batching policies: which requests run in the next iteration, and with how many tokens.

Each policy composes the same few moves on a ``_Planner`` (reserve the decodes' blocks,
continue running prefills, admit waiting requests, preempt from the tail when blocks run
out) in the order of the system it is named after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from pydantic import Field

from policies.registry import Registry
from simulator.plan import BatchingPolicy, EngineLimits, IterationPlan, PolicyParams, ReplicaView
from simulator.request import Request

BATCHING: Registry[BatchingPolicy] = Registry("batching")

Chunker = Callable[[int, int], int]
"""(request's tokens left to compute, tokens left in the budget) -> tokens to compute
this iteration (0: none)."""


def _blocks_for(request: Request, tokens: int, block: int) -> int:
    """Blocks ``request`` holds once ``tokens`` more are computed."""
    return math.ceil((request.num_computed_tokens + tokens) / block)


def chunker(chunked: bool, threshold: int | None = None) -> Chunker:
    """Chunked: as many tokens as the budget (and ``threshold``) allow. Whole: the rest of
    the prompt if it fits the budget, else nothing."""

    def chunk(tokens: int, budget: int) -> int:
        if chunked:
            return min(tokens, budget, threshold or tokens)
        return tokens if tokens <= budget else 0

    return chunk


class _Planner:
    """One iteration's bookkeeping while a policy decides: free blocks, the token budget,
    and preemption victims (running requests, last admitted first). Reads the view only."""

    def __init__(self, view: ReplicaView, token_budget: int) -> None:
        self.view = view
        self.block = view.block_size_tokens
        self.free = view.num_free_blocks
        self.budget = token_budget
        self.num_decode = 0
        self.prefill: list[tuple[Request, int]] = []
        self.preempted: list[Request] = []
        self._gone: set[int] = set()
        self._victims: Iterator[Request] | None = None

    def gone(self, request: Request) -> bool:
        return request.request_id in self._gone

    def _take_victim(self) -> Request | None:
        if self._victims is None:
            self._victims = iter(self.view.victims)
        victim = next((v for v in self._victims if self._may_preempt(v)), None)
        if victim is not None:
            self._preempt(victim)
        return victim

    def _may_preempt(self, request: Request) -> bool:
        """Not preempted already, and not given tokens in this plan."""
        return not self.gone(request) and all(r is not request for r, _ in self.prefill)

    def _preempt(self, victim: Request) -> None:
        self.preempted.append(victim)
        self._gone.add(victim.request_id)
        # Its own blocks come free; cached ones it shares may stay referenced by others.
        self.free += self.view.num_blocks_held(victim) - victim.shared_blocks
        if self.num_decode and self.view.is_decoding(victim):
            # It no longer decodes this iteration: give back its tokens and blocks.
            self.num_decode -= 1
            self.budget += self.view.decode_tokens_per_request
            self.free += self.view.decode_blocks(victim)

    def reserve_decodes(self) -> None:
        """Every decoding request computes its token: take the budget and blocks for them,
        preempting from the tail until the blocks fit (vLLM's recompute preemption)."""
        view = self.view
        self.num_decode = view.num_decoding
        self.budget -= self.num_decode * view.decode_tokens_per_request
        self.free -= view.num_decode_blocks_needed()
        while self.free < 0:
            victim = self._take_victim()
            assert victim is not None, "decodes need more blocks than the whole cache"

    def _fit(self, request: Request, tokens: int) -> bool:
        """Reserve blocks for ``tokens`` more of ``request``, preempting others from the
        tail if needed; False if that would preempt ``request`` itself."""
        need = max(0, _blocks_for(request, tokens, self.block) - self.view.num_blocks_held(request))
        while need > self.free and not self.gone(request):
            if self._take_victim() is None:
                return False
        if self.gone(request) or need > self.free:
            return False
        self.free -= need
        return True

    def continue_prefills(self, chunk: Chunker) -> None:
        """Running prefills (chunked prompts, recomputes) go on in admission order."""
        for request in self.view.prefilling:
            if self.budget <= 0 or self.gone(request):
                continue
            tokens = chunk(request.num_tokens_to_compute, self.budget)
            if tokens and self._fit(request, tokens):
                self.budget -= tokens
                self.prefill.append((request, tokens))

    def admit(self, max_num_seqs: int, chunk: Chunker, watermark_frac: float = 0.0) -> None:
        """Waiting requests in queue order while sequences, budget and blocks (less the
        watermark) last; nobody is admitted in an iteration that preempted (as vLLM)."""
        if self.preempted:
            return
        view = self.view
        reserve = int(watermark_frac * view.num_kv_blocks)
        num_running = view.num_running
        for request in view.waiting:
            if self.budget <= 0:
                break
            hit_tokens, hit_blocks = view.prefix_hit(request)
            tokens = chunk(request.num_tokens_to_compute - hit_tokens, self.budget)
            # Blocks it takes: its own (at least its reservation) beyond the cached prefix,
            # plus cached blocks it references that nobody did (they were free to others).
            own = max(_blocks_for(request, hit_tokens + tokens, self.block),
                      view.reserved_blocks(request)) - hit_tokens // self.block
            need = own + hit_blocks
            if num_running >= max_num_seqs or tokens == 0 or need > self.free - reserve:
                if view.queue_preemptive and not self.prefill:
                    self._displace_for(request, max_num_seqs, need + reserve)
                break
            self.free -= need
            self.budget -= tokens
            num_running += 1
            self.prefill.append((request, tokens))

    def _displace_for(self, request: Request, max_num_seqs: int, need: int) -> None:
        """A preemptive queue order: preempt running requests that rank below the blocked
        waiting ``request``, worst first, until a sequence slot and ``need`` blocks are
        free; it is admitted next iteration (none is in an iteration that preempts)."""
        view = self.view
        rank = view.rank(request)
        # Worst rank first; among equals the last admitted (least work lost), as vLLM.
        worse = sorted((r for r in reversed(view.running)
                        if view.rank(r) > rank and self._may_preempt(r)),
                       key=view.rank, reverse=True)
        num_running = view.num_running
        for victim in worse:
            if num_running < max_num_seqs and need <= self.free:
                break
            self._preempt(victim)
            num_running -= 1

    def plan(self, *, may_repeat: bool = True, wake_on_arrival: bool | None = None
             ) -> IterationPlan:
        if self.view.queue_preemptive and self.view.waiting:
            may_repeat = False  # ranks change as requests progress: decide every step
        if wake_on_arrival is None:
            # In FIFO order a newcomer joins the back of the queue, so it can only be
            # admitted when the queue was empty; other orders may let it overtake.
            wake_on_arrival = (
                not self.view.waiting_is_fifo or not self.view.waiting or bool(self.prefill)
            )
        return IterationPlan(self.num_decode, self.prefill, self.preempted,
                             may_repeat=may_repeat, wake_on_arrival=wake_on_arrival)


def _require_whole_prompts_fit(name: str, limits: EngineLimits) -> None:
    if limits.max_num_batched_tokens < limits.max_model_len:
        raise ValueError(
            f"batching {name!r} computes whole prompts, but engine.max_num_batched_tokens="
            f"{limits.max_num_batched_tokens} is below max_model_len={limits.max_model_len}:"
            f" long prompts could never run; raise the budget or lower engine.max_model_len"
        )


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
        kv_watermark_frac: float = 0.0,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.kv_watermark_frac = kv_watermark_frac
        self._chunk = chunker(chunked_prefill, long_prefill_token_threshold)

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> TokenBudgetBatching:
        return cls(
            limits.max_num_seqs,
            limits.max_num_batched_tokens,
            limits.chunked_prefill,
            limits.long_prefill_token_threshold,
            limits.kv_watermark_frac,
        )

    def schedule(self, view: ReplicaView) -> IterationPlan:
        if (
            not view.waiting
            and not view.prefilling
            and view.num_decode_blocks_needed() <= view.num_free_blocks
        ):
            # The common case, and what a fast-forwarded run repeats: all decode.
            return IterationPlan(view.num_decoding)
        planner = _Planner(view, self.max_num_batched_tokens)
        planner.reserve_decodes()
        planner.continue_prefills(self._chunk)
        planner.admit(self.max_num_seqs, self._chunk, self.kv_watermark_frac)
        return planner.plan()


class SarathiParams(PolicyParams):
    token_budget: int = Field(
        default=512, gt=0,
        description="Tokens per iteration, decodes included (Sarathi-Serve's chunk size).",
    )


@BATCHING.register("sarathi", params=SarathiParams)
class SarathiBatching(TokenBudgetBatching):
    """Sarathi-Serve's stall-free batching (Agrawal et al., OSDI'24): decodes first, then
    prefill chunks fill a small fixed token budget, so a long prompt never stalls the
    decodes for more than one chunk's time. vLLM v1 adopted the same loop; the difference
    here is the budget, Sarathi's chunk size, rather than the engine's."""

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> SarathiBatching:
        assert isinstance(params, SarathiParams)
        if params.token_budget < limits.max_num_seqs:
            raise ValueError(
                f"batching 'sarathi': token_budget={params.token_budget} is below "
                f"engine.max_num_seqs={limits.max_num_seqs}; every decode needs a token"
            )
        return cls(limits.max_num_seqs, params.token_budget, True, None,
                   limits.kv_watermark_frac)


@BATCHING.register("orca")
class OrcaBatching(TokenBudgetBatching):
    """Orca's iteration-level scheduling (Yu et al., OSDI'22): requests join and leave the
    batch at every iteration, whole prompts batched with the running decodes (selective
    batching), within the engine's sequence and token limits."""

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> OrcaBatching:
        _require_whole_prompts_fit("orca", limits)
        return cls(limits.max_num_seqs, limits.max_num_batched_tokens, False, None,
                   limits.kv_watermark_frac)


class _WholePrompts:
    """Shared by the parameterless policies that compute whole prompts."""

    policy_name = ""

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int,
                 kv_watermark_frac: float = 0.0) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_watermark_frac = kv_watermark_frac
        self._whole = chunker(False)

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> _WholePrompts:
        _require_whole_prompts_fit(cls.policy_name, limits)
        return cls(limits.max_num_seqs, limits.max_num_batched_tokens, limits.kv_watermark_frac)


class PrefillFirstParams(PolicyParams):
    chunked: bool = Field(
        default=False,
        description="Split prompts to fit the token budget (SGLang); false: whole prompts "
        "(vLLM v0).",
    )


@BATCHING.register("prefill_first", params=PrefillFirstParams)
class PrefillFirstBatching(_WholePrompts):
    """vLLM v0's default scheduler (before chunked prefill): whenever waiting requests can
    be admitted, the iteration prefills them alone (whole prompts) and the running decodes
    pause; otherwise every running request decodes. Good for throughput; long prompts
    stall decodes (the tail TPOT that chunked prefill removes).

    With ``chunked: true``, prompts are split to fit the token budget (at most
    ``engine.long_prefill_token_threshold`` each) but prefill iterations still run alone,
    as SGLang schedules by default (chunked prefill, no mixed batches)."""

    policy_name = "prefill_first"

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int,
                 kv_watermark_frac: float = 0.0, chunked: bool = False,
                 threshold: int | None = None) -> None:
        super().__init__(max_num_seqs, max_num_batched_tokens, kv_watermark_frac)
        self._prompts = chunker(chunked, threshold)

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> PrefillFirstBatching:
        assert isinstance(params, PrefillFirstParams)
        if not params.chunked:
            _require_whole_prompts_fit(cls.policy_name, limits)
        return cls(limits.max_num_seqs, limits.max_num_batched_tokens,
                   limits.kv_watermark_frac, params.chunked,
                   limits.long_prefill_token_threshold)

    def schedule(self, view: ReplicaView) -> IterationPlan:
        prefills = _Planner(view, self.max_num_batched_tokens)
        prefills.continue_prefills(self._prompts)  # chunks, and recomputes after preemption
        prefills.admit(self.max_num_seqs, self._prompts, self.kv_watermark_frac)
        if prefills.prefill:
            return prefills.plan()
        decodes = _Planner(view, self.max_num_batched_tokens)
        decodes.reserve_decodes()
        return decodes.plan()


@BATCHING.register("static")
class StaticBatching(_WholePrompts):
    """Request-level static batching (FasterTransformer, early TGI): when the replica is
    empty, a batch of waiting requests is prefilled (whole prompts, within the limits);
    it then decodes until its last member finishes, and nobody joins meanwhile."""

    policy_name = "static"

    def schedule(self, view: ReplicaView) -> IterationPlan:
        planner = _Planner(view, self.max_num_batched_tokens)
        if view.num_running == 0:
            planner.admit(self.max_num_seqs, self._whole, self.kv_watermark_frac)
            return planner.plan()
        planner.continue_prefills(self._whole)  # a member preempted and resumed
        if planner.prefill:
            return planner.plan(wake_on_arrival=False)
        planner.reserve_decodes()
        return planner.plan(wake_on_arrival=False)


class DecodePriorityParams(PolicyParams):
    waiting_served_ratio: float = Field(
        default=1.2, gt=0,
        description="Prefill new requests once waiting >= ratio x decoding requests.",
    )
    max_waiting_tokens: int = Field(
        default=20, gt=0,
        description="...or once this many decode steps ran since the last prefill.",
    )


@BATCHING.register("decode_priority", params=DecodePriorityParams)
class DecodePriorityBatching:
    """Decodes first, new prefills in bursts, as Hugging Face TGI's router batches: the
    running batch keeps decoding and waiting requests are prefilled (pausing the decodes
    for that iteration) only when enough are waiting relative to the batch
    (``waiting_served_ratio``) or when they have waited ``max_waiting_tokens`` decode
    steps; an idle replica admits at once."""

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int,
                 waiting_served_ratio: float, max_waiting_tokens: int,
                 kv_watermark_frac: float = 0.0) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_watermark_frac = kv_watermark_frac
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_tokens = max_waiting_tokens
        self._whole = chunker(False)
        self.last_prefill_step_ = 0

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> DecodePriorityBatching:
        assert isinstance(params, DecodePriorityParams)
        _require_whole_prompts_fit("decode_priority", limits)
        return cls(limits.max_num_seqs, limits.max_num_batched_tokens,
                   params.waiting_served_ratio, params.max_waiting_tokens,
                   limits.kv_watermark_frac)

    def schedule(self, view: ReplicaView) -> IterationPlan:
        planner = _Planner(view, self.max_num_batched_tokens)
        planner.continue_prefills(self._whole)  # recomputes left by a preemption
        waited = view.decode_step - self.last_prefill_step_
        if (
            view.num_decoding == 0
            or len(view.waiting) >= self.waiting_served_ratio * view.num_decoding
            or waited >= self.max_waiting_tokens
        ):
            planner.admit(self.max_num_seqs, self._whole, self.kv_watermark_frac)
        if planner.prefill:
            self.last_prefill_step_ = view.decode_step
            return planner.plan()
        decodes = _Planner(view, self.max_num_batched_tokens)
        decodes.reserve_decodes()
        # With requests waiting, the decision changes as decode steps pass: step.
        return decodes.plan(may_repeat=not view.waiting)
