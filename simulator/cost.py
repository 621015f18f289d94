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
from typing import Any, Literal

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
from simulator.optimizations import LowRank, Sparsity
from simulator.precision import (
    dequantises,
    kv_vector_bytes,
    layer_counts_by_dtype,
    weight_bytes_per_element,
)
from simulator.transforms import check_low_rank, sparse_weight_bytes

_LOGIT_BYTES = 4  # fp32 logits

KERNEL_LAUNCH_S = 30e-6
"""CPU time an eager engine spends issuing one of the kernels ``CostModel.num_kernels``
counts, when no CUDA graph replays them. The driver's own launch is ~4 us (NVIDIA's
"Getting Started with CUDA Graphs", developer.nvidia.com/blog/cuda-graphs: a 2.9 us kernel
runs at 3.8 us per kernel when launches are back to back), but an eager PyTorch engine
also pays Python, the ATen dispatcher and the allocator, 5-25 us per op, and issues several
torch ops per fused kernel counted here. Fitted to published eager decode steps against
this count: Llama-2-7B in vLLM without graphs 12 ms per token (1.2 s for 100 tokens vs
1.05 s with graphs, vllm-project/vllm#1440) is 41 us per kernel; Llama-3.1-8B on an H100
8.4 ms eager vs 5.1 ms with graphs (cloudai.pt, "CUDA Graphs + torch.compile") is 29 us.
Calibrate for a given host (docs/optimizations.md, "Attention and kernels")."""
_SCORE_PASSES = 4
"""HBM passes over the attention score matrix without a fused kernel: QK^T writes S,
softmax reads S and writes P, PV reads P (docs/optimizations.md)."""
_SCORE_BYTES = 2  # 16-bit scores and probabilities


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
    (including weight-only int4/int8/fp8) computes in the activation dtype. A part
    without the 8-bit rate falls back to weight-only (``CostModel._gemm_compute_dtype``)."""
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
    # ---- model transforms and kernels (docs/optimizations.md) ----
    sparsity: Sparsity | None = None
    """Weight sparsity of the transformer's linear layers (QKV, O, MLP, experts, recurrent
    projections; not the embedding, LM head or router). 2:4 halves their FLOPs where
    ``accelerator.structured_sparsity`` (sparse tensor cores at twice the dense rate) and
    stores half the values plus 2-bit metadata; unstructured computes dense and saves bytes
    only in sparse storage (``simulator.transforms.sparse_weight_bytes``). None: dense."""
    low_rank: LowRank | None = None
    """Low-rank factorisation of the targeted linear layers: each k x n weight becomes
    k x r and r x n factors, two GEMMs (``_linear``). None: full rank."""
    attention_kernel: Literal["flash", "unfused"] = "flash"
    """'flash': fused attention, the score matrix never leaves the chip; 'unfused': QK^T,
    softmax and PV as separate kernels, the 16-bit score matrix written and read in
    ``_SCORE_PASSES`` passes, every masked score computed."""
    kernel_fusion: Literal["none", "standard", "full"] = "standard"
    """Elementwise kernels per layer: 'standard' the profile's ``kernels_per_layer`` (vLLM's
    fused add+RMSNorm and SiLU-and-mul); 'none' every norm, residual add, activation and
    rotary its own kernel; 'full' activations and rotary fused into GEMM and attention
    kernels (TensorRT-LLM). ``_elementwise_kernels`` gives the counts."""
    cuda_graphs: bool = True
    """Iterations replay captured CUDA graphs, so kernel launches cost no CPU time (vLLM's
    default). False (eager, vLLM's ``enforce_eager``): every iteration takes at least
    its kernel count x ``kernel_launch_s`` (``num_kernels``), CPU launches and GPU
    execution overlapping."""
    kernel_launch_s: float = KERNEL_LAUNCH_S
    """CPU time per kernel launch without CUDA graphs, seconds."""
    weight_group_size: int | None = None
    """Input channels sharing one scale (and zero point) in quantised (fp8/int8/int4)
    weights, as GPTQ/AWQ's group size (128 typical): the scales' bytes are read and stored
    with the weights (``simulator.precision.weight_bytes_per_element``). None: per-channel
    or per-tensor scales, whose bytes are left out."""
    layer_weight_dtypes: tuple[DType, ...] | None = None
    """Per-layer mixed precision, resolved: one weight format per layer of the whole model
    (``simulator.precision.resolve_layer_weight_dtypes``), overriding ``weight_dtype``;
    each layer's linear weights are priced and stored in their own format. None: every
    layer in ``weight_dtype``."""
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
    _launch_cache: dict[tuple[bool, bool], float] = field(default_factory=dict, init=False,
                                                          repr=False, compare=False)
    _prefill_constants: tuple[Any, ...] | None = field(default=None, init=False, repr=False)
    _decode_constants: tuple[int, float, float, float, float, float, float] | None = field(
        default=None, init=False, repr=False
    )
    _layer_counts: LayerCounts | None = field(default=None, init=False, repr=False,
                                              compare=False)
    _recurrent_constants: tuple[float, ...] | None = field(default=None, init=False, repr=False,
                                                           compare=False)
    _weight_groups: tuple[tuple[DType, LayerCounts], ...] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Resolve the topology and the routing; reject layouts the model cannot take."""
        topology = self.topology or Topology.from_accelerator(self.accelerator)
        if topology.efficiency != self.efficiency.collective:
            topology = replace(topology, efficiency=self.efficiency.collective)
        self._topo = topology
        m, d = self.model, self.attention_data_parallel
        if d < 1:
            raise ValueError(f"attention_data_parallel={d} must be at least 1")
        per_layer = self.layer_weight_dtypes
        if per_layer is not None and len(per_layer) != m.num_layers:
            raise ValueError(f"layer_weight_dtypes has {len(per_layer)} formats, but "
                             f"{m.name} has num_layers={m.num_layers} (one per layer)")
        if self.weight_group_size is not None and self.weight_group_size < 1:
            raise ValueError(f"weight_group_size={self.weight_group_size} must be positive")
        self._check_transforms()
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
        """The rate the linear layers in ``weight_dtype`` compute at (MFU's peak)."""
        return self._gemm_compute_dtype(self.weight_dtype)

    def _gemm_compute_dtype(self, weight_dtype: DType) -> ComputeDType:
        """The tensor-core rate of a GEMM whose weights are in ``weight_dtype``: W8A8 at the
        8-bit rate where the accelerator has one; without (fp8 on an A100) the weights are
        widened and multiplied at 16 bits, as vLLM's FP8 Marlin does on Ampere."""
        dtype = compute_dtype_for(weight_dtype, self.activation_dtype)
        if dtype in ("fp8", "int8") and dtype not in self.accelerator.peak_tflops:
            return "bf16"
        return dtype

    def weight_bytes_per_element(self, weight_dtype: DType) -> float:
        """Bytes per linear weight in ``weight_dtype``, its share of group scales included."""
        return weight_bytes_per_element(weight_dtype, self.weight_group_size)

    @property
    def layers_by_weight_dtype(self) -> tuple[tuple[DType, LayerCounts], ...]:
        """The layers in ``layer_range`` grouped by their weights' format, each with how many
        layers of each kind it holds (one group, ``weight_dtype``, without per-layer
        formats). The groups' counts add up to the range's."""
        groups = self._weight_groups
        if groups is None:
            per_layer = self.layer_weight_dtypes
            counts = self._layers  # validates layer_range
            if per_layer is None:
                groups = ((self.weight_dtype, counts),)
            else:
                start, end = self.layer_range or (0, self.model.num_layers)
                groups = layer_counts_by_dtype(self.model, per_layer, start, end)
            self._weight_groups = groups
        return groups

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
        device, as vLLM does (hence DeepSeek deployments' data-parallel attention). An
        int4 cache adds each vector's scale and zero point (``kv_vector_bytes``)."""
        if self.model.is_mla:
            return kv_vector_bytes(self.kv_cache_dtype, self.model.kv_latent_size)
        return 2 * self._kv_heads_per_device * kv_vector_bytes(self.kv_cache_dtype,
                                                              self.model.head_dim)

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

    # ---- model transforms and kernels (docs/optimizations.md) ----

    def _check_transforms(self) -> None:
        """Reject kernel settings outside their sets and factorisations that save nothing."""
        if self.attention_kernel not in ("flash", "unfused"):
            raise ValueError(f"attention_kernel={self.attention_kernel!r} must be 'flash' or "
                             f"'unfused'")
        if self.kernel_fusion not in ("none", "standard", "full"):
            raise ValueError(f"kernel_fusion={self.kernel_fusion!r} must be 'none', "
                             f"'standard' or 'full'")
        if self.kernel_launch_s < 0:
            raise ValueError(f"kernel_launch_s={self.kernel_launch_s} must be >= 0")
        if self.low_rank is not None:
            check_low_rank(self.model, self.low_rank)

    @property
    def _sparse_flops_frac(self) -> float:
        """Share of a linear layer's dense FLOPs its GEMMs execute: 1/2 for 2:4 sparsity on
        sparse tensor cores (twice the dense rate), else 1 (unstructured sparsity, or 2:4
        on a part without them, computes dense)."""
        s = self.sparsity
        structured = s is not None and s.pattern == "2:4"
        return 0.5 if structured and self.accelerator.structured_sparsity else 1.0

    def _factorised(self, target: str) -> bool:
        return self.low_rank is not None and target in self.low_rank.targets

    def _linear(self, rows: Scalar, k: float, n: float, wd: DType, target: str,
                parts: tuple[float, ...] = ()) -> OpCost:
        """A transformer linear layer on one device, ``[rows, k] x [k, n]`` with weights in
        ``wd`` and the model transforms' formats. ``parts``: the widths of the matrices
        fused in it (q, k and v; gate and up), adding up to ``n``; () for one matrix.

        Low rank (``target`` in ``low_rank.targets``): each matrix k x n_j becomes k x r and
        r x n_j factors, run as two GEMMs: the A factors side by side, [rows, k] x
        [k, r x parts], then the B factors as one grouped GEMM of [rows, r] x [r, n_j]:
        FLOPs 2 rows (k + n_j) r and weights (k + n_j) r per matrix. The grouped B GEMM is
        priced as one [rows, r] x [r, n] (the same FLOPs and weights); the B factors
        beyond the first read rows x r more activations each, left out (about 2% of the
        bytes at a 64-token decode, nothing where compute-bound). Under tensor parallelism
        k and n are the device's share, so a column-parallel layer keeps its A factor
        whole on every device and a row-parallel one its B factor. Sparsity applies to
        every GEMM here (``_gemm``'s ``sparse``)."""
        if not self._factorised(target):
            return self._gemm(rows, k, n, wd, sparse=True)
        assert self.low_rank is not None
        r = self.low_rank.rank
        a = self._gemm(rows, k, r * max(1, len(parts)), wd, sparse=True)
        return a + self._gemm(rows, r, n, wd, sparse=True)

    def low_rank_params_per_device(self, c: LayerCounts) -> float:
        """Linear weights (elements) one device holds for layers counted in ``c`` under
        ``low_rank``, with ``_linear``'s shapes: a factorised k x n matrix as k_dev r +
        r n_dev for the device's share k_dev x n_dev of it (gate/up/q/k/v split by columns
        keep their A factor whole, o/down split by rows their B factor); shared experts
        as one fused MLP; routed experts whole per device under expert parallelism, split
        over the t x d devices otherwise. Unfactorised weights as ``weight_bytes_per_device``
        counts them. A query."""
        assert self.low_rank is not None
        m, t, n_moe = self.model, self.tensor_parallel, self._moe_devices
        r, h = self.low_rank.rank, m.hidden_size

        def factors(k_dev: float, n_dev: float) -> float:
            return r * (k_dev + n_dev)

        replicated = m.attn_replicated_params_per_layer
        attn = (m.attn_params_per_layer - replicated) / t + replicated
        if self._factorised("qkv") and not m.is_mla:
            q_width = 2 * m.q_size if m.attn_output_gate else m.q_size
            attn += (factors(h, q_width / t) + 2 * factors(h, m.kv_size / t)
                     - h * (q_width + 2 * m.kv_size) / t)
        if self._factorised("o"):
            attn += factors(m.attn_out_size / t, h) - m.attn_out_size * h / t
        mlp = m.dense_mlp_params_per_layer / t
        routed = m.num_experts * m.expert_params / n_moe
        shared = m.num_shared_experts * m.expert_params / t
        if self._factorised("mlp"):
            ei = m.expert_intermediate_size
            mlp = m.mlp_matrices * factors(h, m.intermediate_size / t)
            routed = (m.num_experts / n_moe * m.mlp_matrices * factors(h, ei)
                      if self.expert_parallel
                      else m.num_experts * m.mlp_matrices * factors(h, ei / n_moe))
            shared = (m.mlp_matrices * factors(h, m.num_shared_experts * ei / t)
                      if m.num_shared_experts else 0.0)
        moe = routed + shared + h * m.num_experts / t  # and the router
        return (c.num_attention * attn + c.num_recurrent * m.recurrent_params_per_layer / t
                + c.num_dense_mlp * mlp + c.num_moe * moe)

    def _score_bytes_per_key(self, heads: float) -> float:
        """Unfused attention: bytes of HBM traffic per query-key pair for ``heads`` heads,
        the 16-bit score written and read ``_SCORE_PASSES`` times; 0 with flash."""
        if self.attention_kernel != "unfused":
            return 0.0
        return float(_SCORE_PASSES * _SCORE_BYTES * heads)

    @property
    def _unfused_attention_floor_s(self) -> float:
        """Fixed cost an unfused attention call adds to the fused kernel's: a softmax
        kernel and a second batched GEMM (PV) besides the first (QK^T)."""
        if self.attention_kernel != "unfused":
            return 0.0
        return self.efficiency.elementwise.floor_s + self.efficiency.gemm_for(
            self._attention_dtype).floor_s

    def _elementwise_kernels(self, mixer: str, block: str) -> int:
        """Elementwise kernels of one layer with this mixer and block under
        ``kernel_fusion``. 'standard': the profile's ``kernels_per_layer`` (4 by default:
        fused add+RMSNorm before the mixer and before the MLP, rotary, SiLU-and-mul, as
        vLLM runs a Llama layer). 'none': each residual add apart from its norm (+1 per
        sublayer), the gate's multiply apart from the activation (+1, gated MLPs), K's
        rotary apart from Q's (+1, attention): 8 for a Llama layer. 'full': the
        activation in the gate/up GEMM's epilogue (-1) and rotary in the QKV epilogue or
        the attention kernel (-1), as TensorRT-LLM fuses them: 2 for a Llama layer, at
        least 1 for any."""
        kernels = self.efficiency.elementwise.kernels_per_layer
        if self.kernel_fusion == "standard":
            return kernels
        has_mlp, attention = block != "none", mixer == "attention"
        if self.kernel_fusion == "none":
            gated = has_mlp and self.model.gated_mlp
            return kernels + (2 if has_mlp else 1) + int(gated) + int(attention)
        return max(1, kernels - int(has_mlp) - int(attention))

    def num_kernels(self, prefill: bool, decode: bool) -> int:
        """Kernels one device launches in one iteration (with prefill chunks, decoding
        sequences, or both), counted from the ops ``price`` charges: per attention layer
        the QKV GEMM(s) (MLA: q, kv_a, kv_b), the attention kernel of each phase present
        (3 unfused: QK^T, softmax, PV), o_proj; per recurrent layer its projections and
        one scan per phase; per dense MLP 2 GEMMs; per MoE layer the router, 2 grouped
        expert GEMMs, 2 for shared experts and 3 collectives if it moves tokens itself;
        a factorised linear layer 2 GEMMs for 1; ``_elementwise_kernels`` per layer; the
        TP all-reduces; per forward the embedding, LM head, sampling and (TP) the logits
        all-gather. A query: mutates nothing."""
        m, c, t = self.model, self._layers, self.tensor_parallel
        factor = {target: 2 if self._factorised(target) else 1 for target in ("qkv", "o", "mlp")}
        phases = int(prefill) + int(decode)
        n = int(self._has_first_layer)  # embedding
        if c.num_attention:
            qkv = (2 if m.q_lora_rank else 1) + 2 if m.is_mla else factor["qkv"]
            attention = (3 if self.attention_kernel == "unfused" else 1) * phases
            n += c.num_attention * (qkv + factor["o"] + attention)
        if c.num_recurrent and m.recurrent is not None:
            n += c.num_recurrent * (len(m.recurrent.gemm_shapes(m.hidden_size)) + phases)
        mlp = 2 * factor["mlp"]
        n += c.num_dense_mlp * mlp
        if c.num_moe:
            moe = 1 + mlp + (mlp if m.num_shared_experts else 0)
            n += c.num_moe * (moe + (3 if self._moe_has_own_comm else 0))
        start, end = self.layer_range or (0, m.num_layers)
        kinds = Counter(zip(m.mixer_kinds[start:end], m.block_kinds[start:end], strict=True))
        n += sum(self._elementwise_kernels(mixer, block) * count
                 for (mixer, block), count in kinds.items())
        if t > 1:
            moe_all_reduces = 0 if self._moe_has_own_comm else c.num_moe
            n += c.num_layers + c.num_dense_mlp + moe_all_reduces
        if self._has_last_layer:
            n += 2 + int(t > 1)
        return n

    def _launch_floor_s(self, prefill: bool, decode: bool) -> float:
        """Least time an iteration's kernels take when the CPU launches them one by one
        (``cuda_graphs`` False): their count x ``kernel_launch_s``; 0 with CUDA graphs."""
        if self.cuda_graphs:
            return 0.0
        key = (prefill, decode)
        floor_s = self._launch_cache.get(key)
        if floor_s is None:
            floor_s = self._launch_cache[key] = (self.num_kernels(prefill, decode)
                                                 * self.kernel_launch_s)
        return floor_s

    # ---- op classes ----

    def _gemm(self, m: Scalar, k: float, n: float, weight_dtype: DType,
              sparse: bool = False) -> OpCost:
        """``[m, k] x [k, n]`` with the weights stored in ``weight_dtype``: their bytes (group
        scales included), the rate they compute at (``_gemm_compute_dtype``) and, for a
        weight-only kernel, the dequantisation of every weight once per row tile.
        ``sparse``: a transformer linear layer, stored and run in ``sparsity``'s format
        (fewer bytes; 2:4 on sparse tensor cores executes half the FLOPs)."""
        compute = self._gemm_compute_dtype(weight_dtype)
        flops = 2.0 * m * k * n
        weight_bytes = self.weight_bytes_per_element(weight_dtype)
        if sparse and self.sparsity is not None:
            weight_bytes = sparse_weight_bytes(weight_bytes, self.sparsity)
            flops = flops * self._sparse_flops_frac
        hbm = k * n * weight_bytes + (m * k + m * n) * self._act_bytes
        dequant = self._dequant_flops(k * n, m) if dequantises(weight_dtype, compute) else 0.0
        return self._gemm_like(flops, hbm, calls=1, m=m, compute_dtype=compute,
                               dequant_flops=dequant)

    def _dequant_flops(self, weights: Scalar, rows: Scalar) -> Scalar:
        """Tensor-core FLOP equivalents a weight-only kernel spends widening ``weights``
        weight elements, each once per tile of ``efficiency.weight_only.tile_rows`` of the
        ``rows`` activation rows it multiplies."""
        eff = self.efficiency.weight_only
        return eff.dequant_flops_per_weight * weights * np.ceil(rows / eff.tile_rows)

    def _gemm_like(self, flops: Scalar, hbm: Scalar, calls: int, m: Scalar = 0.0,
                   compute_dtype: ComputeDType | None = None,
                   dequant_flops: Scalar = 0.0) -> OpCost:
        """Priced with the GEMM efficiencies of ``compute_dtype`` (None: the model's);
        ``calls`` kernel floors; ``m`` rows per call, for efficiencies that ramp up with M
        (0: unknown, flat); ``dequant_flops``: weight-only dequantisation work, which takes
        compute time but is not counted in the FLOPs returned (MFU counts useful work)."""
        if compute_dtype is None:
            compute_dtype = self.compute_dtype
        eff = self.efficiency.gemm_for(compute_dtype)
        compute_frac: Scalar = eff.compute_frac
        if eff.half_m and (isinstance(m, np.ndarray) or m > 0):
            compute_frac = eff.compute_frac * m / (m + eff.half_m)
        memory_frac = eff.memory_frac
        if eff.gemv_memory_frac is not None and not isinstance(m, np.ndarray) and m == 1:
            memory_frac = eff.gemv_memory_frac
        seconds = roofline_s(
            flops + dequant_flops, hbm,
            peak_flops_per_s=self.accelerator.peak_flops_per_s(compute_dtype),
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

    def _mlp(self, num_tokens: int, wd: DType) -> OpCost:
        """One dense MLP layer with weights in ``wd`` for a batch of ``num_tokens``: it runs
        per attention rank, on its share of the tokens (MoE layers take the whole batch:
        ``_moe``)."""
        m, t = self.model, self.tensor_parallel
        rows = self._rank_share(num_tokens)
        up_width = (2 if m.gated_mlp else 1) * m.intermediate_size / t
        width = m.intermediate_size / t
        parts = (width, width) if m.gated_mlp else ()
        return self._linear(rows, m.hidden_size, up_width, wd, "mlp", parts) + self._linear(
            rows, m.intermediate_size / t, m.hidden_size, wd, "mlp"
        )

    def _qkv_proj(self, rows: Scalar, wd: DType) -> OpCost:
        """One attention layer's input projections for ``rows`` tokens. MLA: q_a_proj and
        kv_a_proj_with_mqa replicated on every device (as vLLM runs them), q_b_proj and
        kv_b_proj split by heads. kv_b_proj runs once per new token: in prefill it expands
        the new tokens' latents to K and V; in decode its two halves are absorbed into the
        query and the output (the same FLOPs and weight bytes). Weights in ``wd``."""
        m, t = self.model, self.tensor_parallel
        h = m.hidden_size
        if not m.is_mla:
            q_width = 2 * m.q_size if m.attn_output_gate else m.q_size
            return self._linear(rows, h, (q_width + 2 * m.kv_size) / t, wd, "qkv",
                                (q_width / t, m.kv_size / t, m.kv_size / t))
        assert m.kv_lora_rank and m.qk_nope_head_dim and m.v_head_dim
        if m.q_lora_rank:
            q = self._gemm(rows, h, m.q_lora_rank, wd, sparse=True) + self._gemm(
                rows, m.q_lora_rank, m.q_size / t, wd, sparse=True)
        else:
            q = self._gemm(rows, h, m.q_size / t, wd, sparse=True)
        kv_a = self._gemm(rows, h, m.kv_latent_size, wd, sparse=True)
        kv_b = self._gemm(rows, m.kv_lora_rank,
                          m.num_heads * (m.qk_nope_head_dim + m.v_head_dim) / t, wd, sparse=True)
        return q + kv_a + kv_b

    def _recurrent_proj(self, rows: Scalar, wd: DType) -> OpCost:
        """One recurrent layer's projections (``RecurrentMixer.gemm_shapes``) with weights in
        ``wd``, split by tensor parallelism along the dimension vLLM splits."""
        m, t = self.model, self.tensor_parallel
        assert m.recurrent is not None
        total = ZERO
        for k, n, split in m.recurrent.gemm_shapes(m.hidden_size):
            total = total + (self._gemm(rows, k, n / t, wd, sparse=True) if split == "n"
                             else self._gemm(rows, k / t, n, wd, sparse=True))
        return total

    def _moe(self, num_tokens: int, wd: DType) -> OpCost:
        """One MoE layer's routed experts (on the busiest device), router and shared experts,
        for all ``num_tokens`` = T tokens of the batch, expert weights in ``wd`` (the router
        stays 16-bit, as engines keep the gate).

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
        calls = 2
        if self._factorised("mlp"):  # each expert matrix as k x r and r x n factors
            assert self.low_rank is not None
            r = self.low_rank.rank
            expert_params, calls = m.mlp_matrices * r * (m.hidden_size + width), 4
        flops = 2.0 * pairs * expert_params
        act = pairs * (2 * m.hidden_size + m.mlp_matrices * width)
        if calls == 4:  # each factor pair writes and reads an r-wide intermediate
            act = act + pairs * 2 * m.mlp_matrices * r
        weight_bytes = self.weight_bytes_per_element(wd)
        if self.sparsity is not None:
            weight_bytes = sparse_weight_bytes(weight_bytes, self.sparsity)
            flops = flops * self._sparse_flops_frac
        hbm = touched * expert_params * weight_bytes + act * self._act_bytes
        # Grouped up/gate and down GEMMs; rows per expert for efficiencies ramping with M.
        rows_per_expert = pairs / max(touched, 1e-9)
        compute = self._gemm_compute_dtype(wd)
        dequant = (self._dequant_flops(touched * expert_params, rows_per_expert)
                   if dequantises(wd, compute) else 0.0)
        routed = self._gemm_like(flops, hbm, calls=calls, m=rows_per_expert, compute_dtype=compute,
                                 dequant_flops=dequant)
        rows = self._rank_share(num_tokens)
        router = self._gemm(rows, m.hidden_size, e, "bf16")
        total = routed + router
        if m.num_shared_experts:
            width = m.num_shared_experts * m.expert_intermediate_size / t
            up_width = (2 if m.gated_mlp else 1) * width
            parts = (width, width) if m.gated_mlp else ()
            total = total + self._linear(rows, m.hidden_size, up_width, wd, "mlp", parts)
            total = total + self._linear(rows, width, m.hidden_size, wd, "mlp")
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
        by its count there (``ModelSpec.layer_counts``), and, with per-layer weight
        formats, by its count in each format (``layers_by_weight_dtype``)."""
        m = self.model
        ab = self._act_bytes
        c = self._layers
        rows = self._rank_share(num_tokens)  # one attention rank's tokens; MoE takes all
        ops: dict[str, OpCost] = {}
        if self._has_first_layer:
            ops["embedding"] = self._elementwise(rows * m.hidden_size * ab, 1)
        for wd, counts in self.layers_by_weight_dtype:
            for name, op in self._linear_ops(num_tokens, wd, counts).items():
                ops[name] = ops[name] + op if name in ops else op
        ops["elementwise"] = self._layer_elementwise(rows)
        all_reduce = self._all_reduce(rows * m.hidden_size * ab)
        # After every mixer, and after a dense MLP or an expert-TP MoE on one rank; MoE
        # layers that move tokens themselves replace the second (``_moe_comm``).
        moe_all_reduces = 0 if self._moe_has_own_comm else c.num_moe
        ops["tp_all_reduce"] = all_reduce.scaled(c.num_layers + c.num_dense_mlp + moe_all_reduces)
        if self._moe_has_own_comm and c.num_moe:
            ops["moe_comm"] = self._moe_comm(num_tokens).scaled(c.num_moe)
        return ops

    def _linear_ops(self, num_tokens: int, wd: DType, c: LayerCounts) -> dict[str, OpCost]:
        """The linear layers of the ``c`` layers whose weights are in ``wd``: projections,
        dense MLPs and MoE blocks, each kind priced by its count."""
        m, t = self.model, self.tensor_parallel
        rows = self._rank_share(num_tokens)
        ops: dict[str, OpCost] = {}
        if c.num_attention:
            ops["qkv_proj"] = self._qkv_proj(rows, wd).scaled(c.num_attention)
            ops["o_proj"] = self._linear(rows, m.attn_out_size / t, m.hidden_size, wd,
                                         "o").scaled(c.num_attention)
        if c.num_recurrent:
            ops["recurrent_proj"] = self._recurrent_proj(rows, wd).scaled(c.num_recurrent)
        if c.num_dense_mlp:
            ops["mlp"] = self._mlp(num_tokens, wd).scaled(c.num_dense_mlp)
        if c.num_moe:
            ops["moe"] = self._moe(num_tokens, wd).scaled(c.num_moe)
        return ops

    def _layer_elementwise(self, rows: Scalar) -> OpCost:
        """Norms, residual adds, activations and rotary of the layers in range: the
        residual stream read and written around each mixer and each MLP, plus the mixer's
        and the MLP's own widths; ``_elementwise_kernels`` kernel floors per layer.
        ``kernel_fusion`` 'none' adds a residual add's extra pass (h more elements per
        sublayer: add and norm each read and write) and the gate multiply's (2 x MLP width:
        SiLU writes what the multiply reads back); 'full' drops the activation's 3 x MLP
        width and the rotary's pass over Q and K."""
        m, t = self.model, self.tensor_parallel
        start, end = self.layer_range or (0, m.num_layers)
        kv_width = m.kv_latent_size if m.is_mla else m.kv_size
        mixer_width = {"attention": 2 * (m.q_size + kv_width) / t,
                       "recurrent": (0 if m.recurrent is None else
                                     m.recurrent.io_elements_per_token(m.hidden_size) / t)}
        block_width = {"dense": m.intermediate_size / t, "none": 0.0,
                       "moe": m.num_experts_per_token * m.expert_intermediate_size / t}
        kinds = Counter(zip(m.mixer_kinds[start:end], m.block_kinds[start:end], strict=True))
        total = ZERO
        for (mixer, block), count in kinds.items():
            sublayers = 1 if block == "none" else 2
            per_token = 2 * m.hidden_size * sublayers + 3 * block_width[block] + mixer_width[mixer]
            if self.kernel_fusion == "none":  # adds apart from norms, multiply apart from SiLU
                per_token += m.hidden_size * sublayers + (
                    2 * block_width[block] if m.gated_mlp else 0.0)
            elif self.kernel_fusion == "full":  # activation and rotary inside other kernels
                per_token -= 3 * block_width[block] + (
                    mixer_width[mixer] if mixer == "attention" else 0.0)
            kernels = self._elementwise_kernels(mixer, block)
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
        lm_head = self._gemm(rows, m.hidden_size, m.vocab_size / t, "bf16")
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
         floor_s, window, per_seq_s, expand_flops, score_bytes) = c
        compute_s = flops = hbm = 0.0
        for new, cached in zip(q, ctx, strict=True):
            attended = cached + (new + 1) / 2.0  # mean keys per query under the causal mask
            kept = cached + new
            if window is not None:
                attended = min(attended, window)
                kept = min(kept, window)
            if score_bytes:  # unfused: every score computed (then masked), S and P in HBM
                attended = kept
                hbm += new * kept * score_bytes
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
            eff.floor_s + self._unfused_attention_floor_s,
            m.sliding_window_tokens,
            eff.per_sequence_s * rank,
            expand_flops,
            self._score_bytes_per_key(hq * rank),
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
        bytes_per_key = self.kv_bytes_per_token_layer * rank
        if self.attention_kernel == "unfused":  # one score per head and key, in HBM
            bytes_per_key += self._score_bytes_per_key(hq * rank)
        return (
            self._layers.num_attention,
            flops_per_key,
            bytes_per_key,
            bytes_per_seq,
            1.0 / (self.accelerator.peak_flops_per_s(self._attention_dtype) * eff.compute_frac),
            1.0 / (self.accelerator.hbm_bytes_per_s * eff.memory_frac),
            eff.floor_s + self._unfused_attention_floor_s,
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
        launch_s = self._launch_floor_s(bool(q), shape.num_decode_seqs > 0)
        if launch_s:  # eager launches: the GPU waits for the CPU where they take longer
            busy = ZERO
            for op in ops.values():
                busy = busy + op
            ops["launch_wait"] = OpCost(np.maximum(launch_s - busy.seconds, 0.0), 0.0, 0.0)
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
        busy_s = seconds + float(attn.seconds)
        launch_s = self._launch_floor_s(len(prefill_tokens) > 0, num_decode_seqs > 0)
        if launch_s:
            busy_s = max(busy_s, launch_s)
        return (
            busy_s + self.iteration_overhead_s,
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
            b_per_key, b_fixed, launch_s = coeffs
        ctx = decode_context_tokens
        seconds = np.maximum(ctx * s_per_key_compute, ctx * s_per_key_memory + s_memory_fixed)
        if launch_s:  # eager: the CPU's launches bound the GPU's part (price's launch_wait)
            overhead_s = self.iteration_overhead_s
            seconds += s_fixed - overhead_s
            np.maximum(seconds, launch_s, out=seconds)
            seconds += overhead_s
        else:
            seconds += s_fixed
        flops = ctx * f_per_key
        flops += f_fixed
        hbm = ctx * b_per_key
        hbm += b_fixed
        return seconds, flops, hbm

    def _run_coefficients(self, n: int) -> tuple[float, ...]:
        """decode_run's affine pieces: seconds = fixed + max(a * ctx, b * ctx + c), etc.;
        last, the launch floor of an eager decode iteration (0 with CUDA graphs)."""
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
            self._launch_floor_s(False, True),
        )

    # ---- decoding strategies (the lead's section: speculative and lookahead steps) ----

    def verify(self, num_seqs: int, query_tokens: int, context_tokens: float,
               prefill_tokens: Sequence[int] = (),
               prefill_context_tokens: Sequence[int] = ()) -> tuple[float, float, float]:
        """(seconds, flops, hbm_bytes) of an iteration in which ``num_seqs`` decoding
        sequences each compute ``query_tokens`` positions (the last token and the
        proposals to verify) over ``context_tokens`` cached keys in all, beside prefill
        chunks. Linear layers and the LM head see every position (logits are needed at
        each); attention reads each sequence's KV once for all its positions, as
        FlashAttention and FlashInfer do with a query length above one, and does
        ``query_tokens`` times one position's work. With ``query_tokens`` 1 this is
        ``iteration``."""
        positions = num_seqs * query_tokens
        seconds, flops, hbm = self._shape_totals(sum(prefill_tokens) + positions,
                                                 len(prefill_tokens) + positions)
        attn = self._prefill_attention(prefill_tokens, prefill_context_tokens)
        if num_seqs:
            attn = attn + self._verify_attention(num_seqs, query_tokens, context_tokens)
        busy_s = seconds + float(attn.seconds)
        launch_s = self._launch_floor_s(len(prefill_tokens) > 0, num_seqs > 0)
        if launch_s:
            busy_s = max(busy_s, launch_s)
        return (busy_s + self.iteration_overhead_s,
                flops + float(attn.flops), hbm + float(attn.hbm_bytes))

    def verify_run(self, num_seqs: int, query_tokens: int, context_tokens: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``verify`` for decode-only iterations that differ only in the attended
        context (arrays shaped like ``context_tokens``): a run of multi-token steps."""
        positions = num_seqs * query_tokens
        seconds, flops, hbm = self._shape_totals(positions, positions)
        attn = self._verify_attention(num_seqs, query_tokens, context_tokens)
        busy_s = seconds + attn.seconds
        launch_s = self._launch_floor_s(False, True)
        if launch_s:
            busy_s = np.maximum(busy_s, launch_s)
        return (np.asarray(busy_s + self.iteration_overhead_s, dtype=np.float64),
                np.asarray(flops + attn.flops, dtype=np.float64),
                np.asarray(hbm + attn.hbm_bytes, dtype=np.float64))

    def _verify_attention(self, num_seqs: int, query_tokens: int, context_tokens: Scalar
                          ) -> OpCost:
        """Decode attention of ``query_tokens`` positions per sequence: the KV read once,
        the work ``query_tokens`` times one position's."""
        c = self._decode_constants
        if c is None:
            c = self._decode_constants = self._make_decode_constants()
        layers, flops_per_key, bytes_per_key, bytes_per_seq, s_per_flop, s_per_byte, floor_s = c
        attn_flops = query_tokens * context_tokens * flops_per_key * layers
        attn_bytes = (context_tokens * bytes_per_key
                      + query_tokens * num_seqs * bytes_per_seq) * layers
        floor = (floor_s + self._rank_share(num_seqs)
                 * self.efficiency.decode_attention.per_sequence_s) * layers
        seconds = floor + np.maximum(attn_flops * s_per_flop, attn_bytes * s_per_byte)
        if not isinstance(context_tokens, np.ndarray):
            seconds = float(seconds)
        return OpCost(seconds, attn_flops, attn_bytes)

def _sum_ops(ops: dict[str, OpCost]) -> tuple[float, float, float]:
    total = ZERO
    for op in ops.values():
        total = total + op
    return float(total.seconds), float(total.flops), float(total.hbm_bytes)
