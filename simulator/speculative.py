"""A replica whose decodes keep several tokens per step: speculative and lookahead decoding.

The plain ``Replica`` derives every decoding request's progress from one step counter,
because each keeps exactly one token per step. Here each sequence keeps a number drawn
per step (``MultiTokenStep.draw``), so progress lives in per-slot numpy arrays updated
once per step for the whole batch (DESIGN.md: numpy where a per-sequence step is
unavoidable, as with speculative acceptance):

- ``_slot_ctx``: tokens in the KV cache (exact after every step);
- ``_slot_out``: output tokens emitted so far; ``_slot_target``: the true output length;
- ``_slot_blocks``: KV blocks held. A step computes ``query_tokens`` positions per
  sequence, so it first takes blocks for all of them (vLLM allocates the proposals'
  slots), and keeps them: the next step's positions reuse the room;
- ``_slot_rate``: the request's acceptance parameter (α).

Steps are never fast-forwarded (their lengths are random); one event per iteration.
"""

from __future__ import annotations

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
        self.fast_forward = False
        self._multi = step
        self._rng = rng
        n = self.max_num_seqs
        self._slot_request: list[Request | None] = [None] * n
        self._slot_ctx = np.zeros(n, dtype=np.int64)
        self._slot_out = np.zeros(n, dtype=np.int64)
        self._slot_target = np.zeros(n, dtype=np.int64)
        self._slot_blocks = np.zeros(n, dtype=np.int64)
        self._slot_rate = np.zeros(n, dtype=np.float64)
        self._kept: np.ndarray | None = None  # this step's draw, applied when it is done

    # ---- ReplicaView ----

    @property
    def decode_tokens_per_request(self) -> int:
        return self._multi.query_tokens

    def num_computed(self, request: Request) -> int:
        if request.slot >= 0:
            return int(self._slot_ctx[request.slot])
        return request.num_computed_tokens

    def num_blocks_held(self, request: Request) -> int:
        if request.slot >= 0:
            return int(self._slot_blocks[request.slot])
        return request.num_blocks

    def _step_need(self) -> np.ndarray:
        """Blocks each slot needs for its next step's positions (0 for free slots)."""
        positions = self._slot_ctx + self._multi.query_tokens
        need = -(-positions // self._block) - self._slot_blocks
        need[~self._slot_active] = 0
        return np.maximum(need, 0)

    def num_decode_blocks_needed(self) -> int:
        return int(self._step_need().sum()) if self._num_decoding else 0

    def decode_blocks(self, request: Request) -> int:
        return int(self._step_need()[request.slot])

    # ---- decoding ----

    def _join_decode(self, request: Request, target: int, now: float) -> None:
        slot = self._free_slots.pop()
        request.slot = slot
        self._joined_s[request.request_id] = now
        self._slot_request[slot] = request
        self._slot_active[slot] = True
        self._slot_ctx[slot] = request.num_computed_tokens
        self._slot_out[slot] = request.num_output_tokens
        self._slot_target[slot] = target
        self._slot_blocks[slot] = request.num_blocks
        self._slot_rate[slot] = self._multi.request_rate(request, self._rng)
        self._ctx_sum += request.num_computed_tokens
        self._num_decoding += 1

    def _draw(self, num_decode: int) -> None:
        """This step's kept tokens per active slot, drawn before it runs (they are
        applied when it ends) and recorded with it."""
        if not num_decode:
            self._kept, self._step_tokens = None, (0, 0)
            return
        active = np.flatnonzero(self._slot_active)
        left = self._slot_target[active] - self._slot_out[active]
        kept = np.minimum(self._multi.draw(self._rng, self._slot_rate[active]), left)
        self._kept = kept
        self._step_tokens = (int(kept.sum()), num_decode * self._multi.num_proposed)

    def _price_mixed(self, q: list[int], ctx: list[int], num_decode: int, attended: float
                     ) -> tuple[float, float, float]:
        self._draw(num_decode)
        return self._multi.price(num_decode, attended, q, ctx)

    def _price_decodes(self, num_decode: int, context: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert len(context) == 1, "multi-token steps are never fast-forwarded"
        self._draw(num_decode)
        s, f, b = self._multi.price(num_decode, float(context[0]), [], [])
        return np.array([s]), np.array([f]), np.array([b])

    def _decode_context(self, k: int) -> np.ndarray:
        """Keys the next step attends to, all decoding sequences together (each its
        cache plus its new token, capped by a sliding window)."""
        assert k == 1, "multi-token steps are never fast-forwarded"
        ctx = self._slot_ctx[self._slot_active] + 1
        if self._window is not None:
            ctx = np.minimum(ctx, self._window)
        return np.array([float(ctx.sum())])

    def _advance_decodes(self, num_decode: int) -> None:
        """Apply the drawn tokens: caches grow, blocks taken for the step are kept."""
        self.decode_step += 1
        kept = self._kept
        assert kept is not None
        active = np.flatnonzero(self._slot_active)
        positions = self._slot_ctx[active] + self._multi.query_tokens
        self._slot_blocks[active] = np.maximum(self._slot_blocks[active],
                                               -(-positions // self._block))
        self._slot_ctx[active] += kept
        self._slot_out[active] += kept
        self._ctx_sum += int(kept.sum())
        self._kept = None

    def _finish_decodes(self, now: float) -> None:
        done = np.flatnonzero(self._slot_active & (self._slot_out >= self._slot_target))
        for slot in done.tolist():
            request = self._slot_request[slot]
            assert request is not None
            self._stop_decoding(request)
            self._finish(request, now)

    def _sync(self, request: Request) -> None:
        slot = request.slot
        request.num_computed_tokens = int(self._slot_ctx[slot])
        request.num_output_tokens = int(self._slot_out[slot])
        request.num_blocks = max(request.num_blocks, int(self._slot_blocks[slot]))

    def _stop_decoding(self, request: Request) -> None:
        self._sync(request)
        slot = request.slot
        self._ctx_sum -= request.num_computed_tokens
        self._num_decoding -= 1
        self._slot_active[slot] = False
        self._slot_request[slot] = None
        self._slot_blocks[slot] = 0
        self._free_slots.append(slot)
        request.slot = -1
