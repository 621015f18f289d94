"""Pipeline parallelism: stages as single-server queues, micro-batches in flight.

A pipeline-parallel replica splits the layers into ``p`` consecutive stages, each on its
own tensor-parallel group. As vLLM's virtual engines do, it runs ``p`` schedulers (each
a ``Replica`` with its own requests and 1/p of the KV blocks) whose batches travel the
stages in turn: a batch holds a stage while that stage computes its layers, then sends
its activations to the next. Stages serve batches in the order they entered (FIFO,
in-order), so a batch's path through the stages is booked when it enters: one event per
iteration, as for an unpipelined replica. Up to ``p`` batches are in flight, one per stage, so the
stages stay busy except for the bubbles left when batches differ in size or a
scheduler has nothing to run.

A batch's iteration time is the sum of its stages' compute, the sends between them and
its waits for stages held by other batches; the iteration frame records the waits and
sends (``pipeline_wait_s``, ``pipeline_transfer_s``) so the bubbles show.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from hardware.topology import Topology
from simulator.clock import on_grid
from simulator.cost import CostModel
from simulator.dtypes import BYTES_PER_ELEMENT

Proposer = Callable[[int, float, list[int], list[int]], tuple[float, float, float]]
"""(decoding sequences, their attended keys, prefill chunks, their cached tokens) ->
(seconds, flops, bytes) of a speculative proposer's work in one step."""


class Pipeline:
    """The stages of one replica, shared by its virtual engines.

    ``stages[i]`` prices stage i's layers (the first embeds, the last samples);
    ``overhead_s`` is the driver's CPU time per micro-batch, paid before it enters the
    first stage without holding any stage.
    """

    def __init__(self, env: simpy.Environment, stages: Sequence[CostModel], overhead_s: float,
                 topology: Topology) -> None:
        self.env = env
        self.stages = tuple(stages)
        self.free_at = [0.0] * len(self.stages)
        """When each stage finishes the last micro-batch booked on it (simulated s)."""
        self.overhead_s = on_grid(overhead_s)
        head = self.stages[0]
        # Stage i sits on devices [i * tp, (i + 1) * tp) of the replica, nodes filled in
        # order: a send crosses nodes when the two stages' first devices do.
        tp = head.tensor_parallel * head.attention_data_parallel
        per_node = topology.devices_per_node
        self._crosses = [(i * tp) // per_node != ((i + 1) * tp) // per_node
                         for i in range(len(self.stages) - 1)]
        # Hidden states and the residual go to the next stage, 16-bit, split over the
        # sending group's devices (vLLM sends each TP rank's share and all-gathers).
        act_bytes = BYTES_PER_ELEMENT["bf16"]
        self._send_bytes_per_token = 2 * head.model.hidden_size * act_bytes / tp
        self._topology = topology
        self.busy_s = [0.0] * len(self.stages)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def price(self, prefill_tokens: Sequence[int], prefill_context_tokens: Sequence[int],
              num_decode_seqs: int, decode_context_tokens: float,
              query_tokens: int = 1, proposer: Proposer | None = None
              ) -> tuple[list[float], float, float, float]:
        """(seconds per stage, seconds per send between stages, flops, hbm bytes) of one
        micro-batch; flops and bytes are summed over the stages (per device of each).

        With multi-token decoding each decoding sequence computes ``query_tokens``
        positions at every stage, and the ``proposer`` (speculative heads) runs on the last
        stage, where the hidden states it reads are."""
        stage_s = []
        flops = hbm = 0.0
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if query_tokens == 1:
                s, f, b = stage.iteration(prefill_tokens, prefill_context_tokens,
                                          num_decode_seqs, decode_context_tokens)
            else:
                s, f, b = stage.verify(num_decode_seqs, query_tokens, decode_context_tokens,
                                       prefill_tokens, prefill_context_tokens)
            if i == last and proposer is not None:
                ps, pf, pb = proposer(num_decode_seqs, decode_context_tokens,
                                      list(prefill_tokens), list(prefill_context_tokens))
                s, f, b = s + ps, f + pf, b + pb
            stage_s.append(on_grid(float(s)))
            flops += f
            hbm += b
        tokens = sum(prefill_tokens) + num_decode_seqs * query_tokens
        send_bytes = tokens * self._send_bytes_per_token
        send_s = max((float(self._topology.send_s(send_bytes, crosses))
                      for crosses in self._crosses), default=0.0)
        return stage_s, on_grid(send_s), flops, hbm

    def traverse(self, stage_s: Sequence[float], send_s: float
                 ) -> Generator[simpy.Event, Any, tuple[float, float]]:
        """Run one micro-batch through every stage; returns (seconds spent waiting for
        stages held by other micro-batches, seconds spent in sends between stages).

        Each stage serves micro-batches one at a time, in the order they entered the
        pipeline (an in-order pipeline: a later batch never overtakes an earlier one at
        a stage, as the ordered sends between stage workers ensure). So a batch's whole
        path is known when it enters, each stage's start being the later of its arrival
        and the stage's previous batch's end: the traversal is booked at once and takes
        one event, like an unpipelined iteration."""
        env = self.env
        arrive = env.now + self.overhead_s
        wait_s = transfer_s = 0.0
        free_at = self.free_at
        last = len(free_at) - 1
        for i, seconds in enumerate(stage_s):
            start = max(arrive, free_at[i])
            wait_s += start - arrive
            free_at[i] = end = start + seconds
            self.busy_s[i] += seconds
            arrive = end
            if i < last and send_s:
                arrive += send_s
                transfer_s += send_s
        yield env.timeout(arrive - env.now)
        return wait_s, transfer_s
