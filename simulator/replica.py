"""Replica: one engine instance (a tensor-parallel group) as a SimPy process.

Its loop reads in one breath: view -> plan -> cost -> ``yield`` -> apply. The replica
is the only writer of its state; the batching policy reads it through the
``ReplicaView`` methods below.

Decoding requests are not touched per iteration. Decodes run all together or not at all
in an iteration (a prefill-only iteration pauses them), so one counter, ``decode_step``,
says how many decode steps have run. Each decoding request keeps the step at which its
counts were exact (``decode_it0``); its progress since is ``decode_step`` minus that.
What the cost model and the KV check need from them is kept as running totals:

- ``_ctx_sum``: KV tokens cached by decoding requests, all together;
- ``_block_phase``: a histogram over ``(decode_it0 - computed_at_it0) mod block`` which
  is constant while a request decodes; at decode step ``s`` exactly the requests in bin
  ``s mod block`` have a full last block and need a new one. So the blocks a run of
  decode iterations allocates are a lookup, whatever the batch size.
- ``_finish_heap``: (decode step of the last token, request id, request).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Collection, Generator, Sequence
from typing import Any

import numpy as np
import simpy

from simulator.clock import on_grid, on_grid_array
from simulator.cost import CostModel
from simulator.pipeline import Pipeline
from simulator.plan import BatchingPolicy, IterationPlan, QueueOrder
from simulator.predictor import Predictor
from simulator.prefix_cache import PrefixCache
from simulator.recorder import Recorder
from simulator.request import Request

MAX_RUN_ITERATIONS = 4096
"""Longest decode run advanced in one event; bounds the arrays a run allocates."""
_RUN_COLUMNS = ("start_s", "duration_s", "num_decode_seqs", "kv_blocks_used", "flops",
                "hbm_bytes", "decode_gap_s", "num_decode_continuing", "kv_tokens",
                "kv_blocks_cached")
"""What a decode run records; its other iteration columns (prefill, preemption, swap) are 0."""

MIN_HORIZON = 16
"""Shortest run planned ahead. Runs are planned ``_horizon`` iterations at most, a length
that adapts to how soon arrivals cut them; where runs are cut changes no result (they
are exact), only how much numpy work is wasted on iterations that never happen."""


class Replica:
    """A serving engine replica. Created by ``simulate``; not a public API."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        cost: CostModel,
        batching: BatchingPolicy,
        *,
        queue: QueueOrder,
        predictor: Predictor | None,
        num_host_blocks: int = 0,
        preemption_victim: str = "newest",
        kv_reservation: str = "paged",
        prefix_cache: str = "none",
        max_model_len: int = 0,
        num_kv_blocks: int,
        block_size_tokens: int,
        max_num_seqs: int,
        fast_forward: bool,
        stop_s: float | None,
        recorder: Recorder,
        on_done: Callable[[Request], None],
        pipeline: Pipeline | None = None,
        on_prefilled: Callable[[Replica, Request, int], None] | None = None,
        speed: float = 1.0,
        width: int = 1,
    ) -> None:
        self.env = env
        self.index = index
        self.speed = speed  # relative to the cluster's fastest replica, for routers
        self.cost = cost
        self.batching = batching
        self.queue = queue
        self.predictor = predictor
        self._num_host_blocks = num_host_blocks  # swap space; 0: recompute preemption
        self._host_blocks_free = num_host_blocks
        self._victim_by_priority = preemption_victim == "lowest_priority"
        self._reservation = kv_reservation
        self._max_model_len = max_model_len
        self._cache = None if prefix_cache == "none" else PrefixCache(block_size_tokens)
        self._num_shared = 0  # sum of running requests' shared_blocks
        self._swap_bytes_pending = 0.0
        self.num_kv_blocks = num_kv_blocks
        self._block = block_size_tokens
        self.max_num_seqs = max_num_seqs
        self.fast_forward = fast_forward
        self.stop_s = stop_s
        self.recorder = recorder
        self._iterations = recorder.iterations[index]
        self.on_done = on_done
        self._window = cost.model.sliding_window_tokens
        # Sequences per request (beam search, parallel sampling): they share the prompt's
        # full blocks, each has its own copy of the rest, and they decode together.
        self._width = width
        self._pipeline = pipeline  # None: the replica's one device group runs every layer
        # Prefill role (disaggregated serving): requests leave after their first token,
        # their KV held here until ``release_sent`` says it reached a decode replica.
        self._on_prefilled = on_prefilled
        self._sending: dict[int, Request] = {}

        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}  # admission order
        self._prefilling: dict[int, Request] = {}  # subset of running, admission order
        self._targets: dict[int, int] = {}  # true output lengths, hidden from policies
        self._predicted: dict[int, float] = {}  # the predictor's guesses, if any
        self._outstanding_prompt_tokens = 0
        self.iteration = 0
        self.decode_step = 0  # iterations in which the decodes ran
        self.num_blocks_used = 0
        self._num_decoding = 0
        self._ctx_sum = 0
        self._block_phase = np.zeros(block_size_tokens, dtype=np.int64)
        self._finish_heap: list[tuple[int, int, Request]] = []
        # (decode step from which it allocates blocks, id, request): reservations used up.
        self._grow_heap: list[tuple[int, int, Request]] = []
        self._free_slots = list(range(max_num_seqs - 1, -1, -1))
        self._slot_ctx0 = np.zeros(max_num_seqs, dtype=np.int64)  # for sliding windows
        self._slot_it0 = np.zeros(max_num_seqs, dtype=np.int64)
        self._slot_active = np.zeros(max_num_seqs, dtype=bool)
        self._slot_fork = np.zeros(max_num_seqs, dtype=np.int64)  # blocks its beams share
        self._fork_tokens = 0  # sum over decoding requests of their shared blocks' tokens

        # Inter-token gaps: decodes that ran in the previous decode step share one gap;
        # requests that joined since keep their own last-token time until they decode.
        self._last_decode_end_s: float | None = None
        self._joined_s: dict[int, float] = {}
        self._horizon = MIN_HORIZON
        self._decode_blocks_in_flight = 0
        self._wakeup: simpy.Event | None = None
        self._interruptible = False
        self._wake_on_arrival = True
        self._known_arrivals_s: np.ndarray | None = None  # see expect_arrivals
        self._next_known = 0
        self.process = env.process(self._loop())

    # ---- ReplicaView (read-only) ----

    @property
    def waiting(self) -> Sequence[Request]:
        return self.queue.order(self._waiting, self)

    @property
    def waiting_is_fifo(self) -> bool:
        return self.queue.fifo

    def predicted_output_tokens(self, request: Request) -> float:
        predicted = self._predicted.get(request.request_id)
        if predicted is None:
            raise ValueError(
                "this queue policy orders by predicted output length: set engine.predictor "
                "(e.g. {kind: oracle} or {kind: noisy, sigma: 0.5})"
            )
        return predicted

    @property
    def running(self) -> Sequence[Request]:
        return list(self._running.values())

    @property
    def victims(self) -> Sequence[Request]:
        running = list(self._running.values())
        if self._victim_by_priority:
            # Highest priority value first, the last admitted among equals (stable sort).
            running.sort(key=lambda r: r.priority)
        running.reverse()
        return running

    @property
    def queue_preemptive(self) -> bool:
        return self.queue.preemptive

    def rank(self, request: Request) -> float:
        return self.queue.rank(request, self)

    @property
    def prefilling(self) -> Collection[Request]:
        return self._prefilling.values()

    @property
    def num_decoding(self) -> int:
        return self._num_decoding

    @property
    def num_free_blocks(self) -> int:
        return self.num_kv_blocks - self.num_blocks_used

    @property
    def block_size_tokens(self) -> int:
        return self._block

    def prefix_hit(self, request: Request) -> tuple[int, int]:
        cache = self._cache
        if cache is None or request.prefix_id < 0 or request.num_computed_tokens:
            return 0, 0
        hit = cache.hit_blocks(request.prefix_id, request.prefix_tokens,
                               request.num_known_tokens)
        return hit * self._block, max(0, hit - cache.num_held(request.prefix_id))

    def reserved_blocks(self, request: Request) -> int:
        if self._reservation == "paged":
            if self._width == 1:
                return 0
            # Its sequences fork after the prompt: each needs its own copy of a partial
            # last block (copy-on-write), taken at admission so the fork always fits.
            known = request.num_known_tokens
            return -(-known // self._block) + (self._width - 1) * (known % self._block > 0)
        if self._reservation == "max":
            tokens = self._max_model_len - 1  # the most KV any request may store
        else:
            predicted = max(1, math.ceil(self.predicted_output_tokens(request)))
            tokens = min(request.prompt_tokens + predicted, self._max_model_len) - 1
        return -(-tokens // self._block)

    def num_decode_blocks_needed(self) -> int:
        return self._width * int(self._block_phase[self.decode_step % self._block])

    @property
    def decode_tokens_per_request(self) -> int:
        return self._width

    def decode_blocks(self, request: Request) -> int:
        computed = self.num_computed(request)
        if self._width == 1:
            return 1 if self.num_blocks_held(request) * self._block <= computed else 0
        return self._width if computed % self._block == 0 else 0

    def _held_blocks(self, slot: int, computed: int) -> int:
        """Blocks a decoding request's sequences hold with ``computed`` tokens each:
        the shared prompt blocks once, the rest once per sequence."""
        blocks = -(-computed // self._block)
        if self._width == 1:
            return blocks
        shared = int(self._slot_fork[slot])
        return shared + self._width * (blocks - shared)

    def is_decoding(self, request: Request) -> bool:
        return request.slot >= 0

    def num_computed(self, request: Request) -> int:
        if request.slot >= 0:
            return request.num_computed_tokens + self.decode_step - request.decode_it0
        return request.num_computed_tokens

    # ---- ReplicaLoad (what routers read; never changes inside a run) ----

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_outstanding_prompt_tokens(self) -> int:
        return self._outstanding_prompt_tokens

    @property
    def num_sending(self) -> int:
        """Prefilled requests whose KV is still being sent to a decode replica."""
        return len(self._sending)

    def num_blocks_held(self, request: Request) -> int:
        if request.slot >= 0:
            return max(request.num_blocks,
                       self._held_blocks(request.slot, self.num_computed(request)))
        return request.num_blocks

    # ---- arrivals ----

    def expect_arrivals(self, arrival_s: np.ndarray) -> None:
        """Announce every arrival this replica will get (oblivious routing of an open-loop
        workload). Runs then end exactly where an arrival would have interrupted them,
        without the interrupt: same results, two events fewer per arrival."""
        self._known_arrivals_s = arrival_s
        self._next_known = 0

    def submit(self, request: Request, output_tokens: int) -> None:
        """Queue an arrived request (called by the router at its arrival time)."""
        request.replica = self.index
        self._targets[request.request_id] = output_tokens
        if self.predictor is not None:
            self._predicted[request.request_id] = self.predictor(
                request.request_id, request.prompt_tokens, output_tokens)
        self._outstanding_prompt_tokens += request.prompt_tokens
        self._waiting.append(request)
        if self._known_arrivals_s is not None:
            assert self._known_arrivals_s[self._next_known] == self.env.now
            self._next_known += 1
        self._notify()

    def submit_prefilled(self, request: Request, output_tokens: int) -> None:
        """Queue a request whose prompt was computed by a prefill replica and whose KV
        cache has just arrived here (disaggregated serving): admission gives it blocks
        for that KV, and it goes on decoding without computing its prompt again."""
        request.num_blocks = request.shared_blocks = 0
        request.prefix_id = -1  # its KV came whole; nothing to share or publish here
        self.submit(request, output_tokens)

    def release_sent(self, request: Request) -> None:
        """A prefilled request's KV has reached its decode replica: free it here."""
        del self._sending[request.request_id]
        del self._targets[request.request_id]
        self._free_blocks(request)
        self._notify()

    def _notify(self) -> None:
        """Something a plan may use arrived (a request, free blocks): wake the loop, or
        cut a run short where that could change the plan."""
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        elif (
            self._interruptible
            and self._wake_on_arrival
            and (len(self._running) < self.max_num_seqs or self.queue.preemptive)
        ):
            self._interruptible = False  # one interrupt per run
            self.process.interrupt()

    # ---- the loop ----

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        while True:
            if not self._running and not self._waiting:
                yield from self._sleep()
                continue
            self._join_growing()
            plan = self.batching.schedule(self)
            self._preempt(plan.preempted)
            if not plan.prefill and plan.num_decode_seqs == 0:
                if not plan.preempted:
                    # Nothing to run: wait for an arrival. (A policy that leaves work
                    # waiting forever shows as requests in flight at the end, which
                    # check_policy reports.)
                    yield from self._sleep()
                continue
            assert plan.num_decode_seqs in (0, self._num_decoding), "decodes run all or none"
            if (plan.is_decode_only and plan.may_repeat and self.fast_forward
                    and not self._swap_bytes_pending and self._pipeline is None):
                self._wake_on_arrival = plan.wake_on_arrival
                yield from self._decode_run()
            else:
                yield from self._step(plan)

    def _sleep(self) -> Generator[simpy.Event, Any, None]:
        self._wakeup = self.env.event()
        yield self._wakeup
        self._wakeup = None

    def _step(self, plan: IterationPlan) -> Generator[simpy.Event, Any, None]:
        """One iteration of any shape."""
        start_s = self.env.now
        q: list[int] = []
        ctx: list[int] = []
        for request, tokens in plan.prefill:
            floor = 0
            if request.request_id not in self._running:
                self._admit(request, start_s)
                floor = self.reserved_blocks(request)
            assert request.num_computed_tokens + tokens <= request.num_known_tokens
            blocks = max(-(-(request.num_computed_tokens + tokens) // self._block),
                         request.num_blocks, floor)
            self.num_blocks_used += blocks - request.num_blocks
            request.num_blocks = blocks
            q.append(tokens)
            ctx.append(request.num_computed_tokens)
        num_decode = plan.num_decode_seqs  # all decoding requests, or 0: paused
        # Decodes' blocks for this step; their requests count them once the step is done.
        self._decode_blocks_in_flight = self.num_decode_blocks_needed() if num_decode else 0
        self.num_blocks_used += self._decode_blocks_in_flight
        assert self.num_blocks_used <= self.num_kv_blocks, "plan over-allocates KV blocks"
        self._evict_cached()
        # KV tokens stored once this iteration's tokens are computed.
        kv_tokens = (self._decode_kv_tokens(num_decode) + sum(q)
                     + self._kv_tokens_besides_decodes())
        cached_blocks = self._num_cached_blocks()
        swap_bytes, self._swap_bytes_pending = self._swap_bytes_pending, 0.0
        wait_s = transfer_s = 0.0
        w = self._width
        if not num_decode:
            attended = 0.0
        elif self._window is None:
            attended = float(self._ctx_sum + num_decode) * w
        else:
            attended = float(self._decode_context(1)[0]) * w
        blocks_used = self.num_blocks_used
        if self._pipeline is not None:
            stage_s, send_s, flops, hbm = self._price_pipeline(q, ctx, num_decode, attended)
            stage_s[0] = on_grid(stage_s[0] + self.cost.swap_s(swap_bytes))
            wait_s, transfer_s = yield from self._pipeline.traverse(stage_s, send_s)
            duration_s = self.env.now - start_s
        else:
            if q:
                seconds, flops, hbm = self._price_mixed(q, ctx, num_decode, attended)
                duration_s = on_grid(seconds + self.cost.swap_s(swap_bytes))
            else:  # decode-only but not repeatable: price exactly as a run of one would be
                secs, fl, hb = self._price_decodes(num_decode, self._decode_context(1))
                duration_s = on_grid(float(secs[0]) + self.cost.swap_s(swap_bytes))
                flops, hbm = float(fl[0]), float(hb[0])
            yield self.env.timeout(duration_s)
        # Recorded once done: an iteration cut off by the stop never completed.
        gap_s, continuing = self._decode_gaps(num_decode, self.env.now)
        self._iterations.append(
            start_s, duration_s, sum(q), len(q),
            num_decode, blocks_used, len(plan.preempted), flops, hbm, gap_s, continuing,
            swap_bytes, kv_tokens, cached_blocks, wait_s, transfer_s,
            *self._step_token_counts(num_decode),
        )
        self._decode_blocks_in_flight = 0
        self.iteration += 1
        if num_decode:
            self._advance_decodes(num_decode)
        now = self.env.now
        for request, tokens in plan.prefill:
            request.num_computed_tokens += tokens
            if request.num_computed_tokens == request.num_known_tokens:
                self._emit_after_prefill(request, now)
        self._finish_decodes(now)

    def _decode_run(self) -> Generator[simpy.Event, Any, None]:
        """Decode-only iterations until the next completion, KV shortage or stop, in one
        event; an arrival that could be admitted interrupts and cuts the run short.

        Written for few numpy calls: this is the simulator's hottest path."""
        start_s = self.env.now
        step0 = self.decode_step
        n = self._num_decoding
        self._clean_heap()
        k = min(self._finish_heap[0][0] - step0 + 1, self._horizon)
        if self._grow_heap:  # stop where a reservation runs out (it then allocates)
            k = min(k, self._grow_heap[0][0] - step0)
        new_blocks, bound = self._run_new_blocks(step0, k)
        blocks_used = new_blocks.cumsum()
        blocks_used += self.num_blocks_used
        # Search only when the run could overflow the cache.
        if bound > self.num_kv_blocks - self.num_blocks_used:
            k = min(k, int(blocks_used.searchsorted(self.num_kv_blocks, side="right")))
        assert k >= 1, "the policy planned decodes whose blocks do not fit"
        seconds, flops, hbm = self._price_decodes(n, self._decode_context(k))
        durations = on_grid_array(seconds)
        ends = durations.cumsum()
        ends += start_s  # every partial sum is exact on the grid, so order is free
        if self.stop_s is not None:
            # Iterations ending at or after the stop never complete, as when stepping.
            k = max(1, min(k, int(ends[:k].searchsorted(self.stop_s, side="left"))))
        known = self._known_arrivals_s
        if known is not None:
            if (
                self._next_known < len(known)
                and self._wake_on_arrival
                and (len(self._running) < self.max_num_seqs or self.queue.preemptive)
            ):
                k = _started_by(ends, k, known[self._next_known])
            self._interruptible = False
        else:
            self._interruptible = k > 1
        try:
            yield self.env.timeout(ends[k - 1] - start_s)
            if k == self._horizon:  # the run went the whole way: plan further next time
                self._horizon = min(2 * k, MAX_RUN_ITERATIONS)
        except simpy.Interrupt:
            # Iterations that started before the arrival run as planned; the next plan
            # starts when the one in progress ends.
            now = self.env.now
            k = _started_by(ends, k, now)
            yield self.env.timeout(ends[k - 1] - now)
            self._horizon = max(MIN_HORIZON, 4 * k)
        self._interruptible = False
        # Consecutive decode steps: each gap is the step's duration, but maybe the first's.
        gap0, continuing0 = self._decode_gaps(n, float(ends[0]))
        gaps: np.ndarray = durations[:k]
        continuing: np.ndarray | int = n
        if gap0 != durations[0] or continuing0 != n:
            gaps = gaps.copy()
            gaps[0] = gap0
            continuing = np.full(k, n, dtype=np.int64)
            continuing[0] = continuing0
        self._last_decode_end_s = float(ends[k - 1])
        kv_tokens = self._run_kv_tokens(k)
        kv_tokens += self._kv_tokens_besides_decodes()
        # Cached blocks evicted as the run's allocations need them (as stepping would).
        cached: np.ndarray | int = 0
        if self._cache is not None and self._cache.num_evictable:
            cached = np.minimum(self._cache.num_evictable, self.num_kv_blocks - blocks_used[:k])
        extra_names, extra_values = self._run_token_counts(k)
        self._iterations.extend(k, _RUN_COLUMNS + extra_names, (
            ends[:k] - durations[:k], durations[:k], n, blocks_used[:k], flops[:k], hbm[:k],
            gaps, continuing, kv_tokens, cached, *extra_values,
        ))
        self.iteration += k
        self._advance_run(k)
        self.num_blocks_used = int(blocks_used[k - 1])
        self._evict_cached()
        self._finish_decodes(self.env.now)

    # ---- pricing ----

    def _price_mixed(self, q: list[int], ctx: list[int], num_decode: int, attended: float
                     ) -> tuple[float, float, float]:
        """(seconds, flops, bytes) of an iteration with prefill chunks ``q`` after
        ``ctx`` cached tokens and ``num_decode`` decoding requests attending ``attended``
        keys in all (their sequences' together)."""
        return self.cost.iteration(q, ctx, num_decode * self._width, attended)

    def _price_pipeline(self, q: list[int], ctx: list[int], num_decode: int, attended: float
                        ) -> tuple[list[float], float, float, float]:
        """``_price_mixed`` for a pipelined replica: per stage, and the sends between."""
        assert self._pipeline is not None
        return self._pipeline.price(q, ctx, num_decode * self._width, attended)

    def _price_decodes(self, num_decode: int, context: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per iteration of a decode-only run: (seconds, flops, bytes), ``context`` the
        keys one sequence of each request attends, summed over requests."""
        w = self._width
        return self.cost.decode_run(num_decode * w, context * w if w > 1 else context)

    def _run_new_blocks(self, step0: int, k: int) -> tuple[np.ndarray, int]:
        """Blocks the decodes allocate at each of the ``k`` steps from ``step0`` (the
        phase histogram read cyclically), and a bound on their sum."""
        steps = np.arange(step0, step0 + k)
        # Every decoding request sits in one bin: at most n * ceil(k / block) blocks.
        bound = self._num_decoding * self._width * -(-k // self._block)
        return self._block_phase[steps % self._block] * self._width, bound

    def _run_kv_tokens(self, k: int) -> np.ndarray:
        """KV tokens the decodes store after each of the next ``k`` steps."""
        n, w = self._num_decoding, self._width
        base = self._decode_kv_tokens(0)
        return np.arange(base + n * w, base + n * w * (k + 1), n * w, dtype=np.int64)

    def _run_token_counts(self, k: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """Extra iteration columns of a run (multi-token steps' kept and proposed
        tokens); none here."""
        return (), ()

    def _step_token_counts(self, num_decode: int) -> tuple[int, int]:
        """(tokens kept, tokens proposed) by this step's decodes: (0, 0), one token each."""
        return 0, 0

    def _advance_run(self, k: int) -> None:
        """The decodes computed ``k`` steps: one token each per step."""
        self.decode_step += k
        self._ctx_sum += self._num_decoding * k

    def _decode_kv_tokens(self, num_decode: int) -> int:
        """KV tokens the decoding requests store once ``num_decode`` of them have
        computed one more token (the shared prompt blocks counted once)."""
        w = self._width
        return w * (self._ctx_sum + num_decode) - (w - 1) * self._fork_tokens

    # ---- state changes ----

    def _decode_gaps(self, num_decode: int, end_s: float) -> tuple[float, int]:
        """Inter-token gaps of a decode step ending at ``end_s``: (the gap shared by the
        decodes that also ran in the previous decode step, how many they are). Requests
        that joined after a paused step get their own gap, recorded as extra samples."""
        if not num_decode:
            return 0.0, 0
        last = self._last_decode_end_s
        own = 0
        for joined_s in self._joined_s.values():
            if joined_s != last:  # its previous token was not at the last decode step
                self.recorder.itl_extra_s.append(end_s - joined_s)
                own += 1
        self._joined_s.clear()
        self._last_decode_end_s = end_s
        if last is None:
            return 0.0, 0  # nobody decoded before: all of them joined just now
        return end_s - last, num_decode - own

    def _decode_context(self, k: int) -> np.ndarray:
        """KV tokens the decoding requests attend to in each of the next ``k`` iterations
        (each request's cache plus its new token, capped by a sliding window)."""
        n = self._num_decoding
        if self._window is None:  # one call: float arange is exact on integers < 2^53
            return np.arange(self._ctx_sum + n, self._ctx_sum + n * k + 1, n, dtype=np.float64)
        steps = np.arange(1, k + 1, dtype=np.int64)
        total = self._ctx_sum + n * steps
        active = self._slot_active
        ctx_now = (self._slot_ctx0 + (self.decode_step - self._slot_it0))[active]
        over = np.maximum(0, ctx_now[:, None] + steps[None, :] - self._window)
        return (total - over.sum(axis=0)).astype(np.float64)

    def _kv_bytes(self, request: Request) -> float:
        return request.num_computed_tokens * self.cost.kv_bytes_per_token

    def _admit(self, request: Request, now: float) -> None:
        if self._waiting and self._waiting[0] is request:
            self._waiting.popleft()
        else:
            self._waiting.remove(request)
        self._running[request.request_id] = request
        self._prefilling[request.request_id] = request
        if request.swapped_blocks:  # swap back in; the plan allocated its device blocks
            self._host_blocks_free += request.swapped_blocks
            request.swapped_blocks = 0
            self._swap_bytes_pending += self._kv_bytes(request)
        elif self._cache is not None and request.prefix_id >= 0:
            hit = self._cache.hit_blocks(request.prefix_id, request.prefix_tokens,
                                         request.num_known_tokens)
            if hit:  # its first blocks are cached: reference them, skip their compute
                self.num_blocks_used += self._cache.acquire(request.prefix_id, hit)
                request.shared_blocks = request.num_blocks = hit
                self._num_shared += hit
                request.num_computed_tokens = hit * self._block
                request.prefix_hit_tokens += hit * self._block
        if math.isnan(request.first_scheduled_s):
            request.first_scheduled_s = now

    def _emit_after_prefill(self, request: Request, now: float) -> None:
        """A prefill (or recompute) finished: it emits one token."""
        if request.num_output_tokens == 0:
            request.first_token_s = now
        else:  # resumed after a preemption: the gap is one long inter-token latency
            self.recorder.itl_extra_s.append(now - request.last_token_s)
        request.num_output_tokens += 1
        request.last_token_s = now
        del self._prefilling[request.request_id]
        self._publish(request)
        target = self._targets[request.request_id]
        if request.num_output_tokens >= target:
            self._finish(request, now)
            return
        if self._on_prefilled is not None:
            self._send(request, target)
            return
        self._join_decode(request, target, now)

    def _join_decode(self, request: Request, target: int, now: float) -> None:
        """``request`` starts decoding the rest of its ``target`` output tokens."""
        slot = self._free_slots.pop()
        request.slot = slot
        self._joined_s[request.request_id] = now
        request.decode_it0 = self.decode_step
        ctx = request.num_computed_tokens
        self._slot_ctx0[slot] = ctx
        self._slot_it0[slot] = self.decode_step
        self._slot_active[slot] = True
        self._slot_fork[slot] = ctx // self._block
        self._fork_tokens += ctx // self._block * self._block
        self._ctx_sum += ctx
        self._num_decoding += 1
        last_it = self.decode_step + (target - request.num_output_tokens) - 1
        # Whole blocks reserved ahead (its beams' forked copies are not slack).
        slack = request.num_blocks - self._held_blocks(slot, ctx)
        if slack > 0:  # allocates nothing until it has filled them
            request.grow_it = self.decode_step + slack * self._block
            if request.grow_it <= last_it:
                heapq.heappush(self._grow_heap, (request.grow_it, request.request_id, request))
        else:
            request.grow_it = -1
            self._block_phase[(self.decode_step - ctx) % self._block] += 1
        request.decode_last_it = last_it
        heapq.heappush(self._finish_heap, (last_it, request.request_id, request))

    def _advance_decodes(self, num_decode: int) -> None:
        """The decodes computed one step: one token each."""
        self.decode_step += 1
        self._ctx_sum += num_decode

    def _sync(self, request: Request) -> None:
        """Bring a decoding request's counts up to the current decode step."""
        steps = self.decode_step - request.decode_it0
        request.num_output_tokens += steps
        request.num_computed_tokens += steps
        request.decode_it0 = self.decode_step
        request.num_blocks = max(request.num_blocks,
                                 self._held_blocks(request.slot, request.num_computed_tokens))

    def _stop_decoding(self, request: Request) -> None:
        self._sync(request)
        if request.grow_it < 0:  # it was allocating: leave the histogram
            ctx0 = int(self._slot_ctx0[request.slot])
            it0 = int(self._slot_it0[request.slot])
            self._block_phase[(it0 - ctx0) % self._block] -= 1
        request.grow_it = -1
        self._ctx_sum -= request.num_computed_tokens
        self._fork_tokens -= int(self._slot_fork[request.slot]) * self._block
        self._num_decoding -= 1
        self._slot_active[request.slot] = False
        self._free_slots.append(request.slot)
        request.slot = -1

    def _clean_heap(self) -> None:
        heap = self._finish_heap
        while heap and not _live(heap[0]):
            heapq.heappop(heap)

    def _finish_decodes(self, now: float) -> None:
        last_done = self.decode_step - 1
        heap = self._finish_heap
        while heap and heap[0][0] <= last_done:
            entry = heapq.heappop(heap)
            if _live(entry):
                request = entry[2]
                self._stop_decoding(request)
                self._finish(request, now)


    def _join_growing(self) -> None:
        """Decoding requests whose reservation is used up from this step on start
        allocating: they join the block-phase histogram (runs stop at this step)."""
        heap = self._grow_heap
        while heap and heap[0][0] <= self.decode_step:
            step, _, request = heapq.heappop(heap)
            if request.slot >= 0 and request.grow_it == step:
                assert step == self.decode_step
                request.grow_it = -1
                ctx0 = int(self._slot_ctx0[request.slot])
                it0 = int(self._slot_it0[request.slot])
                self._block_phase[(it0 - ctx0) % self._block] += 1

    def _publish(self, request: Request) -> None:
        """Offer ``request``'s computed blocks of its prefix content to the prefix cache
        (a session's output continues its content), and reference them from there."""
        cache = self._cache
        if cache is None or request.prefix_id < 0:
            return
        if request.prefix_tokens < request.prompt_tokens:
            content = request.prefix_tokens
        else:  # the whole prompt is shared content: the output continues it
            content = request.num_known_tokens
        blocks = min(content, request.num_computed_tokens) // self._block
        if blocks <= request.shared_blocks:
            return
        chain = request.prefix_id
        cache.extend(chain, blocks)
        unreferenced = cache.release(chain, request.shared_blocks)
        referenced = cache.acquire(chain, blocks)
        # Its own copies of blocks [shared, blocks) are now the cache's (or duplicates).
        self.num_blocks_used += referenced - unreferenced - (blocks - request.shared_blocks)
        self._num_shared += blocks - request.shared_blocks
        request.shared_blocks = blocks

    def _free_blocks(self, request: Request) -> None:
        """``request`` gives back its device blocks: its own are freed, its references to
        cached ones dropped (those stay cached, evictable once nobody references them)."""
        self.num_blocks_used -= request.num_blocks - request.shared_blocks
        if request.shared_blocks:
            assert self._cache is not None
            self.num_blocks_used -= self._cache.release(request.prefix_id,
                                                        request.shared_blocks)
            self._num_shared -= request.shared_blocks
            request.shared_blocks = 0
        request.num_blocks = 0

    def _kv_tokens_besides_decodes(self) -> int:
        """KV tokens held by running requests that are not decoding, plus the correction
        for shared prefix blocks (counted once, not per request)."""
        tokens = sum(r.num_computed_tokens for r in self._prefilling.values())
        if self._cache is not None:
            tokens += (self._cache.num_held_total() - self._num_shared) * self._block
        return tokens

    def _num_cached_blocks(self) -> int:
        return 0 if self._cache is None else self._cache.num_evictable

    def _evict_cached(self) -> None:
        """Evict unreferenced cached blocks (LRU) where allocation needs their room."""
        if self._cache is not None:
            excess = self.num_blocks_used + self._cache.num_evictable - self.num_kv_blocks
            if excess > 0:
                self._cache.evict(excess)

    def _finish(self, request: Request, now: float) -> None:
        del self._running[request.request_id]
        self._publish(request)
        self._free_blocks(request)
        output_tokens = self._targets.pop(request.request_id)
        self._predicted.pop(request.request_id, None)
        self._outstanding_prompt_tokens -= request.prompt_tokens
        assert request.num_output_tokens == output_tokens
        self.recorder.request_done(request, output_tokens, "finished", now)
        self.on_done(request)

    def _send(self, request: Request, output_tokens: int) -> None:
        """Prefill role: the request leaves for a decode replica; its blocks stay held
        until its KV has been sent (``release_sent``)."""
        assert self._on_prefilled is not None
        del self._running[request.request_id]
        self._predicted.pop(request.request_id, None)
        self._outstanding_prompt_tokens -= request.prompt_tokens
        self._sending[request.request_id] = request  # its target stays until released
        self._on_prefilled(self, request, output_tokens)

    def _preempt(self, victims: list[Request]) -> None:
        """Preempt: the KV goes to host memory (swap, while swap space lasts) or is dropped
        to be recomputed; the request goes back to the front of the queue."""
        now = self.env.now
        for request in victims:
            if request.slot >= 0:
                self._stop_decoding(request)
                self._joined_s.pop(request.request_id, None)
                request.last_token_s = now
            else:
                del self._prefilling[request.request_id]
            del self._running[request.request_id]
            self._publish(request)  # what it computed of its prefix stays cached
            if 0 < request.num_blocks <= self._host_blocks_free:  # swap out over PCIe
                self._host_blocks_free -= request.num_blocks
                request.swapped_blocks = request.num_blocks
                self._swap_bytes_pending += self._kv_bytes(request)
            else:
                request.num_recomputed_tokens += request.num_computed_tokens
                request.num_computed_tokens = 0
            self._free_blocks(request)
            request.num_preemptions += 1
        # Last admitted first in ``victims``; the earliest admitted ends at the front.
        self._waiting.extendleft(victims)

    def record_in_flight(self) -> None:
        """At the stop: every request still here is reported as in flight."""
        for request in list(self._running.values()):
            if request.slot >= 0:
                self._sync(request)
        for request in [*self._running.values(), *self._sending.values(), *self._waiting]:
            self.recorder.request_done(request, self._targets[request.request_id], "in_flight")

    def check_invariants(self) -> None:
        """KV accounting and decode totals agree with a from-scratch recount."""
        holders = [*self._running.values(), *self._sending.values()]
        own = sum(self.num_blocks_held(r) - r.shared_blocks for r in holders)
        shared = 0
        if self._cache is not None:
            self._cache.check()
            refs = sorted((r.prefix_id, r.shared_blocks) for r in holders if r.shared_blocks)
            assert refs == self._cache.references(), "prefix-cache references disagree"
            shared = self._cache.num_held_total()
            assert self._num_shared == sum(r.shared_blocks for r in holders)
            assert self.num_blocks_used + self._cache.num_evictable <= self.num_kv_blocks
        held = own + shared + self._decode_blocks_in_flight
        assert held == self.num_blocks_used, (held, self.num_blocks_used)
        assert 0 <= self.num_blocks_used <= self.num_kv_blocks
        decoding = [r for r in self._running.values() if r.slot >= 0]
        assert len(decoding) == self._num_decoding
        assert sum(self.num_computed(r) for r in decoding) == self._ctx_sum
        assert self._fork_tokens == sum(
            int(self._slot_fork[r.slot]) * self._block for r in decoding)
        assert not any(r.num_blocks for r in self._waiting)
        swapped = sum(r.swapped_blocks for r in self._waiting)
        assert swapped + self._host_blocks_free == self._num_host_blocks


def _live(entry: tuple[int, int, Request]) -> bool:
    """A finish-heap entry still describes its request (not preempted since)."""
    last_it, _, request = entry
    return request.slot >= 0 and request.decode_last_it == last_it


def _started_by(ends: np.ndarray, k: int, t: float) -> int:
    """How many of a run's first ``k`` iterations (ending at ``ends``) have started by
    time ``t``: those run as planned when a request arrives at ``t``; the next plan
    starts when the last of them ends."""
    return 1 + int(ends[: k - 1].searchsorted(t, side="right"))
