"""Scenario: everything one simulation needs, as one validated, frozen pydantic model.

A scenario loads from YAML, JSON or a dict, and every section has defaults, so
``Scenario()`` is the built-in default run: Llama-3.1-8B on one H100 SXM under a
ShareGPT-like Poisson load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SerializeAsAny,
    WithJsonSchema,
    model_validator,
)

from hardware.efficiency import EfficiencyProfile
from hardware.spec import AcceleratorSpec
from policies.batching import BATCHING
from policies.queue import QUEUE
from policies.routing import ROUTING
from simulator.cost import KERNEL_LAUNCH_S
from simulator.dtypes import DType
from simulator.model import ModelSpec
from simulator.moe import ExpertLoadConfig, UniformExpertLoad
from simulator.optimizations import (
    AttentionConfig,
    Autoregressive,
    DecodingConfig,
    LayerWeightDType,
    ModelTransform,
)
from simulator.plan import EngineLimits, PolicyParams
from simulator.predictor import PredictorConfig
from simulator.presets import apply_preset
from workloads.config import (
    LogNormalLength,
    PoissonArrivals,
    SyntheticWorkload,
    WorkloadConfig,
)

# A policy field holds the policy's own parameter model (a PolicyParams subclass, so
# SerializeAsAny dumps its fields), validated through the registry: installed plug-ins
# are found by name like the built-ins.
BatchingParams = Annotated[
    PolicyParams, BeforeValidator(BATCHING.parse), SerializeAsAny(), WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "object", "required": ["kind"]}]}
    )
]
QueueParams = Annotated[
    PolicyParams, BeforeValidator(QUEUE.parse), SerializeAsAny(), WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "object", "required": ["kind"]}]}
    )
]
RoutingParams = Annotated[
    PolicyParams, BeforeValidator(ROUTING.parse), SerializeAsAny(), WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "object", "required": ["kind"]}]}
    )
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HFConfigModel(_Section):
    """A model read from a Hugging Face ``config.json`` on disk (no network)."""

    hf_config: Path = Field(description="Path to config.json, or to a folder that holds one.")
    name: str | None = Field(default=None, description="Display name; defaults to the folder.")


class HardwareConfig(_Section):
    """The accelerator every replica runs on, and overrides of its catalog figures."""

    accelerator: str | AcceleratorSpec = Field(
        default="h100-sxm", description="Catalog name (see `servesim hardware`) or a full spec."
    )
    price_per_hour_usd: float | None = Field(
        default=None, ge=0, description="Overrides the catalog's hourly price per device, USD."
    )
    efficiency: EfficiencyProfile | None = Field(
        default=None, description="Kernel efficiency profile; None uses the catalog defaults."
    )
    profile: Path | None = Field(
        default=None,
        description="A calibration profile (JSON from `servesim calibrate`): the measured "
        "device and its fitted efficiencies, used unless accelerator or efficiency are set.",
    )
    devices_per_node: int | None = Field(
        default=None, gt=0,
        description="Overrides the accelerator's devices per node (a layout wider than a node "
        "pays the inter-node network for its collectives).",
    )
    intra_node_gb_per_s: float | None = Field(
        default=None, gt=0,
        description="Overrides the device-to-device link inside a node (NVLink/xGMI or PCIe), "
        "GB/s per direction per device.",
    )
    network_gb_per_s: float | None = Field(
        default=None, gt=0,
        description="Overrides the inter-node network bandwidth per device (InfiniBand, "
        "RoCE, Ethernet), GB/s per direction.",
    )
    network_latency_us: float | None = Field(
        default=None, ge=0, description="Overrides the one-way inter-node latency, µs."
    )

    def accelerator_overrides(self) -> dict[str, float]:
        """The accelerator fields this section overrides, by AcceleratorSpec field name."""
        names = ("price_per_hour_usd", "devices_per_node", "intra_node_gb_per_s",
                 "network_gb_per_s", "network_latency_us")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


Role = Literal["mixed", "prefill", "decode"]


class LayoutConfig(_Section):
    """How one replica lays the model out on devices, and at what precision."""

    tensor_parallel: int = Field(default=1, gt=0, description="Devices a layer is split over "
                                 "(TP degree).")
    pipeline_parallel: int = Field(
        default=1, gt=0,
        description="Pipeline stages: the layers are split into this many consecutive stages, "
        "each on its own tensor-parallel group, with as many micro-batches in flight as "
        "stages (vLLM's virtual engines).",
    )
    pipeline_layers: tuple[int, ...] | None = Field(
        default=None,
        description="Layers per stage, first to last (vLLM's VLLM_PP_LAYER_PARTITION); must "
        "sum to the model's layers. None: an even split, extra layers to the stages before "
        "the last (as vLLM splits).",
    )
    attention_data_parallel: int = Field(
        default=1, gt=0,
        description="Data-parallel attention ranks per replica: each runs attention on its "
        "own share of the batch and KV cache, and all of them share the MoE layers (as "
        "DeepSeek deployments run). 1: none.",
    )
    expert_parallel: bool = Field(
        default=False,
        description="Shard the experts of MoE layers over the replica's tensor_parallel x "
        "attention_data_parallel devices (all-to-all dispatch and combine); false splits "
        "every expert over them instead (expert TP).",
    )
    expert_load: ExpertLoadConfig = Field(
        default_factory=lambda: UniformExpertLoad(kind="uniform"),
        description="How routed tokens spread over experts: {kind: uniform}, {kind: zipf, "
        "exponent: s} or {kind: given, weights: [per-expert load]}; under expert "
        "parallelism the busiest device sets the pace.",
    )
    weight_dtype: DType = Field(default="bf16", description="Storage format of linear weights.")
    activation_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8"] = Field(
        default="bf16",
        description="Format GEMM inputs are computed in; fp8/int8 need weights of the same "
        "format (W8A8).",
    )
    kv_cache_dtype: Literal["auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4"] = Field(
        default="auto", description="KV cache element format; 'auto' follows the activations."
    )
    weight_group_size: int | None = Field(
        default=None, gt=0,
        description="Weight-only int4/int8 quantisation with one scale (and zero point) per "
        "this many input channels (GPTQ/AWQ use 128): the scales' bytes and the "
        "dequantisation are priced. None: per-channel scales.",
    )
    layer_weight_dtypes: tuple[LayerWeightDType, ...] = Field(
        default=(),
        description="Per-layer mixed precision: [{layers: [0, -1], weight_dtype: bf16}] keeps "
        "the first and last layers in bf16 whatever weight_dtype the rest use.",
    )
    state_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        default="bf16",
        description="Element format of recurrent (SSM, linear-attention) layers' per-sequence "
        "state: the model's dtype, as vLLM's mamba_cache_dtype 'auto', or fp32 "
        "(--mamba-ssm-cache-dtype float32).",
    )

    @model_validator(mode="after")
    def _check_layout(self) -> LayoutConfig:
        if self.activation_dtype in ("fp8", "int8") and self.weight_dtype != self.activation_dtype:
            raise ValueError(
                f"activation_dtype={self.activation_dtype!r} needs weight_dtype="
                f"{self.activation_dtype!r} (W8A8), got weight_dtype={self.weight_dtype!r}"
            )
        layers = self.pipeline_layers
        if layers is not None and (len(layers) != self.pipeline_parallel or min(layers) < 1):
            raise ValueError(
                f"pipeline_layers={list(layers)} must give {self.pipeline_parallel} stages "
                f"(pipeline_parallel) of at least one layer each"
            )
        return self

    @property
    def resolved_kv_cache_dtype(self) -> DType:
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        return "bf16" if self.activation_dtype in ("fp8", "int8") else self.activation_dtype

    @property
    def devices_per_replica(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.attention_data_parallel


class AutoscaleConfig(_Section):
    """Replicas added and removed during the run by a scaling policy."""

    metric: Literal["utilization", "queue_length"] = Field(
        description="What the policy steers: 'utilization' (share of the active replicas' "
        "KV cache and sequence slots in use, the larger) or 'queue_length' (requests "
        "waiting per active replica).",
    )
    target: float = Field(
        gt=0, description="Value of the metric the policy aims for (a fraction for "
        "utilization, requests for queue_length).",
    )
    min_replicas: int = Field(default=1, gt=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(gt=0, description="Most replicas the policy may run.")
    interval_s: float = Field(default=10.0, gt=0, description="Seconds between decisions.")
    startup_s: float = Field(
        default=60.0, ge=0,
        description="Seconds from the decision to add a replica until it serves (model load, "
        "warm-up); it is paid for meanwhile.",
    )
    cooldown_s: float = Field(
        default=300.0, ge=0,
        description="Scale-down stabilization window, s: a replica is removed only when "
        "every decision of this long asked for fewer (Kubernetes HPA's default is 300).",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscaleConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscale.min_replicas={self.min_replicas} exceeds max_replicas="
                f"{self.max_replicas}"
            )
        if self.metric == "utilization" and self.target > 1:
            raise ValueError(f"autoscale.target={self.target} must be <= 1 for utilization")
        return self


class ReplicaGroupConfig(_Section):
    """One kind of replica in a cluster of several: its role, hardware and layout.

    A field left unset takes the value of the ``deployment`` (layout) or ``hardware``
    (accelerator, price) section."""

    name: str | None = Field(default=None, description="Label; defaults to 'group<i>'.")
    role: Role = Field(
        default="mixed",
        description="'mixed' serves whole requests; 'prefill' computes prompts and hands the "
        "KV cache to a 'decode' replica, which generates the rest (disaggregated serving).",
    )
    replicas: int = Field(default=1, gt=0, description="Replicas of this kind.")
    accelerator: str | AcceleratorSpec | None = Field(
        default=None, description="Catalog name or full spec; None: hardware.accelerator."
    )
    price_per_hour_usd: float | None = Field(
        default=None, ge=0, description="Hourly price per device, USD; None: the hardware "
        "section's override, else the catalog's."
    )
    tensor_parallel: int | None = Field(default=None, gt=0, description="See deployment.")
    pipeline_parallel: int | None = Field(default=None, gt=0, description="See deployment.")
    pipeline_layers: tuple[int, ...] | None = Field(default=None, description="See deployment.")
    attention_data_parallel: int | None = Field(default=None, gt=0,
                                                description="See deployment.")
    expert_parallel: bool | None = Field(default=None, description="See deployment.")
    weight_dtype: DType | None = Field(default=None, description="See deployment.")
    activation_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8"] | None = Field(
        default=None, description="See deployment.")
    kv_cache_dtype: Literal["auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4"] | None = (
        Field(default=None, description="See deployment."))
    weight_group_size: int | None = Field(default=None, gt=0, description="See deployment.")
    layer_weight_dtypes: tuple[LayerWeightDType, ...] | None = Field(
        default=None, description="See deployment.")
    state_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        default=None, description="See deployment.")
    autoscale: AutoscaleConfig | None = Field(
        default=None, description="Scale this group's replicas during the run; `replicas` "
        "is then how many run at the start.",
    )


class KVTransferConfig(_Section):
    """The link a prefill replica sends KV caches to decode replicas over."""

    link: Literal["network", "intra_node"] = Field(
        default="network",
        description="'network': the inter-node network (RDMA, as Mooncake and DistServe "
        "across nodes); 'intra_node': NVLink/xGMI when prefill and decode share a node.",
    )
    gb_per_s: float | None = Field(
        default=None, gt=0,
        description="Bandwidth per sending device, GB/s; None: the prefill accelerator's "
        "figure for the link. Every device of the prefill replica sends its share at once.",
    )
    latency_us: float | None = Field(
        default=None, ge=0,
        description="Fixed latency per transfer, µs; None: the network latency (network) or "
        "the collective latency (intra_node).",
    )


class DeploymentConfig(LayoutConfig):
    """How the model is laid out on devices, at what precision, and how many replicas.

    One kind of replica by default; ``groups`` describes a cluster of several kinds
    (heterogeneous hardware, or prefill and decode pools for disaggregated serving)."""

    replicas: int = Field(default=1, gt=0, description="Identical data-parallel replicas.")
    autoscale: AutoscaleConfig | None = Field(
        default=None,
        description="Scale replicas during the run (one group only); `replicas` is then how "
        "many run at the start.",
    )
    groups: tuple[ReplicaGroupConfig, ...] = Field(
        default=(),
        description="Replica groups, each with its own role, accelerator and layout (fields "
        "left unset inherit this section's and hardware's); empty: `replicas` replicas of "
        "this section's layout. With groups, `replicas` and `autoscale` here are unused and "
        "must keep their defaults.",
    )
    kv_transfer: KVTransferConfig = Field(
        default_factory=KVTransferConfig,
        description="Link between prefill and decode replicas (disaggregated groups).",
    )

    @model_validator(mode="after")
    def _check_groups(self) -> DeploymentConfig:
        if not self.groups:
            return self
        # Their defaults pass, so a dumped scenario (every field written) reloads.
        for name, default in (("replicas", 1), ("autoscale", None)):
            if getattr(self, name) != default:
                raise ValueError(
                    f"deployment.{name} is set together with deployment.groups; give each "
                    f"group its own {name}"
                )
        roles = {g.role for g in self.groups}
        if ("prefill" in roles) != ("decode" in roles):
            raise ValueError(
                f"deployment.groups roles {sorted(roles)}: disaggregated serving needs both a "
                f"'prefill' and a 'decode' group"
            )
        if "mixed" in roles and len(roles) > 1:
            raise ValueError(
                "deployment.groups mixes 'mixed' groups with prefill/decode ones; a cluster "
                "is either aggregated (mixed groups) or disaggregated (prefill + decode)"
            )
        names = [g.name for g in self.groups if g.name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"deployment.groups names repeat: {names}")
        return self

    def layouts(self) -> list[GroupLayout]:
        """Every replica group, its fields resolved against this section's."""
        if not self.groups:
            base = self.model_dump(include=set(LayoutConfig.model_fields))
            return [GroupLayout(name="group0", role="mixed", replicas=self.replicas,
                                accelerator=None, price_per_hour_usd=None,
                                autoscale=self.autoscale, layout=LayoutConfig(**base))]
        out = []
        for i, group in enumerate(self.groups):
            fields = self.model_dump(include=set(LayoutConfig.model_fields))
            fields.update({k: v for k, v in group.model_dump(include=set(LayoutConfig.model_fields))
                           .items() if v is not None})
            out.append(GroupLayout(
                name=group.name or f"group{i}", role=group.role, replicas=group.replicas,
                accelerator=group.accelerator, price_per_hour_usd=group.price_per_hour_usd,
                autoscale=group.autoscale, layout=LayoutConfig(**fields),
            ))
        return out

    @property
    def num_devices(self) -> int:
        """Devices at the start of the run, all groups."""
        return sum(g.replicas * g.layout.devices_per_replica for g in self.layouts())

    @property
    def num_replicas(self) -> int:
        """Replicas at the start of the run, all groups."""
        return sum(g.replicas for g in self.layouts())


class GroupLayout(NamedTuple):
    """One replica group with inherited fields filled in (``DeploymentConfig.layouts``)."""

    name: str
    role: Role
    replicas: int
    accelerator: str | AcceleratorSpec | None  # None: hardware.accelerator
    price_per_hour_usd: float | None  # None: hardware's override or the catalog's
    autoscale: AutoscaleConfig | None
    layout: LayoutConfig


class EngineConfig(_Section):
    """The serving engine's knobs, named as in vLLM where it has them."""

    preset: str | None = Field(
        default=None,
        description="A named bundle of engine settings (vllm, sglang, trtllm, orca, sarathi, "
        "fastertransformer, lightllm; see docs/presets.md): it fills every engine field this "
        "section leaves unset; fields set here win. None: the defaults below.",
    )
    batching: BatchingParams = Field(
        default_factory=lambda: BATCHING.parse("token_budget"),
        description="Batching policy: a registry name, or {kind: name, ...its parameters}; "
        "'token_budget' is vLLM v1's scheduler.",
    )
    queue: QueueParams = Field(
        default_factory=lambda: QUEUE.parse("fcfs"),
        description="Order of waiting requests for admission: a name or {kind: name, ...}: "
        "'fcfs', 'sjf' (needs a predictor), 'priority', 'edf', 'mlfq' (docs/policies.md).",
    )
    predictor: PredictorConfig | None = Field(
        default=None,
        description="What length-aware policies may know of output lengths: "
        "{kind: oracle}, {kind: noisy, sigma: log-error std} or {kind: bucket_mean} "
        "(mean output per prompt-length bucket, learned from the workload); None: nothing.",
    )
    routing: RoutingParams = Field(
        default_factory=lambda: ROUTING.parse("round_robin"),
        description="Routing policy across replicas: a name or {kind: name, ...}.",
    )
    max_num_seqs: int = Field(default=256, gt=0, description="Most sequences in one iteration.")
    max_num_batched_tokens: int = Field(
        default=8192, gt=0, description="Token budget of one iteration (prefill + decode tokens)."
    )
    chunked_prefill: bool = Field(
        default=True, description="Split long prompts across iterations to fit the token budget."
    )
    long_prefill_token_threshold: int | None = Field(
        default=None,
        gt=0,
        description="Chunk size: most prompt tokens one request computes per iteration "
        "(None: up to the whole budget).",
    )
    block_size_tokens: int = Field(default=16, gt=0, description="Tokens per paged KV block.")
    kv_watermark_frac: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of KV blocks admission leaves free for running requests to grow "
        "into (vLLM v0's watermark, 0.01 there; vLLM v1 has none).",
    )
    gpu_memory_utilization_frac: float = Field(
        default=0.9, gt=0, le=1, description="Share of device memory the engine may use."
    )
    runtime_reserved_gib: float = Field(
        default=1.0,
        ge=0,
        description="Memory outside weights, activations and KV (CUDA context, graphs), GiB.",
    )
    preemption_mode: Literal["recompute", "swap"] = Field(
        default="recompute",
        description="What happens to a preempted request's KV: 'recompute' drops it and "
        "prefills again on resume (vLLM v1); 'swap' copies it to host memory over PCIe and "
        "back on resume (vLLM v0), recomputing only when swap space is full.",
    )
    preemption_victim: Literal["newest", "lowest_priority"] = Field(
        default="newest",
        description="Which running request preemption takes first: 'newest' (last admitted, "
        "vLLM's FCFS policy) or 'lowest_priority' (highest priority value, newest among "
        "equals, vLLM's priority policy).",
    )
    kv_reservation: Literal["paged", "max", "predicted"] = Field(
        default="paged",
        description="KV blocks taken at admission: 'paged' only what the computed tokens need, "
        "growing block by block (vLLM); 'max' prompt + the most output the request may "
        "generate (FasterTransformer, TensorRT-LLM's guaranteed_no_evict); 'predicted' "
        "prompt + the predictor's output length, growing on demand past it (needs "
        "engine.predictor).",
    )
    prefix_cache: Literal["none", "hashed", "radix"] = Field(
        default="hashed",
        description="Reuse of KV across requests that share a prefix (workload prefix ids): "
        "'hashed' full blocks as vLLM's automatic prefix caching (on by default in vLLM "
        "v1), 'radix' token-granular matching as SGLang's RadixAttention, 'none' off. "
        "Unreferenced cached blocks are evicted least recently used first.",
    )
    swap_space_gib: float = Field(
        default=4.0, ge=0,
        description="Host memory per device for swapped-out KV, GiB (vLLM's swap_space).",
    )
    iteration_overhead_s: float = Field(
        default=0.0005,
        ge=0,
        description="CPU time per iteration the device waits for (scheduling, sampling), s.",
    )
    max_model_len: int | None = Field(
        default=None,
        gt=0,
        description="Longest prompt + output accepted, tokens; None: the model's context.",
    )
    decoding: DecodingConfig = Field(
        default_factory=Autoregressive,
        description="How tokens are generated: {kind: autoregressive}, {kind: speculative, "
        "proposer: draft|eagle|medusa|mtp, ...}, {kind: lookahead, ...}, {kind: beam, "
        "beam_width}, {kind: parallel_sampling, n} (docs/optimizations.md).",
    )
    attention: AttentionConfig = Field(
        default_factory=AttentionConfig,
        description="Attention kernel (flash or unfused) and sparse pattern (local window "
        "plus global tokens).",
    )
    kernel_fusion: Literal["none", "standard", "full"] = Field(
        default="standard",
        description="Elementwise kernels per layer: 'none' (every norm, activation and "
        "residual its own kernel), 'standard' (vLLM's fused RMSNorm+residual and "
        "SiLU-and-mul), 'full' (fused into the GEMMs' epilogues, as TensorRT-LLM).",
    )
    kernel_launch_s: float = Field(
        default=KERNEL_LAUNCH_S, ge=0,
        description="CPU time per kernel launch of an eager engine (without CUDA graphs), s: "
        "the driver's ~4 µs plus the framework's dispatch (docs/optimizations.md).",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="Decode iterations replay a captured CUDA graph (vLLM's default): no "
        "CPU launch cost per kernel. False pays a launch per kernel where it exceeds "
        "the kernel.",
    )
    fast_forward: bool = Field(
        default=True,
        description="Advance runs of identical decode iterations in one event (exact; "
        "false steps every iteration, for testing).",
    )

    def limits(self, max_model_len: int) -> EngineLimits:
        """The knobs every policy may read, for a deployment accepting ``max_model_len``."""
        return EngineLimits(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            chunked_prefill=self.chunked_prefill,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            block_size_tokens=self.block_size_tokens,
            max_model_len=max_model_len,
            kv_watermark_frac=self.kv_watermark_frac,
        )

    @model_validator(mode="wrap")
    @classmethod
    def _apply_preset(cls, data: Any, handler: ModelWrapValidatorHandler[EngineConfig]
                      ) -> EngineConfig:
        # On the raw mapping, so "unset" means "absent": the preset fills only the keys
        # the scenario leaves out. A dumped scenario has every key, so reloading it
        # applies nothing new and round-trips unchanged.
        if not (isinstance(data, Mapping) and data.get("preset") is not None):
            return handler(data)
        engine = handler(apply_preset(data))
        # Only the scenario's own keys count as set (model_fields_set), not the preset's:
        # a dump with exclude_unset=True keeps the preset's name and the user's fields,
        # so a new preset applied to it fills the rest anew.
        object.__setattr__(engine, "__pydantic_fields_set__",
                           set(data) & set(type(engine).model_fields))
        return engine

    @model_validator(mode="after")
    def _check_preset_max_model_len(self) -> EngineConfig:
        # Presets of systems built for a fixed longest sequence (whole prompts in one
        # iteration, or KV reserved for the longest sequence per request) need it named:
        # the model's full context would not fit the budget, or would admit a handful.
        if self.preset is None:
            return self
        whole = not self.chunked_prefill
        if self.max_model_len is None and (whole or self.kv_reservation == "max"):
            why = (f"computes whole prompts (chunked_prefill off) in iterations of at most "
                   f"max_num_batched_tokens={self.max_num_batched_tokens} tokens" if whole
                   else "reserves KV for max_model_len tokens per request (kv_reservation "
                   "'max')")
            raise ValueError(
                f"engine.preset={self.preset!r} {why}, so it needs engine.max_model_len, the "
                f"longest prompt + output served (e.g. 8192); the default, the model's whole "
                f"context, would not fit or would admit only a few requests at a time"
            )
        if whole and self.max_model_len and self.max_model_len > self.max_num_batched_tokens:
            raise ValueError(
                f"engine.preset={self.preset!r} computes whole prompts (chunked_prefill off), "
                f"but engine.max_model_len={self.max_model_len} exceeds max_num_batched_tokens="
                f"{self.max_num_batched_tokens}: lower max_model_len or raise the budget"
            )
        return self

    @model_validator(mode="after")
    def _check_budget(self) -> EngineConfig:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= "
                f"max_num_seqs={self.max_num_seqs}: every running decode needs one token per step"
            )
        return self


class SLOConfig(_Section):
    """Latency targets a request must meet to count towards goodput."""

    ttft_s: float | None = Field(default=1.0, gt=0, description="Time to first token target, s.")
    tpot_s: float | None = Field(
        default=0.05, gt=0, description="Mean time per output token target (after the first), s."
    )


class StopConfig(_Section):
    """When the simulation ends. At least one bound must be set for open-ended workloads."""

    num_requests: int | None = Field(
        default=2000, gt=0, description="Requests issued; the run ends when all are done."
    )
    duration_s: float | None = Field(
        default=None,
        gt=0,
        description="Simulated seconds; arrivals stop and unfinished requests count as in flight.",
    )


def _default_workload() -> SyntheticWorkload:
    # ShareGPT-like lengths: vLLM's benchmark_serving on ShareGPT_V3 reports about 215
    # input and 198 output tokens per request on average (Llama tokenizer); lognormals with
    # sigma 1 and these medians have those means (median * e^0.5).
    return SyntheticWorkload(
        kind="synthetic",
        arrival=PoissonArrivals(kind="poisson", rate_per_s=10.0),
        prompt_tokens=LogNormalLength(
            kind="lognormal", median_tokens=130, sigma=1.0, min_tokens=4, max_tokens=4096
        ),
        output_tokens=LogNormalLength(
            kind="lognormal", median_tokens=120, sigma=1.0, min_tokens=1, max_tokens=2048
        ),
    )


class Scenario(_Section):
    """One simulation: model, hardware, deployment, engine, workload, SLO, stop, seed."""

    name: str = Field(default="default", description="Label for reports.")
    model: str | HFConfigModel | ModelSpec = Field(
        default="llama-3.1-8b",
        description="Catalog name (see `servesim models`), {hf_config: path}, or a full spec.",
    )
    model_transforms: tuple[ModelTransform, ...] = Field(
        default=(),
        description="Transforms applied to the model in order: {kind: prune, ...}, "
        "{kind: sparsity, pattern: '2:4'|unstructured, ...}, {kind: low_rank, rank, "
        "targets}, {kind: distill, student} (docs/optimizations.md).",
    )
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    workload: WorkloadConfig = Field(default_factory=_default_workload)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    seed: int = Field(default=0, ge=0, description="Seed of every random stream in the run.")

    @model_validator(mode="after")
    def _check_stop(self) -> Scenario:
        open_ended = self.workload.kind == "synthetic"
        if open_ended and self.stop.num_requests is None and self.stop.duration_s is None:
            raise ValueError(
                "stop needs num_requests or duration_s for a synthetic workload "
                "(otherwise it never ends)"
            )
        if (
            isinstance(self.workload, SyntheticWorkload)
            and self.workload.arrival.kind == "offline"
            and self.stop.num_requests is None
        ):
            raise ValueError("stop.num_requests is required with offline arrivals (all at t=0)")
        return self

    # ---- loading ----

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Scenario:
        """Load a YAML (or JSON) file; ``overrides`` are ``dotted.key=value`` strings."""
        return cls.from_dict(load_mapping(path), overrides)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> Scenario:
        """Alias of ``from_yaml``: YAML is a superset of JSON, so both load."""
        return cls.from_yaml(path, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> Scenario:
        data = json.loads(json.dumps(data, default=str))  # deep copy; never mutate the caller's
        for item in overrides or []:
            apply_override(data, item)
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)

    def with_overrides(self, overrides: list[str]) -> Scenario:
        """A new scenario with ``dotted.key=value`` overrides applied (this one is unchanged).

        An override of ``engine.preset`` re-applies presets to the engine fields this
        scenario did not set itself (those it set are kept)."""
        data = self.model_dump(mode="json")
        if any(item.partition("=")[0].strip() == "engine.preset" for item in overrides):
            data["engine"] = self.engine.model_dump(mode="json", exclude_unset=True)
        return Scenario.from_dict(data, overrides)


def load_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read scenario file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a mapping of scenario fields, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in ``data`` (value parsed as YAML: numbers, bools, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not of the form dotted.key=value")
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or isinstance(child, str):
            # A section given as a bare name (model: llama-3.1-8b) cannot take sub-keys.
            if isinstance(child, str):
                raise ValueError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a section"
                )
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)
