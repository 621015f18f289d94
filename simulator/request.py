"""Request: one sequence as the engine and policies see it.

Progress is counted in tokens, not phases: a request has ``num_known_tokens``
(prompt plus what it has generated) and ``num_computed_tokens`` (those whose KV is
cached). A step computes some of the rest; when computed reaches known, the step
emits one new token. Prefill, chunked prefill and recompute after preemption are all
"how many tokens this step".

The true output length is not here: the simulator keeps it apart, so a policy cannot
peek at it (DESIGN.md, "Ground truth stays hidden").
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Request:
    """A request's visible state. Only its replica writes to it."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    num_output_tokens: int = 0
    """Tokens generated so far. While a request is decoding inside a fast-forwarded run
    this lags; ``Replica.sync`` brings it up to date."""
    num_computed_tokens: int = 0
    """Tokens whose KV is cached (0 while waiting, and again after a recompute preemption)."""
    num_blocks: int = 0
    """KV blocks held; ceil(num_computed_tokens / block size) between iterations."""
    num_preemptions: int = 0
    num_recomputed_tokens: int = 0
    """Tokens whose KV was dropped by preemptions (and computed again)."""
    swapped_blocks: int = 0
    """KV blocks held in host memory while swapped out (0 otherwise)."""
    priority: int = 0
    """Scheduling priority for priority-aware queue orders: lower is served first (as in
    vLLM's ``priority`` scheduling)."""
    deadline_s: float = math.inf
    """When the first token is due: arrival plus the request's own TTFT target, or the
    scenario's ``slo.ttft_s`` (inf without either). EDF orders by it."""
    ttft_slo_s: float = math.nan
    """The request's own TTFT target (its class's), NaN to use the scenario's."""
    prefix_id: int = -1
    """Shared content the prompt starts with (a system prompt, a session's history):
    two requests with the same ``prefix_id`` have identical first ``min(prefix_tokens)``
    tokens, which a prefix cache can share. -1: none."""
    prefix_tokens: int = 0
    """How many of the prompt's first tokens are the ``prefix_id`` content. When it is the
    whole prompt (a session turn), the generated tokens continue that content too."""
    shared_blocks: int = 0
    """Of ``num_blocks``, those shared through the prefix cache (the first ones)."""
    prefix_hit_tokens: int = 0
    """Prompt tokens found in the prefix cache at admission, summed over admissions."""
    replica: int = -1
    group_id: int = -1
    """The client request this one is part of (Skeleton-of-Thought splits one into
    several); -1: its own."""
    preprocess_s: float = 0.0
    """Seconds between the client's send (``arrival_s``) and the engine, spent in input
    transforms (prompt compression, retrieval), after any request it waited for."""
    kv_transfer_s: float = math.nan
    """Disaggregated serving: seconds from the end of its prefill until its KV cache
    reached a decode replica (queueing on the link included); NaN otherwise."""
    first_scheduled_s: float = math.nan
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    # Engine bookkeeping for decoding requests (meaningless otherwise).
    slot: int = -1
    """Index in the replica's decode arrays, -1 when not decoding."""
    decode_last_it: int = -1
    """Replica decode step that emits this request's last token (while decoding); a heap
    entry with another value is stale (the request was preempted since)."""
    decode_it0: int = 0
    """Replica decode step at which the counts above were last exact (while decoding)."""
    grow_it: int = -1
    """Decode step from which a decoding request allocates blocks again, after the slack
    of a KV reservation is used up; -1 once it does (it then counts in the replica's
    block-phase histogram)."""

    @property
    def num_known_tokens(self) -> int:
        """Prompt plus generated tokens: what a recompute has to prefill."""
        return self.prompt_tokens + self.num_output_tokens

    @property
    def num_tokens_to_compute(self) -> int:
        """Tokens not yet in the KV cache (1 for a decoding request)."""
        return self.num_known_tokens - self.num_computed_tokens
