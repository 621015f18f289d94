"""Resolve a scenario into the numbers the engine runs on: specs, cost model, KV capacity.

Validated config is never mutated; everything derived lives in ``Deployment``,
computed once with the scenario it came from. A deployment that does not fit its
devices is rejected here, with the numbers that show why.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY, EfficiencyProfile
from hardware.profile import CalibrationProfile, load_profile
from hardware.spec import GIB, AcceleratorSpec
from simulator.cost import CostModel
from simulator.dtypes import BYTES_PER_ELEMENT
from simulator.model import ModelSpec
from simulator.model_catalog import get_model, model_from_hf_config
from simulator.scenario import HFConfigModel, Scenario


class ScenarioError(ValueError):
    """A scenario that validates field by field but cannot run as a whole."""


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


@dataclass(frozen=True, slots=True)
class Deployment:
    """A scenario resolved: what every replica of it is."""

    scenario: Scenario
    model: ModelSpec
    accelerator: AcceleratorSpec
    cost: CostModel
    memory: MemoryPlan
    max_model_len: int


def resolve_model(scenario: Scenario) -> ModelSpec:
    ref = scenario.model
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, HFConfigModel):
        return model_from_hf_config(ref.hf_config, ref.name)
    try:
        return get_model(ref)
    except KeyError as exc:
        raise ScenarioError(f"model: {exc.args[0]}") from None


def _profile(scenario: Scenario) -> CalibrationProfile | None:
    path = scenario.hardware.profile
    if path is None:
        return None
    try:
        return load_profile(path)
    except ValueError as exc:
        raise ScenarioError(f"hardware.profile: {exc}") from None


def resolve_accelerator(scenario: Scenario) -> AcceleratorSpec:
    hw = scenario.hardware
    profile = _profile(scenario)
    if profile is not None and "accelerator" not in hw.model_fields_set:
        spec = profile.accelerator
    elif isinstance(hw.accelerator, AcceleratorSpec):
        spec = hw.accelerator
    else:
        try:
            spec = get_accelerator(hw.accelerator)
        except KeyError as exc:
            raise ScenarioError(f"hardware.accelerator: {exc.args[0]}") from None
    if hw.price_per_hour_usd is not None:
        spec = spec.model_copy(update={"price_per_hour_usd": hw.price_per_hour_usd})
    return spec


def resolve_efficiency(scenario: Scenario) -> EfficiencyProfile:
    """The scenario's efficiencies: its own, else its calibration profile's, else the
    catalog defaults."""
    if scenario.hardware.efficiency is not None:
        return scenario.hardware.efficiency
    profile = _profile(scenario)
    return DEFAULT_EFFICIENCY if profile is None else profile.efficiency


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


def resolve(scenario: Scenario) -> Deployment:
    """Check that ``scenario`` can run and derive everything the engine needs.

    Raises ``ScenarioError`` naming the field, the value and (for memory) the numbers.
    """
    model = resolve_model(scenario)
    accelerator = resolve_accelerator(scenario)
    dep, eng = scenario.deployment, scenario.engine
    tp = dep.tensor_parallel
    if model.num_heads % tp:
        raise ScenarioError(
            f"deployment.tensor_parallel={tp} must divide {model.name}'s num_heads="
            f"{model.num_heads}"
        )
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ScenarioError(
            f"deployment.tensor_parallel={tp} and {model.name}'s num_kv_heads="
            f"{model.num_kv_heads}: one must divide the other"
        )
    max_model_len = eng.max_model_len or model.max_context_tokens
    if max_model_len > model.max_context_tokens:
        raise ScenarioError(
            f"engine.max_model_len={max_model_len} exceeds {model.name}'s context of "
            f"{model.max_context_tokens} tokens"
        )
    if not eng.chunked_prefill and eng.max_num_batched_tokens < max_model_len:
        raise ScenarioError(
            f"engine.max_num_batched_tokens={eng.max_num_batched_tokens} is below max_model_len="
            f"{max_model_len} with chunked_prefill off, so long prompts could never be scheduled;"
            f" raise max_num_batched_tokens, lower engine.max_model_len, or enable chunked_prefill"
        )
    cost = CostModel(
        model=model,
        accelerator=accelerator,
        efficiency=resolve_efficiency(scenario),
        tensor_parallel=tp,
        weight_dtype=dep.weight_dtype,
        activation_dtype=dep.activation_dtype,
        kv_cache_dtype=dep.resolved_kv_cache_dtype,
        iteration_overhead_s=eng.iteration_overhead_s,
    )
    memory = plan_memory(model, accelerator, cost, scenario)
    return Deployment(scenario, model, accelerator, cost, memory, max_model_len)
