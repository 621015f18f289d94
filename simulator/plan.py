"""IterationPlan and ReplicaView: what a batching policy sees and what it decides.

A policy reads a ``ReplicaView`` (read-only), returns an ``IterationPlan``; the replica
applies it. Policies never mutate requests, allocate blocks or compute time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from simulator.request import Request


class PolicyParams(BaseModel):
    """A policy as a scenario names it: ``kind`` (its registry name) and its own fields.

    Each policy with parameters subclasses this (frozen, unknown fields refused), so a
    scenario validates its policies' parameters with everything else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="Registry name of the policy.")


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The engine knobs every policy may read (from the scenario's ``engine`` section)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    long_prefill_token_threshold: int | None
    block_size_tokens: int
    max_model_len: int
    """Longest prompt + output the deployment accepts (longer requests are rejected)."""
    kv_watermark_frac: float = 0.0
    """Share of the KV cache that admission leaves free (vLLM v0's watermark)."""


@dataclass(slots=True)
class IterationPlan:
    """One iteration's decisions, modelled on vLLM's ``SchedulerOutput``.

    Invariants (checked by the replica): every decoding request that is not preempted
    runs (``num_decode_seqs`` equals the decoding count after preemptions); each
    request appears at most once across ``prefill`` and ``preempted``; the tokens of the
    plan are within the token budget; ``num_decode_seqs + len(prefill)`` is within
    ``max_num_seqs``.
    """

    num_decode_seqs: int = 0
    """Decoding requests that compute their one token (all of them, after preemptions)."""
    prefill: list[tuple[Request, int]] = field(default_factory=list)
    """(request, tokens to compute) for running prefills continued and waiting requests
    admitted, in admission order. A waiting request listed here is admitted."""
    preempted: list[Request] = field(default_factory=list)
    """Running requests to preempt before this iteration, last admitted first. Their KV is
    freed and they return to the front of the waiting queue (recompute)."""
    may_repeat: bool = True
    """For a decode-only plan: the same plan would be chosen again, iteration after
    iteration, until an arrival, a completion or a KV shortage changes the state. The
    replica may then advance the whole run in one event. A policy whose choice depends on
    anything else (decode lengths, the clock) sets this False."""
    wake_on_arrival: bool = True
    """Whether a request arriving during a fast-forwarded run could change this plan (and
    so must cut the run short). FCFS with a blocked queue head sets False."""

    @property
    def is_decode_only(self) -> bool:
        return not self.prefill and not self.preempted

    @property
    def num_prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefill)


class ReplicaView(Protocol):
    """Read-only state of one replica, at the start of an iteration.

    Nothing here mutates. ``running`` is in admission order (oldest first): its last
    entry is the preemption victim vLLM would pick.
    """

    @property
    def waiting(self) -> Sequence[Request]:
        """Requests not admitted, in the queue policy's order."""
        ...
    @property
    def waiting_is_fifo(self) -> bool:
        """The queue order is arrival order (a newcomer cannot overtake the head)."""
        ...
    def predicted_output_tokens(self, request: Request) -> float:
        """The scenario's predictor's guess of ``request``'s output length (its truth is
        hidden); raises if the scenario names no predictor."""
        ...
    @property
    def running(self) -> Sequence[Request]: ...
    @property
    def victims(self) -> Sequence[Request]:
        """Running requests in the order preemption takes them (``engine.preemption_victim``:
        last admitted first, or lowest priority first)."""
        ...
    @property
    def queue_preemptive(self) -> bool:
        """The queue order preempts running requests that rank below a waiting one."""
        ...
    def rank(self, request: Request) -> float:
        """The queue order's rank of ``request``, lower first (for preemptive orders)."""
        ...
    @property
    def prefilling(self) -> Collection[Request]:
        """Running requests with prompt (or recompute) tokens left, in admission order."""
        ...
    @property
    def num_running(self) -> int:
        """Requests admitted and not finished (prefilling or decoding)."""
        ...
    @property
    def num_decoding(self) -> int: ...
    @property
    def decode_step(self) -> int:
        """Iterations so far in which the decodes ran (a clock policies may count with)."""
        ...
    @property
    def num_free_blocks(self) -> int: ...
    @property
    def num_kv_blocks(self) -> int:
        """The replica's whole KV cache, in blocks."""
        ...
    @property
    def block_size_tokens(self) -> int: ...
    def num_decode_blocks_needed(self) -> int:
        """Blocks the decoding requests need for this iteration's tokens."""
        ...
    @property
    def decode_tokens_per_request(self) -> int:
        """Tokens of the budget one decoding request computes per step: 1, its beams or
        samples, or the positions a speculative or lookahead step verifies."""
        ...
    def decode_blocks(self, request: Request) -> int:
        """Blocks decoding ``request`` allocates for its next step."""
        ...
    def prefix_hit(self, request: Request) -> tuple[int, int]:
        """For a waiting request: (prompt tokens the prefix cache holds for it, which
        admission skips; cached blocks it would reference that nobody references now,
        which admission takes from the free ones). (0, 0) without a cache or a prefix."""
        ...
    def reserved_blocks(self, request: Request) -> int:
        """Blocks admission must give ``request`` whatever it computes first: its KV
        reservation (``engine.kv_reservation``); 0 for paged allocation."""
        ...
    def num_blocks_held(self, request: Request) -> int:
        """Blocks ``request`` holds now (up to date even inside a fast-forwarded run)."""
        ...
    def num_computed(self, request: Request) -> int:
        """Tokens of ``request`` in the KV cache now (up to date inside a run)."""
        ...
    def is_decoding(self, request: Request) -> bool: ...


class BatchingPolicy(Protocol):
    """Decides each iteration of one replica (``policies/batching.py`` has the built-ins)."""

    def schedule(self, view: ReplicaView) -> IterationPlan:
        """The next iteration's plan, from ``view`` (read-only); mutates nothing else
        than the policy's own learned state (attributes ending in ``_``)."""
        ...


class QueueOrder(Protocol):
    """Orders a replica's waiting requests for admission (``policies/queue.py``)."""

    fifo: bool
    """True when the order is arrival order (preempted requests first): a newcomer then
    joins the back and cannot overtake a blocked head, which lets runs ignore arrivals."""
    preemptive: bool
    """True when a waiting request that ranks above a running one should displace it
    (MLFQ, preemptive priority): the batching policy then preempts the running request
    to admit the waiting one, and runs of iterations stop while anyone waits."""

    def rank(self, request: Request, view: ReplicaView) -> float:
        """Lower ranks are served first; compares waiting and running requests alike (read
        progress through ``view``, which is up to date inside runs)."""
        ...


    def order(self, waiting: Sequence[Request], view: ReplicaView) -> Sequence[Request]:
        """``waiting`` in admission order; reads, never mutates."""
        ...
