"""Resolve a scenario into the numbers the engine runs on: specs, cost model, KV capacity.

Validated config is never mutated; everything derived lives in ``Deployment``,
computed once with the scenario it came from. A deployment that does not fit its
devices is rejected here, with the numbers that show why.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY, EfficiencyProfile
from hardware.profile import CalibrationProfile, load_profile
from hardware.spec import AcceleratorSpec
from hardware.topology import Topology
from simulator.cost import CostModel
from simulator.decoding import MultiTokenStep, build_step, with_draft
from simulator.errors import ScenarioError
from simulator.memory import MemoryPlan, plan_memory
from simulator.model import ModelSpec
from simulator.model_catalog import get_model, model_from_hf_config
from simulator.optimizations import AttentionConfig, SpeculativeDecoding
from simulator.precision import resolve_layer_weight_dtypes
from simulator.scenario import (
    AutoscaleConfig,
    GroupLayout,
    HFConfigModel,
    LayoutConfig,
    Role,
    Scenario,
)
from simulator.transforms import apply_transforms, linear_formats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaGroup:
    """Identical replicas of one role, accelerator and layout, resolved.

    Replicas are numbered across the whole cluster: this group's are ``first_replica``
    to ``first_replica + max_replicas - 1`` (autoscaling may start fewer)."""

    name: str
    role: Role
    accelerator: AcceleratorSpec
    layout: LayoutConfig
    cost: CostModel
    """The whole model on one replica (every layer; for reports and the planner)."""
    stages: tuple[CostModel, ...]
    """One cost model per pipeline stage (its layers; the first embeds, the last samples);
    ``(cost,)`` without pipeline parallelism."""
    stage_layers: tuple[int, ...]
    memory: MemoryPlan
    """One device of the stage whose KV cache holds the fewest tokens."""
    num_kv_blocks: int
    """KV blocks of one replica: the constraining stage's, times attention DP ranks."""
    num_replicas: int
    """Replicas at the start of the run."""
    max_replicas: int
    first_replica: int
    autoscale: AutoscaleConfig | None
    topology: Topology
    step: MultiTokenStep | None = None
    """Speculative or lookahead decoding's step; None: one token per sequence per step."""

    @property
    def devices_per_replica(self) -> int:
        return self.layout.devices_per_replica

    @property
    def kv_blocks_per_scheduler(self) -> int:
        """KV blocks one scheduler holds: the replica's, or a virtual engine's equal share
        of them under pipeline parallelism (as vLLM divides them)."""
        return self.num_kv_blocks // len(self.stages)

    @property
    def replica_indices(self) -> range:
        return range(self.first_replica, self.first_replica + self.max_replicas)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A scenario resolved: what every replica of it is.

    ``accelerator``, ``cost`` and ``memory`` are the first group's (the only one unless
    ``deployment.groups`` is set)."""

    scenario: Scenario
    model: ModelSpec
    accelerator: AcceleratorSpec
    cost: CostModel
    memory: MemoryPlan
    max_model_len: int
    groups: tuple[ReplicaGroup, ...] = ()
    prefix_cache: str = "none"
    """The prefix cache the replicas run: ``engine.prefix_cache``, or 'none' for a model
    with recurrent layers (their state cannot be restored from cached KV, so vLLM turns
    prefix caching off for them, and resolve logs that it does)."""

    @property
    def num_replicas(self) -> int:
        """Replica slots, all groups (autoscaled groups count their maximum)."""
        return sum(g.max_replicas for g in self.groups)

    @property
    def min_kv_blocks(self) -> int:
        """The smallest scheduler's KV cache, in blocks (a pipelined replica's schedulers
        each have 1/p of its blocks)."""
        return min(g.kv_blocks_per_scheduler for g in self.groups)

    @property
    def request_kv_blocks_limit(self) -> int:
        """The most KV blocks a request may need: it must fit a scheduler of the largest
        replicas that serve whole requests (or prefill them), and of the largest decode
        replicas. A request needing more is rejected; one needing less goes only to
        replicas that can hold it."""
        entry = max(g.kv_blocks_per_scheduler for g in self.groups if g.role != "decode")
        decode = [g.kv_blocks_per_scheduler for g in self.groups if g.role == "decode"]
        return min(entry, max(decode)) if decode else entry

    def group_of(self, replica: int) -> ReplicaGroup:
        for group in self.groups:
            if replica in group.replica_indices:
                return group
        raise IndexError(f"no replica {replica}")


def resolve_model(scenario: Scenario) -> ModelSpec:
    """The model the scenario serves: its catalog name, config or spec, with
    ``model_transforms`` applied (pruned, or replaced by a distilled student)."""
    ref = scenario.model
    if isinstance(ref, ModelSpec):
        model = ref
    elif isinstance(ref, HFConfigModel):
        model = model_from_hf_config(ref.hf_config, ref.name)
    else:
        try:
            model = get_model(ref)
        except KeyError as exc:
            raise ScenarioError(f"model: {exc.args[0]}") from None
    if not scenario.model_transforms:
        return model
    try:
        return apply_transforms(model, scenario.model_transforms, get_model).model
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def _profile(scenario: Scenario) -> CalibrationProfile | None:
    path = scenario.hardware.profile
    if path is None:
        return None
    try:
        return load_profile(path)
    except ValueError as exc:
        raise ScenarioError(f"hardware.profile: {exc}") from None


def resolve_accelerator(scenario: Scenario,
                        group: str | AcceleratorSpec | None = None,
                        price_per_hour_usd: float | None = None,
                        field: str = "hardware.accelerator") -> AcceleratorSpec:
    """The accelerator of the scenario's hardware section, or of a replica group
    (``group``: its own accelerator, None to inherit), with the section's overrides."""
    hw = scenario.hardware
    profile = _profile(scenario)
    ref = hw.accelerator if group is None else group
    if group is None and profile is not None and "accelerator" not in hw.model_fields_set:
        spec = profile.accelerator
    elif isinstance(ref, AcceleratorSpec):
        spec = ref
    else:
        try:
            spec = get_accelerator(ref)
        except KeyError as exc:
            raise ScenarioError(f"{field}: {exc.args[0]}") from None
    overrides = hw.accelerator_overrides()
    if price_per_hour_usd is not None:
        overrides["price_per_hour_usd"] = price_per_hour_usd
    return spec.model_copy(update=overrides) if overrides else spec


def resolve_efficiency(scenario: Scenario) -> EfficiencyProfile:
    """The scenario's efficiencies: its own, else its calibration profile's, else the
    catalog defaults."""
    if scenario.hardware.efficiency is not None:
        return scenario.hardware.efficiency
    profile = _profile(scenario)
    return DEFAULT_EFFICIENCY if profile is None else profile.efficiency


def stage_layer_counts(num_layers: int, layout: LayoutConfig) -> tuple[int, ...]:
    """Layers per pipeline stage: the layout's own split, else an even one with the extra
    layers on the stages before the last (vLLM's ``get_pp_indices``)."""
    if layout.pipeline_layers is not None:
        return tuple(layout.pipeline_layers)
    p = layout.pipeline_parallel
    counts = [num_layers // p] * p
    for i in range(2, num_layers % p + 2):
        counts[-i] += 1
    return tuple(counts)


def _check_layout(model: ModelSpec, layout: LayoutConfig, where: str) -> tuple[int, ...]:
    """Refuse layouts the model cannot take; return the layers per stage."""
    tp, pp, dp = layout.tensor_parallel, layout.pipeline_parallel, layout.attention_data_parallel
    if model.num_heads % tp:
        raise ScenarioError(
            f"{where}.tensor_parallel={tp} must divide {model.name}'s num_heads={model.num_heads}"
        )
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ScenarioError(
            f"{where}.tensor_parallel={tp} and {model.name}'s num_kv_heads="
            f"{model.num_kv_heads}: one must divide the other"
        )
    if pp > model.num_layers:
        raise ScenarioError(
            f"{where}.pipeline_parallel={pp} exceeds {model.name}'s {model.num_layers} layers"
        )
    if layout.pipeline_layers is not None and sum(layout.pipeline_layers) != model.num_layers:
        raise ScenarioError(
            f"{where}.pipeline_layers={list(layout.pipeline_layers)} sums to "
            f"{sum(layout.pipeline_layers)}, but {model.name} has {model.num_layers} layers"
        )
    if (dp > 1 or layout.expert_parallel) and not model.is_moe:
        field = "attention_data_parallel" if dp > 1 else "expert_parallel"
        raise ScenarioError(
            f"{where}.{field}={getattr(layout, field)} needs a mixture-of-experts model; "
            f"{model.name} is dense (use deployment.replicas for data parallelism)"
        )
    if layout.expert_parallel and model.num_experts % (tp * dp):
        raise ScenarioError(
            f"{where}.expert_parallel shards {model.name}'s {model.num_experts} experts over "
            f"tensor_parallel x attention_data_parallel = {tp * dp} devices, which must "
            f"divide them"
        )
    return stage_layer_counts(model.num_layers, layout)


def _resolve_group(scenario: Scenario, model: ModelSpec, group: GroupLayout, index: int,
                   first_replica: int, efficiency: EfficiencyProfile) -> ReplicaGroup:
    where = "deployment" if not scenario.deployment.groups else f"deployment.groups[{index}]"
    layout = group.layout
    accelerator = resolve_accelerator(
        scenario, group.accelerator, group.price_per_hour_usd,
        "hardware.accelerator" if group.accelerator is None else f"{where}.accelerator")
    layers = _check_layout(model, layout, where)
    eng = scenario.engine
    topology = Topology.from_accelerator(accelerator, efficiency.collective)

    def cost_model(layer_range: tuple[int, int] | None, overhead_s: float) -> CostModel:
        return CostModel(
            model=model,
            accelerator=accelerator,
            efficiency=efficiency,
            tensor_parallel=layout.tensor_parallel,
            weight_dtype=layout.weight_dtype,
            activation_dtype=layout.activation_dtype,
            kv_cache_dtype=layout.resolved_kv_cache_dtype,
            state_dtype=layout.state_dtype,
            iteration_overhead_s=overhead_s,
            topology=topology,
            attention_data_parallel=layout.attention_data_parallel,
            expert_parallel=layout.expert_parallel,
            expert_load=layout.expert_load,
            layer_range=layer_range,
            weight_group_size=layout.weight_group_size,
            layer_weight_dtypes=resolve_layer_weight_dtypes(
                model, layout.weight_dtype, layout.layer_weight_dtypes,
                f"{where}.layer_weight_dtypes"),
            sparsity=linear_formats(scenario.model_transforms)[0],
            low_rank=linear_formats(scenario.model_transforms)[1],
            attention_kernel=scenario.engine.attention.kernel,
            kernel_fusion=scenario.engine.kernel_fusion,
            cuda_graphs=scenario.engine.cuda_graphs,
            kernel_launch_s=scenario.engine.kernel_launch_s,
        )

    cost = cost_model(None, eng.iteration_overhead_s)
    if len(layers) == 1:
        stages: tuple[CostModel, ...] = (cost,)
    else:
        bounds = np.concatenate([[0], np.cumsum(layers)]).tolist()
        # The engine overhead is the driver's, paid once per micro-batch (the pipeline
        # adds it), not on any stage.
        stages = tuple(cost_model((a, b), 0.0) for a, b in itertools.pairwise(bounds))
    plans = []
    for i, stage in enumerate(stages):
        try:
            plans.append(plan_memory(model, accelerator, stage, scenario))
        except ScenarioError as exc:
            label = f"{where}: " if scenario.deployment.groups else ""
            if len(stages) > 1:
                a = sum(layers[:i])
                label += f"pipeline stage {i} (layers {a}-{a + layers[i] - 1}): "
            raise ScenarioError(f"{label}{exc}") from None
    memory = min(plans, key=lambda plan: plan.num_kv_blocks)
    step = _decoding_step(scenario, model, layout, cost, where)
    try:
        memory = with_draft(memory, step)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}" if scenario.deployment.groups else str(exc)
                            ) from None
    autoscale = group.autoscale
    return ReplicaGroup(
        name=group.name, role=group.role, accelerator=accelerator, layout=layout, cost=cost,
        stages=stages, stage_layers=layers, memory=memory,
        num_kv_blocks=memory.num_kv_blocks * layout.attention_data_parallel,
        num_replicas=group.replicas,
        max_replicas=group.replicas if autoscale is None else max(autoscale.max_replicas,
                                                                  group.replicas),
        first_replica=first_replica, autoscale=autoscale, topology=topology, step=step,
    )


def _decoding_step(scenario: Scenario, model: ModelSpec, layout: LayoutConfig,
                   cost: CostModel, where: str) -> MultiTokenStep | None:
    """The scenario's multi-token decode step for this group, after checking that the
    decoding strategy can run with the rest of the scenario."""
    decoding, eng = scenario.engine.decoding, scenario.engine
    if decoding.kind == "autoregressive":
        return None
    if eng.kv_reservation != "paged":
        raise ScenarioError(
            f"engine.decoding.kind={decoding.kind!r} runs with engine.kv_reservation='paged' "
            f"only (got {eng.kv_reservation!r})"
        )
    multi = decoding.kind in ("speculative", "lookahead")
    draft = isinstance(decoding, SpeculativeDecoding) and decoding.proposer == "draft"
    if draft and layout.pipeline_parallel > 1:
        raise ScenarioError(
            f"engine.decoding proposer 'draft' is not modelled with {where}."
            f"pipeline_parallel={layout.pipeline_parallel}: the draft model's placement on "
            f"the stages is not; use proposer eagle, medusa or mtp, or tensor parallelism"
        )
    if multi and model.layer_counts().num_recurrent:
        raise ScenarioError(
            f"engine.decoding.kind={decoding.kind!r}: {model.name} has recurrent layers, "
            f"whose state cannot be rolled back past rejected tokens (not modelled)"
        )
    try:
        return build_step(decoding, cost)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def _with_sparse_attention(model: ModelSpec, attention: AttentionConfig) -> ModelSpec:
    """A local window plus global tokens caps the keys each query reads as a sliding
    window of their sum does (the KV cache keeps every token, as sparse kernels need
    the global ones and vLLM keeps the rest): the model with that window."""
    if attention.sparse_window_tokens is None:
        return model
    window = attention.sparse_window_tokens + attention.sparse_global_tokens
    if model.sliding_window_tokens is not None:
        window = min(window, model.sliding_window_tokens)
    return model.model_copy(update={"sliding_window_tokens": window})


def resolve(scenario: Scenario) -> Deployment:
    """Check that ``scenario`` can run and derive everything the engine needs.

    Raises ``ScenarioError`` naming the field, the value and (for memory) the numbers.
    """
    model = _with_sparse_attention(resolve_model(scenario), scenario.engine.attention)
    eng = scenario.engine
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
    prefix_cache = eng.prefix_cache
    if model.layer_counts().num_recurrent and eng.prefix_cache != "none":
        # As vLLM does: a recurrent layer's state after a prefix is not in any KV block,
        # so cached blocks could not resume it. The engine runs without prefix caching.
        prefix_cache = "none"
        logger.warning("%s has recurrent layers: engine.prefix_cache=%r is turned off "
                       "(recurrent state cannot be restored from cached KV)",
                       model.name, eng.prefix_cache)
    efficiency = resolve_efficiency(scenario)
    groups: list[ReplicaGroup] = []
    first = 0
    for i, layout in enumerate(scenario.deployment.layouts()):
        group = _resolve_group(scenario, model, layout, i, first, efficiency)
        groups.append(group)
        first += group.max_replicas
    head = groups[0]
    return Deployment(scenario, model, head.accelerator, head.cost, head.memory, max_model_len,
                      tuple(groups), prefix_cache)
