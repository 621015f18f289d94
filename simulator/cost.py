"""The cost of one iteration: a batch shape in, seconds (and FLOPs, bytes) out.

The cost model knows the model, the device and the parallel layout; it knows
nothing of queues or requests. ``CostModel.price`` returns a per-op breakdown for
people; the engine calls ``CostModel.iteration`` and ``CostModel.decode_run``, which
give the same numbers (a test holds them equal) with the shape-only part cached.

All numbers are per device of one tensor-parallel group: with TP=t each device holds
1/t of every weight matrix and of the attention heads, and runs two all-reduces per
layer. With attention data parallelism (d ranks of t devices) the numbers are those of
one device of one rank, ranks assumed balanced; MoE layers then span all t x d devices
(see ``CostModel``).

Each kind of layer is priced by how many of it lie in ``CostModel.layer_range`` (one
pipeline stage; the whole model by default): attention layers (GQA/MQA, or MLA with its
latent cache and absorbed decode), recurrent layers (projections plus a constant-size
state scan, ``simulator.recurrent``), dense MLPs and MoE blocks. docs/models.md says what
each family's numbers include.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hardware.efficiency import EfficiencyProfile
from hardware.roofline import ZERO, OpCost, Scalar, roofline_s
from hardware.spec import AcceleratorSpec
from hardware.topology import Topology
from simulator.dtypes import BYTES_PER_ELEMENT, ComputeDType, DType
from simulator.model import LayerCounts, ModelSpec
from simulator.moe import (
    ExpertLoadConfig,
    UniformExpertLoad,
    check_expert_load,
    device_pair_shares,
    expert_token_probs,
    experts_touched,
    max_experts_touched,
)

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
    """Prices iterations of ``model`` on ``tensor_parallel`` devices of ``accelerator``.

    With ``attention_data_parallel`` = d > 1 a replica has t x d devices per pipeline
    stage: d ranks of ``tensor_parallel`` = t devices. Embedding, attention, dense
    projections and MLPs, norms, the LM head and sampling run per rank, on 1/d of the
    batch's tokens, sequences and KV (the ranks are assumed balanced: each gets exactly
    1/d of the work, so the numbers are those of an average rank). MoE layers see the
    whole batch's tokens across all t x d devices: with ``expert_parallel`` each device
    holds num_experts / (t x d) whole experts, with an all-to-all dispatch and combine
    per MoE layer, and the busiest device under ``expert_load`` sets the pace; without,
    every expert is split t x d ways (expert TP), with the TP all-reduce (d = 1) or an
    all-gather and a reduce-scatter over the t x d devices (d > 1). docs/parallelism.md
    gives the formulas.
    """

    model: ModelSpec
    accelerator: AcceleratorSpec
    efficiency: EfficiencyProfile
    tensor_parallel: int = 1
    weight_dtype: DType = "bf16"
    activation_dtype: DType = "bf16"
    kv_cache_dtype: DType = "bf16"
    iteration_overhead_s: float = 0.0
    """CPU time per iteration the GPU waits for (scheduling, sampling, output processing)."""
    layer_range: tuple[int, int] | None = None
    """Layers [start, end) this cost model prices: one pipeline stage's. The embedding is
    priced only on the stage holding layer 0, the LM head, logits gather and sampling only
    on the stage holding the last layer. None: the whole model."""
    state_dtype: DType = "bf16"
    """Element format of the recurrent layers' state (conv and SSM states): vLLM keeps them
    in the model's dtype (``mamba_cache_dtype='auto'``); 'fp32' is its
    ``--mamba-ssm-cache-dtype float32``. Unused without recurrent layers."""
    topology: Topology | None = None
    """Nodes and links the replica's devices sit on; None: ``Topology.from_accelerator``.
    Collectives are priced with ``efficiency.collective`` whatever the topology carries."""
    attention_data_parallel: int = 1
    """Data-parallel attention ranks (d) sharing the MoE layers; 1: none."""
    expert_parallel: bool = False
    """Shard experts over the t x d devices (all-to-all) instead of splitting each (TP)."""
    expert_load: ExpertLoadConfig = field(default_factory=UniformExpertLoad)
    """How routed tokens spread over experts (``simulator.moe``)."""
    _topo: Topology = field(init=False, repr=False, compare=False)
    _moe_probs: Any = field(default=None, init=False, repr=False, compare=False)
    """Chance one token activates each expert: [device, local expert] under expert
    parallelism; [expert] under expert TP, None there for uniform routing (closed form)."""
    _moe_busy_share: float = field(default=1.0, init=False, repr=False, compare=False)
    """The busiest expert-parallel device's share of the routed token-expert pairs."""
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
    _layer_counts: LayerCounts | None = field(default=None, init=False, repr=False,
                                              compare=False)
    _recurrent_constants: tuple[float, ...] | None = field(default=None, init=False, repr=False,
                                                           compare=False)

    def __post_init__(self) -> None:
        """Resolve the topology and the routing; reject layouts the model cannot take."""
        topology = self.topology or Topology.from_accelerator(self.accelerator)
        if topology.efficiency != self.efficiency.collective:
            topology = replace(topology, efficiency=self.efficiency.collective)
        self._topo = topology
        m, d = self.model, self.attention_data_parallel
        if d < 1:
            raise ValueError(f"attention_data_parallel={d} must be at least 1")
        check_expert_load(self.expert_load, m.num_experts, m.name)
        if not m.is_moe:
            return  # expert_parallel and routing mean nothing to a dense model (as in vLLM)
        n = self.tensor_parallel * d
        if self.expert_parallel and m.num_experts % n:
            raise ValueError(
                f"expert_parallel shards {m.name}'s num_experts={m.num_experts} over "
                f"tensor_parallel x attention_data_parallel = {self.tensor_parallel} x {d} = "
                f"{n} devices, which does not divide it; choose a layout whose device count "
                f"divides {m.num_experts}, or turn expert_parallel off"
            )
        e, k = m.num_experts, m.num_experts_per_token
        if self.expert_parallel:
            self._moe_busy_share = float(device_pair_shares(self.expert_load, e, k, n).max())
            self._moe_probs = expert_token_probs(self.expert_load, e, k).reshape(n, e // n)
        elif not self._uniform_routing:
            self._moe_probs = expert_token_probs(self.expert_load, e, k)

    # ---- derived constants ----

    @property
    def _uniform_routing(self) -> bool:
        return isinstance(self.expert_load, UniformExpertLoad)

    @property
    def _moe_devices(self) -> int:
        """Devices an MoE layer spans: every rank's tensor-parallel group."""
        return self.tensor_parallel * self.attention_data_parallel

    def _rank_share(self, count: float) -> float:
        """One attention-data-parallel rank's share of a batch count (balanced ranks)."""
        d = self.attention_data_parallel
        return count if d == 1 else count / d

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
        """KV bytes one token adds to one attention layer's cache on one device. MLA keeps
        one latent (kv_lora_rank + qk_rope_head_dim), whole on every tensor-parallel
        device, as vLLM does (hence DeepSeek deployments' data-parallel attention)."""
        kv_bytes = BYTES_PER_ELEMENT[self.kv_cache_dtype]
        if self.model.is_mla:
            return self.model.kv_latent_size * kv_bytes
        return 2 * self._kv_heads_per_device * self.model.head_dim * kv_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """KV bytes one token adds on one device, the attention layers in range (0 for a
        model without attention layers)."""
        return self.kv_bytes_per_token_layer * self._layers.num_attention

    @property
    def _state_bytes_per_layer(self) -> float:
        """One sequence's recurrent state (conv + SSM) in one recurrent layer, one device:
        split by tensor parallelism like the heads and channels it belongs to."""
        m = self.model
        if m.recurrent is None:
            return 0.0
        elements = m.recurrent.state_elements(m.hidden_size)
        return elements / self.tensor_parallel * BYTES_PER_ELEMENT[self.state_dtype]

    @property
    def state_bytes_per_seq(self) -> float:
        """Recurrent state one sequence keeps on one device, the recurrent layers in range,
        whatever its length (0 without recurrent layers)."""
        return self._state_bytes_per_layer * self._layers.num_recurrent

    @property
    def _layers(self) -> LayerCounts:
        """How many layers of each kind this cost model prices (``layer_range``)."""
        counts = self._layer_counts
        if counts is None:
            n = self.model.num_layers
            start, end = self.layer_range or (0, n)
            if not 0 <= start < end <= n:
                raise ValueError(f"layer_range=({start}, {end}) is not a non-empty range of "
                                 f"{self.model.name}'s {n} layers [0, {n})")
            counts = self._layer_counts = self.model.layer_counts(start, end)
        return counts

    @property
    def _has_first_layer(self) -> bool:
        """Whether this stage embeds the tokens (it holds layer 0)."""
        return self.layer_range is None or self.layer_range[0] == 0

    @property
    def _has_last_layer(self) -> bool:
        """Whether this stage computes logits and samples (it holds the last layer)."""
        return self.layer_range is None or self.layer_range[1] == self.model.num_layers

    @property
    def _link_bytes_per_s(self) -> float:
        """Nominal rate of the slowest link the tensor-parallel group uses."""
        return self._topo.link_bytes_per_s(self.tensor_parallel)

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
        """The tensor-parallel group's all-reduce, priced where its devices sit (a group
        wider than a node pays the network)."""
        seconds = self._topo.all_reduce_s(message_bytes, self.tensor_parallel)
        return OpCost(seconds, 0.0, 0.0)

    def _mlp(self, num_tokens: int) -> OpCost:
        """One dense MLP layer for a batch of ``num_tokens``: it runs per attention rank, on
        its share of the tokens (MoE layers take the whole batch: ``_moe``)."""
        m, t = self.model, self.tensor_parallel
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        rows = self._rank_share(num_tokens)
        up_width = (2 if m.gated_mlp else 1) * m.intermediate_size / t
        return self._gemm(rows, m.hidden_size, up_width, wb) + self._gemm(
            rows, m.intermediate_size / t, m.hidden_size, wb
        )

    def _qkv_proj(self, rows: Scalar) -> OpCost:
        """One attention layer's input projections for ``rows`` tokens. MLA: q_a_proj and
        kv_a_proj_with_mqa replicated on every device (as vLLM runs them), q_b_proj and
        kv_b_proj split by heads. kv_b_proj runs once per new token: in prefill it expands
        the new tokens' latents to K and V; in decode its two halves are absorbed into the
        query and the output (the same FLOPs and weight bytes)."""
        m, t = self.model, self.tensor_parallel
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        h = m.hidden_size
        if not m.is_mla:
            q_width = 2 * m.q_size if m.attn_output_gate else m.q_size
            return self._gemm(rows, h, (q_width + 2 * m.kv_size) / t, wb)
        assert m.kv_lora_rank and m.qk_nope_head_dim and m.v_head_dim
        if m.q_lora_rank:
            q = self._gemm(rows, h, m.q_lora_rank, wb) + self._gemm(
                rows, m.q_lora_rank, m.q_size / t, wb)
        else:
            q = self._gemm(rows, h, m.q_size / t, wb)
        kv_a = self._gemm(rows, h, m.kv_latent_size, wb)
        kv_b = self._gemm(rows, m.kv_lora_rank,
                          m.num_heads * (m.qk_nope_head_dim + m.v_head_dim) / t, wb)
        return q + kv_a + kv_b

    def _recurrent_proj(self, rows: Scalar) -> OpCost:
        """One recurrent layer's projections (``RecurrentMixer.gemm_shapes``), split by
        tensor parallelism along the dimension vLLM splits."""
        m, t = self.model, self.tensor_parallel
        assert m.recurrent is not None
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        total = ZERO
        for k, n, split in m.recurrent.gemm_shapes(m.hidden_size):
            total = total + (self._gemm(rows, k, n / t, wb) if split == "n"
                             else self._gemm(rows, k / t, n, wb))
        return total

    def _moe(self, num_tokens: int, wb: float) -> OpCost:
        """One MoE layer's routed experts (on the busiest device), router and shared experts,
        for all ``num_tokens`` = T tokens of the batch.

        Routed experts read the weights of the experts their tokens activate: with uniform
        top-k routing T tokens touch E(1 - (1 - k/E)^T) distinct experts, otherwise
        sum_e 1 - (1 - p_e)^T, p_e the chance that a token picks expert e (``simulator.moe``).
        Expert TP: each of the n = t x d devices holds 1/n of every expert and runs all T k
        token-expert pairs through its slices. Expert parallel: each device holds E/n whole
        experts and reads those that some token activates; the layer waits for the device
        that reads the most (``max_experts_touched``: a lone token reads a whole expert
        however many devices share the work) and for the one with the largest share of
        the pairs, which runs T k x that share. Router and shared experts run per
        attention rank (T/d tokens), split over t like a dense MLP.
        """
        m, t = self.model, self.tensor_parallel
        n = self._moe_devices
        e, k = m.num_experts, m.num_experts_per_token
        probs = self._moe_probs
        expert_params: float
        width: float
        if self.expert_parallel:
            expert_params, width = m.expert_params, m.expert_intermediate_size
            pairs = num_tokens * k * self._moe_busy_share
            touched = max_experts_touched(probs, num_tokens)
        else:
            expert_params, width = m.expert_params / n, m.expert_intermediate_size / n
            pairs = num_tokens * k
            touched = (e * (1.0 - (1.0 - k / e) ** num_tokens) if probs is None
                       else experts_touched(probs, num_tokens))
        flops = 2.0 * pairs * expert_params
        act = pairs * (2 * m.hidden_size + m.mlp_matrices * width)
        hbm = touched * expert_params * wb + act * self._act_bytes
        # Grouped up/gate and down GEMMs; rows per expert for efficiencies ramping with M.
        routed = self._gemm_like(flops, hbm, calls=2, m=pairs / max(touched, 1e-9))
        rows = self._rank_share(num_tokens)
        router = self._gemm(rows, m.hidden_size, e, BYTES_PER_ELEMENT["bf16"])
        total = routed + router
        if m.num_shared_experts:
            width = m.num_shared_experts * m.expert_intermediate_size / t
            up_width = (2 if m.gated_mlp else 1) * width
            total = total + self._gemm(rows, m.hidden_size, up_width, wb)
            total = total + self._gemm(rows, width, m.hidden_size, wb)
        return total

    @property
    def _moe_has_own_comm(self) -> bool:
        """Whether MoE layers move tokens themselves (expert parallel, or expert TP over
        several attention ranks) instead of the TP all-reduce after a dense MLP."""
        return self.model.is_moe and (self.expert_parallel or self.attention_data_parallel > 1)

    def _moe_comm(self, num_tokens: int) -> OpCost:
        """Traffic of one MoE layer when ``_moe_has_own_comm``, for a batch of T tokens.

        Expert parallel: an all-to-all dispatch of each token-expert pair's hidden state to
        the expert's device, and an all-to-all combine back; the busiest device receives
        T k x its share of the pairs (T k / n when balanced). Expert TP over d > 1 ranks:
        an all-gather of the batch's hidden states over the n = t x d devices and a
        reduce-scatter of the partial outputs. Either way each device ends with 1/t of its
        rank's tokens, and the rank's t devices all-gather them back for attention.
        """
        m, t, n, topo = self.model, self.tensor_parallel, self._moe_devices, self._topo
        token_bytes = m.hidden_size * self._act_bytes
        seconds: Scalar
        if self.expert_parallel:
            received = num_tokens * m.num_experts_per_token * self._moe_busy_share * token_bytes
            seconds = 2 * topo.all_to_all_s(received, n)
        else:
            batch_bytes = num_tokens * token_bytes
            seconds = topo.all_gather_s(batch_bytes, n) + topo.reduce_scatter_s(batch_bytes, n)
        seconds = seconds + topo.all_gather_s(self._rank_share(num_tokens) * token_bytes, t)
        return OpCost(seconds, 0.0, 0.0)

    def _token_part(self, num_tokens: int) -> dict[str, OpCost]:
        """Ops whose cost depends on the batch's token count only (all but attention and
        the recurrent scan), for the layers in ``layer_range``: each kind of layer priced
        by its count there (``ModelSpec.layer_counts``)."""
        m, t = self.model, self.tensor_parallel
        wb = BYTES_PER_ELEMENT[self.weight_dtype]
        ab = self._act_bytes
        c = self._layers
        rows = self._rank_share(num_tokens)  # one attention rank's tokens; MoE takes all
        ops: dict[str, OpCost] = {}
        if self._has_first_layer:
            ops["embedding"] = self._elementwise(rows * m.hidden_size * ab, 1)
        if c.num_attention:
            ops["qkv_proj"] = self._qkv_proj(rows).scaled(c.num_attention)
            ops["o_proj"] = self._gemm(rows, m.attn_out_size / t, m.hidden_size, wb).scaled(
                c.num_attention)
        if c.num_recurrent:
            ops["recurrent_proj"] = self._recurrent_proj(rows).scaled(c.num_recurrent)
        if c.num_dense_mlp:
            ops["mlp"] = self._mlp(num_tokens).scaled(c.num_dense_mlp)
        if c.num_moe:
            ops["moe"] = self._moe(num_tokens, wb).scaled(c.num_moe)
        ops["elementwise"] = self._layer_elementwise(rows)
        all_reduce = self._all_reduce(rows * m.hidden_size * ab)
        # After every mixer, and after a dense MLP or an expert-TP MoE on one rank; MoE
        # layers that move tokens themselves replace the second (``_moe_comm``).
        moe_all_reduces = 0 if self._moe_has_own_comm else c.num_moe
        ops["tp_all_reduce"] = all_reduce.scaled(c.num_layers + c.num_dense_mlp + moe_all_reduces)
        if self._moe_has_own_comm and c.num_moe:
            ops["moe_comm"] = self._moe_comm(num_tokens).scaled(c.num_moe)
        return ops

    def _layer_elementwise(self, rows: Scalar) -> OpCost:
        """Norms, residual adds, activations and rotary of the layers in range: the
        residual stream read and written around each mixer and each MLP, plus the mixer's
        and the MLP's own widths; ``kernels_per_layer`` kernel floors per layer."""
        m, t = self.model, self.tensor_parallel
        start, end = self.layer_range or (0, m.num_layers)
        kv_width = m.kv_latent_size if m.is_mla else m.kv_size
        mixer_width = {"attention": 2 * (m.q_size + kv_width) / t,
                       "recurrent": (0 if m.recurrent is None else
                                     m.recurrent.io_elements_per_token(m.hidden_size) / t)}
        block_width = {"dense": m.intermediate_size / t, "none": 0.0,
                       "moe": m.num_experts_per_token * m.expert_intermediate_size / t}
        kinds = Counter(zip(m.mixer_kinds[start:end], m.block_kinds[start:end], strict=True))
        kernels = self.efficiency.elementwise.kernels_per_layer
        total = ZERO
        for (mixer, block), count in kinds.items():
            sublayers = 1 if block == "none" else 2
            per_token = 2 * m.hidden_size * sublayers + 3 * block_width[block] + mixer_width[mixer]
            total = total + self._elementwise(rows * self._act_bytes * per_token, kernels).scaled(
                count)
        return total

    def _seq_part(self, num_seqs: int) -> dict[str, OpCost]:
        """Ops on the sampled positions, one per sequence: LM head, logits, sampling (none
        on a pipeline stage without the last layer)."""
        if not self._has_last_layer:
            return {}
        m, t = self.model, self.tensor_parallel
        rows = self._rank_share(num_seqs)  # one attention rank's sequences
        # The LM head stays 16-bit under weight quantisation, as engines keep it.
        lm_head = self._gemm(rows, m.hidden_size, m.vocab_size / t, BYTES_PER_ELEMENT["bf16"])
        logits_bytes = rows * m.vocab_size * _LOGIT_BYTES
        gather = self._topo.all_gather_s(logits_bytes, t)
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
         floor_s, window, per_seq_s, expand_flops) = c
        compute_s = flops = hbm = 0.0
        for new, cached in zip(q, ctx, strict=True):
            attended = cached + (new + 1) / 2.0  # mean keys per query under the causal mask
            kept = cached + new
            if window is not None:
                attended = min(attended, window)
                kept = min(kept, window)
            f = flops_per_key * new * attended
            if expand_flops:  # MLA: earlier chunks' latents expanded to K and V again
                f += expand_flops * cached
            size = math.sqrt(new * (new + cached))  # tile-occupancy length; q with no prefix
            compute_s += f * (size + half_tokens) / (peak_frac * size)
            flops += f
            hbm += kept * kv_token + new * qo_token
        seconds = floor_s + per_seq_s * len(q) + max(compute_s, hbm * s_per_byte)
        return OpCost(seconds * layers, flops * layers, hbm * layers)

    def _make_prefill_constants(self) -> tuple[Any, ...]:
        # Hoisted out of the hot path: every iteration with a prefill prices this.
        # MLA prefills as multi-head attention with query/key heads of head_dim
        # (qk_nope + qk_rope) and value heads of v_head_dim, over K and V expanded from
        # the latent (kv_b_proj), which is what the cache holds and is read.
        m = self.model
        eff = self.efficiency.prefill_attention
        hd, hq = m.head_dim, self._q_heads_per_device
        rank = 1.0 / self.attention_data_parallel  # a balanced rank does 1/d of the work
        flops_per_key = 4.0 * hd * hq * rank
        qo_token = 2 * hq * hd * self._act_bytes * rank
        expand_flops = 0.0
        if m.is_mla:
            assert m.kv_lora_rank and m.qk_nope_head_dim and m.v_head_dim
            flops_per_key = 2.0 * (hd + m.v_head_dim) * hq * rank
            qo_token = hq * (hd + m.v_head_dim) * self._act_bytes * rank
            expand_flops = 2.0 * m.kv_lora_rank * hq * (m.qk_nope_head_dim + m.v_head_dim) * rank
        return (
            self._layers.num_attention,
            flops_per_key,
            self.accelerator.peak_flops_per_s(self._attention_dtype) * eff.max_compute_frac,
            eff.half_tokens,
            self.kv_bytes_per_token_layer * rank,
            qo_token,
            1.0 / (self.accelerator.hbm_bytes_per_s * eff.memory_frac),
            eff.floor_s,
            m.sliding_window_tokens,
            eff.per_sequence_s * rank,
            expand_flops,
        )

    def _decode_attention(self, num_seqs: int, context_tokens: Scalar) -> OpCost:
        """One new token per sequence over ``context_tokens`` cached keys in total."""
        if num_seqs == 0:
            return ZERO
        c = self._decode_constants
        if c is None:
            c = self._decode_constants = self._make_decode_constants()
        layers, flops_per_key, bytes_per_key, bytes_per_seq, s_per_flop, s_per_byte, floor_s = c
        floor_s += self._rank_share(num_seqs) * self.efficiency.decode_attention.per_sequence_s
        flops = context_tokens * flops_per_key
        hbm = context_tokens * bytes_per_key + num_seqs * bytes_per_seq
        if isinstance(context_tokens, np.ndarray):
            seconds = floor_s + np.maximum(flops * s_per_flop, hbm * s_per_byte)
        else:
            seconds = floor_s + max(flops * s_per_flop, hbm * s_per_byte)
        return OpCost(seconds * layers, flops * layers, hbm * layers)

    def _make_decode_constants(self) -> tuple[int, float, float, float, float, float, float]:
        # Hoisted out of the hot path: the engine prices a decode run per event.
        # MLA decodes with the weights absorbed (kv_b_proj folded into the query and the
        # output): multi-query attention of the device's query heads over the latent,
        # keys kv_lora_rank + qk_rope_head_dim wide, values kv_lora_rank wide, so each
        # sequence's latent cache is read once for all heads.
        m = self.model
        eff = self.efficiency.decode_attention
        hd, hq = m.head_dim, self._q_heads_per_device
        rank = 1.0 / self.attention_data_parallel  # a balanced rank does 1/d of the work
        flops_per_key = 4.0 * hd * hq * rank
        bytes_per_seq = 2.0 * hq * hd * self._act_bytes * rank
        if m.is_mla:
            assert m.kv_lora_rank
            width = m.kv_latent_size + m.kv_lora_rank  # key width + value width
            flops_per_key = 2.0 * width * hq * rank
            bytes_per_seq = width * hq * self._act_bytes * rank  # query in, output out
        return (
            self._layers.num_attention,
            flops_per_key,
            self.kv_bytes_per_token_layer * rank,
            bytes_per_seq,
            1.0 / (self.accelerator.peak_flops_per_s(self._attention_dtype) * eff.compute_frac),
            1.0 / (self.accelerator.hbm_bytes_per_s * eff.memory_frac),
            eff.floor_s,
        )

    def _recurrent_scan(self, num_tokens: int, num_seqs: int, decode: bool) -> OpCost:
        """The recurrence of the recurrent layers in range, over ``num_tokens`` new tokens
        of ``num_seqs`` sequences. Each sequence reads its state (conv + SSM) once and
        writes it back; each token updates it (``RecurrentMixer.scan_flops_per_token``) and
        streams its inputs and output. Prefill runs the chunked scan kernel, priced with the
        prefill-attention efficiencies (memory-bound at small batch: the states and the
        activations outweigh the FLOPs); decode runs the one-step state update, priced with
        the decode-attention ones. Nothing here grows with the context."""
        layers = self._layers.num_recurrent
        if not layers or not num_seqs:
            return ZERO
        c = self._recurrent_constants
        if c is None:
            c = self._recurrent_constants = self._make_recurrent_constants()
        flops_per_token, io_bytes_per_token, state_bytes_per_seq, peak = c
        tokens, seqs = self._rank_share(num_tokens), self._rank_share(num_seqs)
        flops = tokens * flops_per_token
        hbm = seqs * state_bytes_per_seq + tokens * io_bytes_per_token
        if decode:
            dec = self.efficiency.decode_attention
            floor_s, per_seq_s, compute_frac, memory_frac = (
                dec.floor_s, dec.per_sequence_s, dec.compute_frac, dec.memory_frac)
        else:
            pre = self.efficiency.prefill_attention
            floor_s, per_seq_s, compute_frac, memory_frac = (
                pre.floor_s, pre.per_sequence_s, pre.max_compute_frac, pre.memory_frac)
        seconds = floor_s + seqs * per_seq_s + max(
            flops / (peak * compute_frac),
            hbm / (self.accelerator.hbm_bytes_per_s * memory_frac))
        return OpCost(seconds * layers, flops * layers, hbm * layers)

    def _make_recurrent_constants(self) -> tuple[float, ...]:
        # Per recurrent layer and device: heads and channels split over tensor parallelism.
        m, t = self.model, self.tensor_parallel
        assert m.recurrent is not None
        h = m.hidden_size
        return (
            m.recurrent.scan_flops_per_token(h) / t,
            m.recurrent.io_elements_per_token(h) / t * self._act_bytes,
            2.0 * self._state_bytes_per_layer,  # read and written back
            self.accelerator.peak_flops_per_s(self._attention_dtype),
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
        if self._layers.num_recurrent:
            ops["recurrent_prefill"] = self._recurrent_scan(sum(q), len(q), decode=False)
            ops["recurrent_decode"] = self._recurrent_scan(
                shape.num_decode_seqs, shape.num_decode_seqs, decode=True)
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
        if self._layers.num_recurrent:
            attn = attn + self._recurrent_scan(
                sum(prefill_tokens), len(prefill_tokens), decode=False) + self._recurrent_scan(
                num_decode_seqs, num_decode_seqs, decode=True)
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
        # The recurrent layers' state update depends on n only: a fixed part of the run.
        scan = self._recurrent_scan(n, n, decode=True)
        return (
            layers * flops_per_key * s_per_flop,
            layers * bytes_per_key * s_per_byte,
            layers * n * bytes_per_seq * s_per_byte,
            dense_s + layers * (
                floor_s + self._rank_share(n) * self.efficiency.decode_attention.per_sequence_s
            ) + self.iteration_overhead_s + float(scan.seconds),
            layers * flops_per_key,
            dense_f + float(scan.flops),
            layers * bytes_per_key,
            dense_b + layers * n * bytes_per_seq + float(scan.hbm_bytes),
        )


def _sum_ops(ops: dict[str, OpCost]) -> tuple[float, float, float]:
    total = ZERO
    for op in ops.values():
        total = total + op
    return float(total.seconds), float(total.flops), float(total.hbm_bytes)
