"""A replica whose decodes keep several tokens per step: speculative and lookahead decoding.

The plain ``Replica`` derives every decoding request's progress from one step counter,
because each keeps exactly one token per step. Here each sequence keeps a number drawn
per step (``MultiTokenStep.draw``). So that runs of steps can still be advanced in one
event, identically to stepping, a request draws its whole schedule when it starts
decoding: the tokens it keeps at each of its steps until its output is done (its draws
depend on nothing else, so stepping and runs read the same numbers). From the schedule:

- ``_cum[slot]``: tokens kept after each of its steps (the last equals what it had
  left to emit), so its progress at any decode step is a lookup, its last step is known
  (the finish heap works as for one token per step), and
- two ring buffers over decode steps hold, summed over the decoding requests, the tokens
  kept (``_kept``) and the KV blocks newly taken (``_new_blocks``) at each future step:
  what a run needs, as the phase histogram gives it for one token per step. A step
  takes blocks for all ``query_tokens`` positions it computes (vLLM allocates the
  proposals' slots) and keeps them for the next step's positions.

A request that stops decoding (finished or preempted) takes its remaining schedule out
of the rings; a preempted one draws a new schedule when it decodes again.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from simulator.decoding import MultiTokenStep
from simulator.replica import Replica
from simulator.request import Request


class SpeculativeReplica(Replica):
    """A ``Replica`` decoding with a ``MultiTokenStep`` (created by the cluster)."""

    def __init__(self, *args: Any, step: MultiTokenStep, rng: np.random.Generator,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._multi = step
        self._rng = rng
        # Ring buffers over decode steps; a schedule is at most max_model_len steps long.
        self._ring = 1 << int(self._max_model_len + 2).bit_length()
        self._kept = np.zeros(self._ring, dtype=np.int64)
        self._new_blocks = np.zeros(self._ring, dtype=np.int64)
        n = self.max_num_seqs
        self._cum: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
        self._blocks_after: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
        self._slot_out0 = np.zeros(n, dtype=np.int64)
        self._slot_blocks0 = np.zeros(n, dtype=np.int64)

    # ---- a decoding request's progress, from its schedule ----

    def _done_steps(self, slot: int) -> int:
        return self.decode_step - int(self._slot_it0[slot])

    def _kept_after(self, slot: int, steps: int) -> int:
        return int(self._cum[slot][steps - 1]) if steps > 0 else 0

    def _blocks_at(self, slot: int, steps: int) -> int:
        return int(self._blocks_after[slot][steps - 1]) if steps > 0 else int(
            self._slot_blocks0[slot])

    # ---- ReplicaView ----

    @property
    def decode_tokens_per_request(self) -> int:
        return self._multi.query_tokens

    def num_computed(self, request: Request) -> int:
        if request.slot >= 0:
            slot = request.slot
            return int(self._slot_ctx0[slot]) + self._kept_after(slot, self._done_steps(slot))
        return request.num_computed_tokens

    def num_blocks_held(self, request: Request) -> int:
        if request.slot >= 0:
            return self._blocks_at(request.slot, self._done_steps(request.slot))
        return request.num_blocks

    def num_decode_blocks_needed(self) -> int:
        return int(self._new_blocks[self.decode_step % self._ring])

    def decode_blocks(self, request: Request) -> int:
        slot = request.slot
        done = self._done_steps(slot)
        return self._blocks_at(slot, done + 1) - self._blocks_at(slot, done)

    # ---- joining and leaving ----

    def _join_decode(self, request: Request, target: int, now: float) -> None:
        slot = self._free_slots.pop()
        request.slot = slot
        self._joined_s[request.request_id] = now
        ctx, blocks = request.num_computed_tokens, request.num_blocks
        self._slot_active[slot] = True
        self._slot_ctx0[slot] = ctx
        self._slot_it0[slot] = self.decode_step
        self._slot_out0[slot] = request.num_output_tokens
        self._slot_blocks0[slot] = blocks
        left = target - request.num_output_tokens
        # Draw steps until the output is done: at least one token each, so at most
        # `left` of them.
        rate = self._multi.request_rate(request, self._rng)
        cum = np.cumsum(self._multi.draw(self._rng, np.full(left, rate)))
        cum = cum[: int(cum.searchsorted(left)) + 1]
        cum[-1] = left
        before = np.concatenate(([0], cum[:-1]))  # kept before each step
        taken = -(-(ctx + before + self._multi.query_tokens) // self._block)
        blocks_after = np.maximum.accumulate(np.maximum(taken, blocks))
        self._cum[slot], self._blocks_after[slot] = cum, blocks_after
        self._add_to_rings(slot, 0, +1)
        self._ctx_sum += ctx
        self._num_decoding += 1
        request.grow_it = -1
        request.decode_it0 = self.decode_step
        request.decode_last_it = self.decode_step + len(cum) - 1
        self._push_finish(request)

    def _push_finish(self, request: Request) -> None:
        heapq.heappush(self._finish_heap, (request.decode_last_it, request.request_id, request))

    def _add_to_rings(self, slot: int, from_step: int, sign: int) -> None:
        """Add (+1) or take out (-1) the slot's schedule from its step ``from_step`` on."""
        cum, blocks = self._cum[slot], self._blocks_after[slot]
        if from_step >= len(cum):
            return
        kept = np.diff(cum, prepend=0)[from_step:]
        new = np.diff(blocks, prepend=self._slot_blocks0[slot])[from_step:]
        at = (int(self._slot_it0[slot]) + from_step + np.arange(len(kept))) % self._ring
        np.add.at(self._kept, at, sign * kept)
        np.add.at(self._new_blocks, at, sign * new)

    def _sync(self, request: Request) -> None:
        slot = request.slot
        done = self._done_steps(slot)
        kept = self._kept_after(slot, done)
        request.num_computed_tokens = int(self._slot_ctx0[slot]) + kept
        request.num_output_tokens = int(self._slot_out0[slot]) + kept
        request.num_blocks = max(request.num_blocks, self._blocks_at(slot, done))
        request.decode_it0 = self.decode_step

    def _stop_decoding(self, request: Request) -> None:
        slot = request.slot
        self._add_to_rings(slot, self._done_steps(slot), -1)
        self._sync(request)
        self._ctx_sum -= request.num_computed_tokens
        self._num_decoding -= 1
        self._slot_active[slot] = False
        self._cum[slot] = self._blocks_after[slot] = np.zeros(0, dtype=np.int64)
        self._free_slots.append(slot)
        request.slot = -1

    # ---- steps and runs ----

    def _advance_decodes(self, num_decode: int) -> None:
        self._advance_run(1)

    def _advance_run(self, k: int) -> None:
        at = (self.decode_step + np.arange(k)) % self._ring
        self._ctx_sum += int(self._kept[at].sum())
        self._kept[at] = 0  # consumed: the ring slot serves a later step
        self._new_blocks[at] = 0
        self.decode_step += k

    def _run_new_blocks(self, step0: int, k: int) -> tuple[np.ndarray, int]:
        new = self._new_blocks[(step0 + np.arange(k)) % self._ring]
        return new, int(new.sum())

    def _step_kept(self, k: int) -> np.ndarray:
        return self._kept[(self.decode_step + np.arange(k)) % self._ring]

    def _run_kv_tokens(self, k: int) -> np.ndarray:
        return self._ctx_sum + np.cumsum(self._step_kept(k))

    def _decode_kv_tokens(self, num_decode: int) -> int:
        return self._ctx_sum + (int(self._step_kept(1)[0]) if num_decode else 0)

    def _run_token_counts(self, k: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return (("num_accepted_tokens", "num_proposed_tokens"),
                (self._step_kept(k), self._num_decoding * self._multi.num_proposed))

    def _step_token_counts(self, num_decode: int) -> tuple[int, int]:
        if not num_decode:
            return 0, 0
        return int(self._step_kept(1)[0]), num_decode * self._multi.num_proposed

    def _decode_context(self, k: int) -> np.ndarray:
        """Keys the decodes attend to at each of the next ``k`` steps: each sequence's
        cache plus its new token, capped by a sliding window."""
        n = self._num_decoding
        before = np.concatenate(([0], np.cumsum(self._step_kept(k))[:-1]))
        total = (self._ctx_sum + n + before).astype(np.float64)
        if self._window is None:
            return total
        over = np.zeros(k)
        for slot in np.flatnonzero(self._slot_active).tolist():
            done = self._done_steps(slot)
            cum = np.concatenate(([0], self._cum[slot]))
            steps = np.minimum(done + np.arange(k), len(cum) - 1)
            ctx = self._slot_ctx0[slot] + cum[steps] + 1
            over += np.maximum(0, ctx - self._window)
        return total - over

    def _price_mixed(self, q: list[int], ctx: list[int], num_decode: int, attended: float
                     ) -> tuple[float, float, float]:
        return self._multi.price(num_decode, attended, q, ctx)

    def _price_pipeline(self, q: list[int], ctx: list[int], num_decode: int, attended: float
                        ) -> tuple[list[float], float, float, float]:
        assert self._pipeline is not None
        return self._pipeline.price(q, ctx, num_decode, attended, self._multi.query_tokens,
                                    self._multi.propose)

    def _price_decodes(self, num_decode: int, context: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._multi.price_run(num_decode, context)
