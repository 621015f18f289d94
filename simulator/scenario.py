"""Scenario: everything one simulation needs, as one validated, frozen pydantic model.

A scenario loads from YAML, JSON or a dict, and every section has defaults, so
``Scenario()`` is the built-in default run: Llama-3.1-8B on one H100 SXM under a
ShareGPT-like Poisson load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

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
from simulator.dtypes import DType
from simulator.model import ModelSpec
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


class DeploymentConfig(_Section):
    """How the model is laid out on devices, and at what precision."""

    tensor_parallel: int = Field(default=1, gt=0, description="Devices per replica (TP degree).")
    replicas: int = Field(default=1, gt=0, description="Identical data-parallel replicas.")
    weight_dtype: DType = Field(default="bf16", description="Storage format of linear weights.")
    activation_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8"] = Field(
        default="bf16",
        description="Format GEMM inputs are computed in; fp8/int8 need weights of the same "
        "format (W8A8).",
    )
    kv_cache_dtype: Literal["auto", "fp32", "bf16", "fp16", "fp8", "int8"] = Field(
        default="auto", description="KV cache element format; 'auto' follows the activations."
    )

    @model_validator(mode="after")
    def _check_precision(self) -> DeploymentConfig:
        if self.activation_dtype in ("fp8", "int8") and self.weight_dtype != self.activation_dtype:
            raise ValueError(
                f"activation_dtype={self.activation_dtype!r} needs weight_dtype="
                f"{self.activation_dtype!r} (W8A8), got weight_dtype={self.weight_dtype!r}"
            )
        return self

    @property
    def resolved_kv_cache_dtype(self) -> DType:
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        return "bf16" if self.activation_dtype in ("fp8", "int8") else self.activation_dtype

    @property
    def num_devices(self) -> int:
        return self.tensor_parallel * self.replicas


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
