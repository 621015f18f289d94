"""The cost of one iteration: a batch shape in, seconds (and FLOPs, bytes) out.

The cost model knows the model, the device and the parallel layout; it knows
nothing of queues or requests. ``CostModel.price`` returns a per-op breakdown for
people; the engine calls ``CostModel.iteration`` and ``CostModel.decode_run``, which
give the same numbers (a test holds them equal) with the shape-only part cached.

All numbers are per device of one tensor-parallel group: with TP=t each device holds
1/t of every weight matrix and of the attention heads, and runs two all-reduces per
layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.efficiency import EfficiencyProfile
from hardware.roofline import ZERO, OpCost, Scalar, all_gather_s, all_reduce_s, roofline_s
from hardware.spec import AcceleratorSpec
from simulator.dtypes import BYTES_PER_ELEMENT, ComputeDType, DType
from simulator.model import ModelSpec

_LOGIT_BYTES = 4  # fp32 logits


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What one iteration computes, as the cost model sees it.

    Invariant: ``len(prefill_tokens) == len(prefill_context_tokens)``.
    """

    prefill_tokens: Sequence[int] = ()
    """New tokens computed for each prefilling sequence (a whole prompt or a chunk)."""
    prefill_context_tokens: Sequence[int] = ()
    """Tokens already in the KV cache of each prefilling sequence (earlier chunks)."""
    num_decode_seqs: int = 0
    """Sequences computing exactly one new token."""
    decode_context_tokens: Scalar = 0
    """Sum over decode sequences of KV tokens attended, the new token included; an array
    prices a run of iterations that differ only in this."""

    @property
    def num_tokens(self) -> int:
        return int(sum(self.prefill_tokens)) + self.num_decode_seqs

    @property
    def num_seqs(self) -> int:
        return len(self.prefill_tokens) + self.num_decode_seqs


@dataclass(frozen=True, slots=True)
class IterationCost:
    """Seconds, FLOPs and HBM bytes of one iteration on one device, with the per-op parts."""

    seconds: Scalar
    flops: Scalar
    hbm_bytes: Scalar
    ops: dict[str, OpCost]


def compute_dtype_for(weight_dtype: DType, activation_dtype: DType) -> ComputeDType:
    """The tensor-core rate GEMMs run at: W8A8 uses the 8-bit rate, everything else
    (including weight-only int4/int8/fp8) computes in the activation dtype."""
    if weight_dtype in ("fp8", "int8") and activation_dtype == weight_dtype:
        return weight_dtype
    if activation_dtype in ("fp8", "int8", "int4"):
        return "bf16"
    return activation_dtype  # type: ignore[return-value]


@dataclass(slots=True)
class CostModel:
    """Prices iterations of ``model`` on ``tensor_parallel`` devices of ``accelerator``."""

    model: ModelSpec
    accelerator: AcceleratorSpec
    efficiency: EfficiencyProfile
    tensor_parallel: int = 1
    weight_dtype: DType = "bf16"
    activation_dtype: DType = "bf16"
    kv_cache_dtype: DType = "bf16"
    iteration_overhead_s: float = 0.0
    """CPU time per iteration the GPU waits for (scheduling, sampling, output processing)."""
    _token_cache: dict[int, tuple[float, float, float]] = field(
        default_factory=dict, init=False, repr=False
    )
    _seq_cache: dict[int, tuple[float, float, float]] = field(
        default_factory=dict, init=False, repr=False
    )
    _run_cache: dict[int, tuple[float, ...]] = field(default_factory=dict, init=False, repr=False)
    _prefill_constants: tuple[Any, ...] | None = field(default=None, init=False, repr=False)
    _decode_constants: tuple[int, float, float, float, float, float, float] | None = field(
        default=None, init=False, repr=False
    )

    # ---- derived constants ----

    @property
    def compute_dtype(self) -> ComputeDType:
        return compute_dtype_for(self.weight_dtype, self.activation_dtype)

    @property
    def _attention_dtype(self) -> ComputeDType:
        """Attention computes in the activation format; 8-bit activations feed GEMMs only."""
        act = self.activation_dtype
        return act if act in ("fp32", "bf16", "fp16") else "bf16"

    @property
    def _act_bytes(self) -> float:
        # 8-bit activation formats only feed GEMMs; the residual stream stays 16-bit.
        return BYTES_PER_ELEMENT[self.activation_dtype] if self.activation_dtype in (
            "fp32", "bf16", "fp16"
        ) else 2.0

    @property
    def _kv_heads_per_device(self) -> int:
        # With more devices than KV heads, each device keeps a replica of one KV head.
        return max(1, self.model.num_kv_heads // self.tensor_parallel)

    @property
    def _q_heads_per_device(self) -> int:
        return max(1, self.model.num_heads // self.tensor_parallel)

    @property
    def kv_bytes_per_token_layer(self) -> float:
        """KV bytes one token adds to one layer's cache on one device."""
        return (
            2 * self._kv_heads_per_device * self.model.head_dim
            * BYTES_PER_ELEMENT[self.kv_cache_dtype]
        )

    @property
    def kv_bytes_per_token(self) -> float:
        """KV bytes one token adds on one device, all layers."""
        return self.kv_bytes_per_token_layer * self.model.num_layers

    @property
    def _link_bytes_per_s(self) -> float:
        acc = self.accelerator
        if self.tensor_parallel <= acc.devices_per_node:
            return acc.intra_node_bytes_per_s
        return acc.network_bytes_per_s

    # ---- op classes ----

    def _gemm(self, m: Scalar, k: float, n: float, weight_bytes_per_elem: float) -> OpCost:
        flops = 2.0 * m * k * n
        hbm = k * n * weight_bytes_per_elem + (m * k + m * n) * self._act_bytes
        return self._gemm_like(flops, hbm, calls=1, m=m)

    def _gemm_like(self, flops: Scalar, hbm: Scalar, calls: int, m: Scalar = 0.0) -> OpCost:
        """Priced with the GEMM efficiencies of the compute dtype; ``calls`` kernel floors;
        ``m`` rows per call, for efficiencies that ramp up with M (0: unknown, flat)."""
        eff = self.efficiency.gemm_for(self.compute_dtype)
        compute_frac: Scalar = eff.compute_frac
        if eff.half_m and (isinstance(m, np.ndarray) or m > 0):
            compute_frac = eff.compute_frac * m / (m + eff.half_m)
        memory_frac = eff.memory_frac
        if eff.gemv_memory_frac is not None and not isinstance(m, np.ndarray) and m == 1:
            memory_frac = eff.gemv_memory_frac
        seconds = roofline_s(
            flops, hbm,
            peak_flops_per_s=self.accelerator.peak_flops_per_s(self.compute_dtype),
            compute_frac=compute_frac,
            hbm_bytes_per_s=self.accelerator.hbm_bytes_per_s,
            memory_frac=memory_frac,
            floor_s=calls * eff.floor_s,
        )
        if eff.small_m_factors and not isinstance(m, np.ndarray) and m > 0:
            seconds = seconds * eff.small_m_factor(m)
        return OpCost(seconds, flops, hbm)

    def _elementwise(self, hbm: Scalar, kernels: int) -> OpCost:
        eff = self.efficiency.elementwise
        seconds = kernels * eff.floor_s + hbm / (self.accelerator.hbm_bytes_per_s * eff.memory_frac)
        return OpCost(seconds, 0.0, hbm)

    def _all_reduce(self, message_bytes: float) -> OpCost:
        seconds = all_reduce_s(
            message_bytes,
            num_devices=self.tensor_parallel,
            link_bytes_per_s=self._link_bytes_per_s,
            eff=self.efficiency.collective,
        )
        return OpCost(seconds, 0.0, 0.0)

    def _mlp(self, num_tokens: int) -> OpCost:
        m, t = self.model, self.tensor_parallel
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        if not m.is_moe:
            up_width = (2 if m.gated_mlp else 1) * m.intermediate_size / t
            return self._gemm(num_tokens, m.hidden_size, up_width, wb) + self._gemm(
                num_tokens, m.intermediate_size / t, m.hidden_size, wb
            )
        return self._moe(num_tokens, wb)

    def _moe(self, num_tokens: int, wb: float) -> OpCost:
        """Routed experts read the weights of the experts their tokens activate: with
        uniform top-k routing, T tokens touch E(1 - (1 - k/E)^T) distinct experts."""
        m, t = self.model, self.tensor_parallel
        e, k = m.num_experts, m.num_experts_per_token
        expert_params = m.expert_params / t
        experts_touched = e * (1.0 - (1.0 - k / e) ** num_tokens)
        flops = 2.0 * num_tokens * k * expert_params
        act = num_tokens * k * (2 * m.hidden_size + m.mlp_matrices * m.expert_intermediate_size / t)
        hbm = experts_touched * expert_params * wb + act * self._act_bytes
        # Grouped up/gate and down GEMMs; rows per expert for efficiencies ramping with M.
        routed = self._gemm_like(flops, hbm, calls=2,
                                 m=num_tokens * k / max(experts_touched, 1e-9))
        router = self._gemm(num_tokens, m.hidden_size, e, BYTES_PER_ELEMENT["bf16"])
        total = routed + router
        if m.num_shared_experts:
            width = m.num_shared_experts * m.expert_intermediate_size / t
            up_width = (2 if m.gated_mlp else 1) * width
            total = total + self._gemm(num_tokens, m.hidden_size, up_width, wb)
            total = total + self._gemm(num_tokens, width, m.hidden_size, wb)
        return total

    def _token_part(self, num_tokens: int) -> dict[str, OpCost]:
        """Ops whose cost depends on the batch's token count only (all but attention)."""
        m, t = self.model, self.tensor_parallel
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        ab = self._act_bytes
        layers = m.num_layers
        qkv = self._gemm(num_tokens, m.hidden_size, (m.q_size + 2 * m.kv_size) / t, wb)
        o_proj = self._gemm(num_tokens, m.q_size / t, m.hidden_size, wb)
        mlp = self._mlp(num_tokens)
        mlp_width = (
            m.intermediate_size if not m.is_moe
            else m.num_experts_per_token * m.expert_intermediate_size
        ) / t
        elementwise_bytes = num_tokens * ab * (
            4 * m.hidden_size + 3 * mlp_width + 2 * (m.q_size + m.kv_size) / t
        )
        elementwise = self._elementwise(elementwise_bytes,
                                        self.efficiency.elementwise.kernels_per_layer)
        all_reduce = self._all_reduce(num_tokens * m.hidden_size * ab)
        return {
            "embedding": self._elementwise(num_tokens * m.hidden_size * ab, 1),
            "qkv_proj": qkv.scaled(layers),
            "o_proj": o_proj.scaled(layers),
            "moe" if m.is_moe else "mlp": mlp.scaled(layers),
            "elementwise": elementwise.scaled(layers),
            "tp_all_reduce": all_reduce.scaled(2 * layers),
        }

    def _seq_part(self, num_seqs: int) -> dict[str, OpCost]:
        """Ops on the sampled positions, one per sequence: LM head, logits, sampling."""
        m, t = self.model, self.tensor_parallel
        # The LM head stays 16-bit under weight quantisation, as engines keep it.
        lm_head = self._gemm(num_seqs, m.hidden_size, m.vocab_size / t, BYTES_PER_ELEMENT["bf16"])
        logits_bytes = num_seqs * m.vocab_size * _LOGIT_BYTES
        gather = all_gather_s(
            logits_bytes,
            num_devices=t,
            link_bytes_per_s=self._link_bytes_per_s,
            eff=self.efficiency.collective,
        )
        return {
            "lm_head": lm_head,
            "logits_gather": OpCost(gather, 0.0, 0.0),
            "sampling": self._elementwise(2 * logits_bytes, 1),
        }

    def _prefill_attention(self, q: Sequence[int], ctx: Sequence[int]) -> OpCost:
        """Causal attention of ``q[i]`` new tokens after ``ctx[i]`` cached ones, all
        prefilling sequences in one varlen call. A plain loop: a batch holds few of them."""
        if not q:
            return ZERO
        c = self._prefill_constants
        if c is None:
            c = self._prefill_constants = self._make_prefill_constants()
        (layers, flops_per_key, peak_frac, half_tokens, kv_token, qo_token, s_per_byte,
         floor_s, window, per_seq_s) = c
        compute_s = flops = hbm = 0.0
        for new, cached in zip(q, ctx, strict=True):
            attended = cached + (new + 1) / 2.0  # mean keys per query under the causal mask
            kept = cached + new
            if window is not None:
                attended = min(attended, window)
                kept = min(kept, window)
            f = flops_per_key * new * attended
            size = math.sqrt(new * (new + cached))  # tile-occupancy length; q with no prefix
            compute_s += f * (size + half_tokens) / (peak_frac * size)
            flops += f
            hbm += kept * kv_token + new * qo_token
        seconds = floor_s + per_seq_s * len(q) + max(compute_s, hbm * s_per_byte)
        return OpCost(seconds * layers, flops * layers, hbm * layers)

    def _make_prefill_constants(self) -> tuple[Any, ...]:
        # Hoisted out of the hot path: every iteration with a prefill prices this.
        eff = self.efficiency.prefill_attention
        hd, hq = self.model.head_dim, self._q_heads_per_device
        return (
            self.model.num_layers,
            4.0 * hd * hq,
            self.accelerator.peak_flops_per_s(self._attention_dtype) * eff.max_compute_frac,
            eff.half_tokens,
            self.kv_bytes_per_token_layer,
            2 * hq * hd * self._act_bytes,
            1.0 / (self.accelerator.hbm_bytes_per_s * eff.memory_frac),
            eff.floor_s,
            self.model.sliding_window_tokens,
            eff.per_sequence_s,
        )

    def _decode_attention(self, num_seqs: int, context_tokens: Scalar) -> OpCost:
        """One new token per sequence over ``context_tokens`` cached keys in total."""
        if num_seqs == 0:
            return ZERO
        c = self._decode_constants
        if c is None:
            c = self._decode_constants = self._make_decode_constants()
        layers, flops_per_key, bytes_per_key, bytes_per_seq, s_per_flop, s_per_byte, floor_s = c
        floor_s += num_seqs * self.efficiency.decode_attention.per_sequence_s
        flops = context_tokens * flops_per_key
        hbm = context_tokens * bytes_per_key + num_seqs * bytes_per_seq
        if isinstance(context_tokens, np.ndarray):
            seconds = floor_s + np.maximum(flops * s_per_flop, hbm * s_per_byte)
        else:
            seconds = floor_s + max(flops * s_per_flop, hbm * s_per_byte)
        return OpCost(seconds * layers, flops * layers, hbm * layers)

    def _make_decode_constants(self) -> tuple[int, float, float, float, float, float, float]:
        # Hoisted out of the hot path: the engine prices a decode run per event.
        eff = self.efficiency.decode_attention
        hd, hq = self.model.head_dim, self._q_heads_per_device
        return (
            self.model.num_layers,
            4.0 * hd * hq,
            self.kv_bytes_per_token_layer,
            2.0 * hq * hd * self._act_bytes,
            1.0 / (self.accelerator.peak_flops_per_s(self._attention_dtype) * eff.compute_frac),
            1.0 / (self.accelerator.hbm_bytes_per_s * eff.memory_frac),
            eff.floor_s,
        )

    # ---- public pricing ----

    def price(self, shape: BatchShape) -> IterationCost:
        """Per-op breakdown of one iteration (or of a run, when decode context is an array).

        Does not mutate the model. The breakdown's seconds add up to ``seconds``.
        """
        q = [int(n) for n in shape.prefill_tokens]
        ctx = [int(n) for n in shape.prefill_context_tokens]
        if len(q) != len(ctx):
            raise ValueError(
                f"prefill_tokens has {len(q)} entries but prefill_context_tokens has {len(ctx)}"
            )
        if shape.num_tokens == 0:
            raise ValueError("an iteration must compute at least one token")
        ops = {**self._token_part(shape.num_tokens), **self._seq_part(shape.num_seqs)}
        ops["attention_prefill"] = self._prefill_attention(q, ctx)
        ops["attention_decode"] = self._decode_attention(
            shape.num_decode_seqs, shape.decode_context_tokens
        )
        ops["engine_overhead"] = OpCost(self.iteration_overhead_s, 0.0, 0.0)
        total = ZERO
        for op in ops.values():
            total = total + op
        return IterationCost(total.seconds, total.flops, total.hbm_bytes, ops)

    def swap_s(self, num_bytes: float) -> float:
        """Seconds to copy ``num_bytes`` of KV between device and host memory over PCIe."""
        if num_bytes <= 0:
            return 0.0
        eff = self.efficiency.host_link
        link_bytes_per_s = self.accelerator.pcie_gb_per_s * 1e9 * eff.bandwidth_frac
        return eff.latency_s + num_bytes / link_bytes_per_s

    def _shape_totals(self, num_tokens: int, num_seqs: int) -> tuple[float, float, float]:
        """Seconds, flops, bytes of everything but attention, cached by token and by
        sequence count (a run of similar batches prices in a dict lookup)."""
        cached = self._token_cache.get(num_tokens)
        if cached is None:
            cached = self._token_cache[num_tokens] = _sum_ops(self._token_part(num_tokens))
        per_seq = self._seq_cache.get(num_seqs)
        if per_seq is None:
            per_seq = self._seq_cache[num_seqs] = _sum_ops(self._seq_part(num_seqs))
        return cached[0] + per_seq[0], cached[1] + per_seq[1], cached[2] + per_seq[2]

    def iteration(
        self,
        prefill_tokens: Sequence[int],
        prefill_context_tokens: Sequence[int],
        num_decode_seqs: int,
        decode_context_tokens: float,
    ) -> tuple[float, float, float]:
        """(seconds, flops, hbm_bytes) of one iteration; the engine's fast path for
        ``price`` (same numbers up to float rounding)."""
        num_tokens = sum(prefill_tokens) + num_decode_seqs
        num_seqs = len(prefill_tokens) + num_decode_seqs
        seconds, flops, hbm = self._shape_totals(num_tokens, num_seqs)
        attn = self._prefill_attention(prefill_tokens, prefill_context_tokens) + (
            self._decode_attention(num_decode_seqs, decode_context_tokens)
        )
        return (
            seconds + float(attn.seconds) + self.iteration_overhead_s,
            flops + float(attn.flops),
            hbm + float(attn.hbm_bytes),
        )

    def decode_run(
        self, num_decode_seqs: int, decode_context_tokens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-iteration (seconds, flops, hbm_bytes) of decode-only iterations that differ
        only in the attended context; arrays shaped like ``decode_context_tokens``.

        The same numbers as ``price`` up to float rounding, with the constants folded so
        a run costs a handful of numpy calls (the engine's hottest path)."""
        coeffs = self._run_cache.get(num_decode_seqs)
        if coeffs is None:
            coeffs = self._run_cache[num_decode_seqs] = self._run_coefficients(num_decode_seqs)
        s_per_key_compute, s_per_key_memory, s_memory_fixed, s_fixed, f_per_key, f_fixed, \
            b_per_key, b_fixed = coeffs
        ctx = decode_context_tokens
        seconds = np.maximum(ctx * s_per_key_compute, ctx * s_per_key_memory + s_memory_fixed)
        seconds += s_fixed
        flops = ctx * f_per_key
        flops += f_fixed
        hbm = ctx * b_per_key
        hbm += b_fixed
        return seconds, flops, hbm

    def _run_coefficients(self, n: int) -> tuple[float, ...]:
        """decode_run's affine pieces: seconds = fixed + max(a * ctx, b * ctx + c), etc."""
        dense_s, dense_f, dense_b = self._shape_totals(n, n)
        c = self._decode_constants
        if c is None:
            c = self._decode_constants = self._make_decode_constants()
        layers, flops_per_key, bytes_per_key, bytes_per_seq, s_per_flop, s_per_byte, floor_s = c
        return (
            layers * flops_per_key * s_per_flop,
            layers * bytes_per_key * s_per_byte,
            layers * n * bytes_per_seq * s_per_byte,
            dense_s + layers * (floor_s + n * self.efficiency.decode_attention.per_sequence_s)
            + self.iteration_overhead_s,
            layers * flops_per_key,
            dense_f,
            layers * bytes_per_key,
            dense_b + layers * n * bytes_per_seq,
        )


def _sum_ops(ops: dict[str, OpCost]) -> tuple[float, float, float]:
    total = ZERO
    for op in ops.values():
        total = total + op
    return float(total.seconds), float(total.flops), float(total.hbm_bytes)
