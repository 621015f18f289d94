"""Memory of one device of a replica: weights, activation workspace, runtime, KV cache.

``plan_memory`` is the one statement of what fits; a layout that does not fit is
rejected with the numbers that show why.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.spec import GIB, AcceleratorSpec
from simulator.cost import CostModel
from simulator.dtypes import BYTES_PER_ELEMENT
from simulator.errors import ScenarioError
from simulator.model import ModelSpec
from simulator.scenario import Scenario
from simulator.transforms import sparse_weight_bytes


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Bytes on one device of a replica (of one pipeline stage: the layers of the cost
    model's ``layer_range``). Invariant: weight + activation + reserved + state + kv bytes
    <= usable bytes.

    With attention layers, ``kv_bytes`` is what is left for the KV cache, in whole blocks
    (at least one). Without any (a pure state-space or RWKV model, or a stage holding only
    recurrent layers), ``kv_bytes_per_token`` and ``kv_bytes`` are 0 and ``num_kv_blocks``
    is max_num_seqs x ceil(max_model_len / block_size_tokens): enough that KV never limits
    admission, so the scheduler's block accounting still works (no block holds bytes).
    """

    device_bytes: float
    usable_bytes: float
    weight_bytes: float
    activation_bytes: float
    reserved_bytes: float
    kv_bytes: float
    kv_bytes_per_token: float
    num_kv_blocks: int
    block_size_tokens: int
    num_host_blocks: int = 0
    """KV blocks of host swap space per device (0 unless preemption_mode is 'swap', and 0
    without a KV cache)."""
    state_bytes: float = 0.0
    """Recurrent state reserved up front for max_num_seqs sequences (vLLM's Mamba cache)."""
    state_bytes_per_seq: float = 0.0
    """Recurrent state of one sequence on this device, whatever its length."""

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size_tokens

    def describe(self) -> str:
        state = (f" + recurrent state {self.state_bytes / GIB:.2f} GiB" if self.state_bytes
                 else "")
        return (
            f"weights {self.weight_bytes / GIB:.2f} GiB + activations "
            f"{self.activation_bytes / GIB:.2f} GiB + reserved {self.reserved_bytes / GIB:.2f} GiB"
            f"{state} + KV {self.kv_bytes / GIB:.2f} GiB ({self.num_kv_blocks} blocks of "
            f"{self.block_size_tokens} tokens) <= {self.device_bytes / GIB:.2f} GiB x "
            f"{self.usable_bytes / self.device_bytes:.2f}"
        )


def weight_bytes_per_device(model: ModelSpec, cost: CostModel) -> float:
    """Weights of the layers in ``cost.layer_range`` (a pipeline stage; all by default) on
    one device. Linear weights at the weight dtype, split over TP, each kind of layer by
    its count in range: attention (MLA's q_a_proj and kv_a_proj_with_mqa whole on every
    device, as vLLM replicates them), recurrent mixers, dense MLPs, MoE blocks. The
    embedding (on the stage with layer 0) and the LM head (on the stage with the last
    layer; a tied head is a copy of the embedding there) stay 16-bit and are split by
    vocabulary; norms are replicated.

    Routed experts span all t x d devices of the attention ranks: expert parallel holds
    num_experts / (t d) whole experts per device, expert TP 1/(t d) of every expert (the
    same bytes). Attention, dense MLP, router and shared-expert weights are split by t
    only: each attention rank holds a whole TP-t copy.

    With per-layer weight formats each format's layers are counted at its own bytes
    per weight (``cost.layers_by_weight_dtype``); quantised formats include their group
    scales (``cost.weight_bytes_per_element``).

    Model transforms: a low-rank factorisation stores its factors instead of the targeted
    matrices (``cost.low_rank_params_per_device``), and sparsity stores every layer weight
    (the router's too, < 0.1% of an MoE layer) in its format (``sparse_weight_bytes``)."""
    t = cost.tensor_parallel
    start, end = cost.layer_range or (0, model.num_layers)
    routed = model.num_experts * model.expert_params  # per MoE layer; 0 for a dense model
    layer_bytes = 0.0
    for dtype, c in cost.layers_by_weight_dtype:
        replicated = c.num_attention * model.attn_replicated_params_per_layer
        split = (c.num_attention * model.attn_params_per_layer - replicated
                 + c.num_recurrent * model.recurrent_params_per_layer
                 + c.num_dense_mlp * model.dense_mlp_params_per_layer)
        moe = c.num_moe * ((model.moe_params_per_layer - routed)
                           + routed / cost.attention_data_parallel)
        layers = (split + moe) / t + replicated
        if cost.low_rank is not None:
            layers = cost.low_rank_params_per_device(c)
        layer_bytes += layers * sparse_weight_bytes(cost.weight_bytes_per_element(dtype),
                                                    cost.sparsity)
    first, last = start == 0, end == model.num_layers
    vocab_params = model.embedding_params if first else 0
    if last:
        tied_copy = 0 if first else model.embedding_params
        vocab_params += model.lm_head_params if not model.tie_word_embeddings else tied_copy
    vocab = vocab_params / t
    norms = model.norm_params(start, end) + (model.hidden_size if last else 0)
    return layer_bytes + (vocab + norms) * BYTES_PER_ELEMENT["bf16"]


def activation_bytes_per_device(model: ModelSpec, cost: CostModel, scenario: Scenario) -> float:
    """Peak activation workspace of a forward over the full token budget (what vLLM's
    profiling run measures): residual and normed hidden states, the widest mixer input
    (QKV; MLA's expanded K and V; a recurrent layer's input projection), the MLP's widest
    intermediate, and, on the stage that samples, fp32 logits for every sequence, twice
    (logits and probabilities). Only the kinds of layer in ``cost.layer_range`` count."""
    t = cost.tensor_parallel
    eng = scenario.engine
    start, end = cost.layer_range or (0, model.num_layers)
    c = model.layer_counts(start, end)
    mixer_width = 0
    if c.num_attention:
        if model.is_mla:
            expanded = model.num_heads * ((model.qk_nope_head_dim or 0) + (model.v_head_dim or 0))
            mixer_width = model.q_size + model.kv_latent_size + expanded
        else:
            q_width = 2 * model.q_size if model.attn_output_gate else model.q_size
            mixer_width = q_width + 2 * model.kv_size
    if c.num_recurrent and model.recurrent is not None:
        widest = max(n for _, n, split in model.recurrent.gemm_shapes(model.hidden_size)
                     if split == "n")
        mixer_width = max(mixer_width, widest)
    mlp_width = max(
        model.intermediate_size if c.num_dense_mlp else 0,
        model.num_experts_per_token * model.expert_intermediate_size if c.num_moe else 0,
    )
    per_token = 2 * model.hidden_size + mixer_width / t + 3 * mlp_width / t
    logits = 2 * eng.max_num_seqs * model.vocab_size / t * 4 if end == model.num_layers else 0
    return eng.max_num_batched_tokens * per_token * 2 + logits


def plan_memory(model: ModelSpec, accelerator: AcceleratorSpec, cost: CostModel,
                scenario: Scenario) -> MemoryPlan:
    """What one device of ``cost``'s layers holds: weights, activations, runtime, the
    recurrent state of max_num_seqs sequences (reserved up front, as vLLM's Mamba cache
    is) and, in what is left, the KV cache in whole blocks. Raises ``ScenarioError`` with
    the numbers when they do not fit. A query: mutates nothing."""
    eng = scenario.engine
    device = accelerator.memory_bytes
    usable = device * eng.gpu_memory_utilization_frac
    weights = weight_bytes_per_device(model, cost)
    activations = activation_bytes_per_device(model, cost, scenario)
    reserved = eng.runtime_reserved_gib * GIB
    state_per_seq = cost.state_bytes_per_seq
    state = state_per_seq * eng.max_num_seqs
    kv = usable - weights - activations - reserved - state
    block_bytes = cost.kv_bytes_per_token * eng.block_size_tokens
    if block_bytes > 0:
        blocks = int(kv // block_bytes) if kv > 0 else 0
        fits = blocks >= 1
    else:
        # No attention layer here, so no KV cache: as many blocks as max_num_seqs sequences
        # of max_model_len tokens take, so the block accounting never limits admission.
        max_model_len = eng.max_model_len or model.max_context_tokens
        blocks = eng.max_num_seqs * -(-max_model_len // eng.block_size_tokens)
        fits = kv >= 0
    if not fits:
        state_terms = (
            f" + recurrent state {state / GIB:.2f} GiB ({eng.max_num_seqs} sequences "
            f"(max_num_seqs) x {state_per_seq / 2**20:.2f} MiB)" if state else "")
        need = (f"one block needs {block_bytes / 2**20:.2f} MiB" if block_bytes
                else "the model keeps no KV cache, but nothing may be short")
        advice = ("raise deployment.tensor_parallel, quantise weights, or lower "
                  "max_num_batched_tokens")
        if state:
            advice = ("lower engine.max_num_seqs (each sequence's recurrent state is reserved "
                      f"up front), {advice}")
        taken = weights + activations + reserved + state
        raise ScenarioError(
            f"{model.name} does not fit on {cost.tensor_parallel} x {accelerator.name}: weights "
            f"{weights / GIB:.2f} GiB + activations {activations / GIB:.2f} GiB + reserved "
            f"{reserved / GIB:.2f} GiB{state_terms} = {taken / GIB:.2f} GiB per "
            f"device leaves {max(kv, 0) / GIB:.2f} GiB for KV ({need}) of {device / GIB:.2f} "
            f"GiB x {eng.gpu_memory_utilization_frac:.2f} = {usable / GIB:.2f} GiB; {advice}"
        )
    return MemoryPlan(
        device_bytes=device,
        usable_bytes=usable,
        weight_bytes=weights,
        activation_bytes=activations,
        reserved_bytes=reserved,
        kv_bytes=blocks * block_bytes,
        kv_bytes_per_token=cost.kv_bytes_per_token,
        num_kv_blocks=blocks,
        block_size_tokens=eng.block_size_tokens,
        num_host_blocks=(
            int(eng.swap_space_gib * GIB // block_bytes)
            if eng.preemption_mode == "swap" and block_bytes > 0 else 0
        ),
        state_bytes=state,
        state_bytes_per_seq=state_per_seq,
    )
