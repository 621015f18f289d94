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


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Bytes on one device of a replica. Invariant: kv_bytes = usable - the rest, > 0."""

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
    """KV blocks of host swap space per device (0 unless preemption_mode is 'swap')."""

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size_tokens

    def describe(self) -> str:
        return (
            f"weights {self.weight_bytes / GIB:.2f} GiB + activations "
            f"{self.activation_bytes / GIB:.2f} GiB + reserved {self.reserved_bytes / GIB:.2f} GiB"
            f" + KV {self.kv_bytes / GIB:.2f} GiB ({self.num_kv_blocks} blocks of "
            f"{self.block_size_tokens} tokens) <= {self.device_bytes / GIB:.2f} GiB x "
            f"{self.usable_bytes / self.device_bytes:.2f}"
        )


def weight_bytes_per_device(model: ModelSpec, cost: CostModel) -> float:
    """Linear weights at the weight dtype, split over TP; embeddings and LM head stay
    16-bit and are split by vocabulary; norms are replicated."""
    t = cost.tensor_parallel
    wb = BYTES_PER_ELEMENT[cost.weight_dtype]
    layers = model.num_layers * (model.attn_params_per_layer + model.mlp_params_per_layer) / t
    vocab = (model.embedding_params + model.lm_head_params) / t
    norms = (2 * model.num_layers + 1) * model.hidden_size
    return layers * wb + (vocab + norms) * BYTES_PER_ELEMENT["bf16"]


def activation_bytes_per_device(model: ModelSpec, cost: CostModel, scenario: Scenario) -> float:
    """Peak activation workspace of a forward over the full token budget (what vLLM's
    profiling run measures): residual and normed hidden states, QKV, the MLP's widest
    intermediate, and fp32 logits for every sequence, twice (logits and probabilities)."""
    t = cost.tensor_parallel
    eng = scenario.engine
    mlp_width = (
        model.intermediate_size if not model.is_moe
        else model.num_experts_per_token * model.expert_intermediate_size
    )
    per_token = 2 * model.hidden_size + (model.q_size + 2 * model.kv_size) / t + 3 * mlp_width / t
    logits = 2 * eng.max_num_seqs * model.vocab_size / t * 4
    return eng.max_num_batched_tokens * per_token * 2 + logits


def plan_memory(model: ModelSpec, accelerator: AcceleratorSpec, cost: CostModel,
                scenario: Scenario) -> MemoryPlan:
    eng = scenario.engine
    device = accelerator.memory_bytes
    usable = device * eng.gpu_memory_utilization_frac
    weights = weight_bytes_per_device(model, cost)
    activations = activation_bytes_per_device(model, cost, scenario)
    reserved = eng.runtime_reserved_gib * GIB
    kv = usable - weights - activations - reserved
    block_bytes = cost.kv_bytes_per_token * eng.block_size_tokens
    blocks = int(kv // block_bytes) if kv > 0 else 0
    if blocks < 1:
        raise ScenarioError(
            f"{model.name} does not fit on {cost.tensor_parallel} x {accelerator.name}: weights "
            f"{weights / GIB:.2f} GiB + activations {activations / GIB:.2f} GiB + reserved "
            f"{reserved / GIB:.2f} GiB = {(weights + activations + reserved) / GIB:.2f} GiB per "
            f"device leaves {max(kv, 0) / GIB:.2f} GiB for KV (one block needs "
            f"{block_bytes / 2**20:.2f} MiB) of {device / GIB:.2f} GiB x "
            f"{eng.gpu_memory_utilization_frac:.2f} = {usable / GIB:.2f} GiB; raise "
            f"deployment.tensor_parallel, quantise weights, or lower max_num_batched_tokens"
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
            int(eng.swap_space_gib * GIB // block_bytes) if eng.preemption_mode == "swap" else 0
        ),
    )
