"""Workload config validation: bounds, kinds, constraints, frozen models, descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from workloads.config import (
    ArrivalProcess,
    ClosedLoopArrivals,
    ConstantArrivals,
    FixedLength,
    GammaArrivals,
    LengthDist,
    LogNormalLength,
    NormalLength,
    OfflineArrivals,
    PoissonArrivals,
    RequestClass,
    SharedPrefix,
    SyntheticWorkload,
    TraceWorkload,
    UniformLength,
    WorkloadConfig,
    ZipfLength,
)

ALL_MODELS: list[type[BaseModel]] = [
    FixedLength,
    UniformLength,
    NormalLength,
    LogNormalLength,
    ZipfLength,
    PoissonArrivals,
    GammaArrivals,
    ConstantArrivals,
    OfflineArrivals,
    ClosedLoopArrivals,
    SyntheticWorkload,
    TraceWorkload,
    RequestClass,
    SharedPrefix,
]


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "uniform", "min_tokens": 100, "max_tokens": 10},
        {"kind": "normal", "mean_tokens": 50, "std_tokens": 5, "min_tokens": 100, "max_tokens": 10},
        {"kind": "lognormal", "median_tokens": 50, "sigma": 1, "min_tokens": 100, "max_tokens": 10},
        {"kind": "zipf", "exponent": 1.5, "min_tokens": 100, "max_tokens": 10},
    ],
)
def test_min_above_max_names_both_fields_and_values(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=r"min_tokens \(100\) > max_tokens \(10\)"):
        TypeAdapter(LengthDist).validate_python(data)


def test_min_equal_max_is_allowed() -> None:
    assert UniformLength(min_tokens=7, max_tokens=7).max_tokens == 7


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError) as err:
        TypeAdapter(LengthDist).validate_python({"kind": "pareto"})
    for kind in ("fixed", "uniform", "normal", "lognormal", "zipf"):
        assert f"'{kind}'" in str(err.value)
    with pytest.raises(ValidationError) as err:
        TypeAdapter(ArrivalProcess).validate_python({"kind": "hawkes"})
    for kind in ("poisson", "gamma", "constant", "offline", "closed_loop"):
        assert f"'{kind}'" in str(err.value)
    with pytest.raises(ValidationError, match=r"'synthetic'.*'trace'"):
        TypeAdapter(WorkloadConfig).validate_python({"kind": "replay"})


@pytest.mark.parametrize(
    ("adapter", "data"),
    [
        (LengthDist, {"kind": "fixed", "tokens": 0}),
        (LengthDist, {"kind": "uniform", "min_tokens": 0, "max_tokens": 5}),
        (LengthDist, {"kind": "normal", "mean_tokens": 10, "std_tokens": -1}),
        (LengthDist, {"kind": "lognormal", "median_tokens": 0, "sigma": 1}),
        (LengthDist, {"kind": "zipf", "exponent": 1.0, "max_tokens": 5}),
        (LengthDist, {"kind": "zipf", "exponent": 1.5, "max_tokens": 2**23}),
        (ArrivalProcess, {"kind": "poisson", "rate_per_s": 0}),
        (ArrivalProcess, {"kind": "gamma", "rate_per_s": 1, "cv": 0}),
        (ArrivalProcess, {"kind": "constant", "rate_per_s": -2}),
        (ArrivalProcess, {"kind": "closed_loop", "concurrency": 0}),
        (ArrivalProcess, {"kind": "closed_loop", "concurrency": 4, "think_time_s": -1}),
        (ArrivalProcess, {"kind": "poisson", "rate_per_s": 1, "burst": 3}),  # extra field
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "time_scale": 0}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "time_unit": "min"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "format": "xlsx"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "output_column": "prompt_tokens"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "priority_column": "arrival_s"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "priority_column": "p",
                          "ttft_slo_column": "p"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "prefix_id_column": "pid"}),
        (WorkloadConfig, {"kind": "trace", "path": "t.csv", "prefix_tokens_column": "pt"}),
        (RequestClass, {"weight": 0}),
        (RequestClass, {"weight": 1, "ttft_slo_s": 0}),
        (RequestClass, {"weight": 1, "priority": 1.5}),
        (RequestClass, {"weight": 1, "name": "chat"}),  # extra field
        (SharedPrefix, {"num_prefixes": 0, "tokens": 10}),
        (SharedPrefix, {"num_prefixes": 2, "tokens": 0}),
        (SharedPrefix, {"num_prefixes": 2, "tokens": 10, "request_frac": 1.5}),
        (SyntheticWorkload, {"arrival": {"kind": "poisson", "rate_per_s": 1},
                             "prompt_tokens": {"kind": "fixed", "tokens": 1},
                             "output_tokens": {"kind": "fixed", "tokens": 1}, "classes": []}),
    ],
)
def test_constraint_violations_are_rejected(adapter: object, data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(adapter).validate_python(data)


def test_zipf_range_limit_message_has_the_numbers() -> None:
    with pytest.raises(ValidationError, match=r"max_tokens \(8388608\) - min_tokens \(1\)"):
        ZipfLength(exponent=1.5, max_tokens=2**23)


def test_models_are_frozen() -> None:
    dist = FixedLength(tokens=3)
    with pytest.raises(ValidationError):
        dist.tokens = 4  # type: ignore[misc]


def test_defaults() -> None:
    trace = TraceWorkload(path=Path("t.csv"))
    assert (trace.format, trace.time_scale, trace.time_unit) == (None, 1.0, "s")
    assert (trace.arrival_column, trace.prompt_column, trace.output_column) == (
        "arrival_s",
        "prompt_tokens",
        "output_tokens",
    )
    assert ClosedLoopArrivals(concurrency=8).think_time_s == 0.0
    assert NormalLength(mean_tokens=5, std_tokens=1).min_tokens == 1


def test_nested_workload_validates_and_round_trips() -> None:
    data = {
        "kind": "synthetic",
        "arrival": {"kind": "gamma", "rate_per_s": 4, "cv": 2},
        "prompt_tokens": {"kind": "lognormal", "median_tokens": 800, "sigma": 1.1},
        "output_tokens": {"kind": "zipf", "exponent": 1.3, "max_tokens": 2048},
    }
    adapter: TypeAdapter[SyntheticWorkload | TraceWorkload] = TypeAdapter(WorkloadConfig)
    workload = adapter.validate_python(data)
    assert isinstance(workload, SyntheticWorkload)
    assert isinstance(workload.output_tokens, ZipfLength)
    assert adapter.validate_json(adapter.dump_json(workload)) == workload
    assert adapter.json_schema()  # the schema renders (used for editor completion)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_field_is_described_and_every_model_documented(model: type[BaseModel]) -> None:
    assert model.__doc__ and model.__doc__.strip()
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
