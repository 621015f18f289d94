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
from hardware.spec import AcceleratorSpec
from simulator.cost import CostModel
from simulator.errors import ScenarioError
from simulator.memory import MemoryPlan, plan_memory
from simulator.model import ModelSpec
from simulator.model_catalog import get_model, model_from_hf_config
from simulator.scenario import HFConfigModel, Scenario


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
