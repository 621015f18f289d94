"""Scenario loading, overrides, validation errors and deployment resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest
from conftest import tiny_scenario

from hardware.spec import GIB
from simulator.deployment import ScenarioError, resolve
from simulator.scenario import Scenario

EXAMPLE = Path(__file__).parents[2] / "examples" / "llama3-8b-h100.yaml"


def test_default_scenario_is_valid_and_round_trips_through_yaml(tmp_path):
    s = Scenario()
    path = tmp_path / "s.yaml"
    path.write_text(s.to_yaml())
    assert Scenario.from_yaml(path) == s


def test_json_loads_too(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"model": "mistral-7b", "engine": {"max_num_seqs": 64}}')
    s = Scenario.from_file(path)
    assert s.model == "mistral-7b" and s.engine.max_num_seqs == 64


def test_example_file_loads_and_overrides_apply():
    s = Scenario.from_yaml(EXAMPLE, ["engine.max_num_seqs=64", "workload.arrival.rate_per_s=5",
                                     "deployment.kv_cache_dtype=fp8"])
    assert s.engine.max_num_seqs == 64
    assert s.workload.arrival.rate_per_s == 5.0
    assert s.deployment.kv_cache_dtype == "fp8"
    assert Scenario.from_yaml(EXAMPLE).engine.max_num_seqs == 256  # file untouched


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("engine.max_num_seqs=-3", "engine.max_num_seqs"),
        ("engine.max_num_sequences=3", "engine.max_num_sequences"),
        ("deployment.weight_dtype=fp7", "deployment.weight_dtype"),
        ("slo.ttft_s=0", "slo.ttft_s"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(pydantic.ValidationError) as err:
        Scenario().with_overrides([override])
    locs = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}
    assert field in locs


def test_malformed_override_is_explained():
    with pytest.raises(ValueError, match=r"dotted\.key=value"):
        Scenario().with_overrides(["engine.max_num_seqs"])
    with pytest.raises(ValueError, match="not a section"):
        Scenario().with_overrides(["model.num_layers=3"])  # model is a catalog name


def test_cross_field_rules():
    with pytest.raises(pydantic.ValidationError, match="max_num_batched_tokens=64 must be >= "):
        Scenario().with_overrides(["engine.max_num_batched_tokens=64"])
    with pytest.raises(pydantic.ValidationError, match="W8A8"):
        Scenario().with_overrides(["deployment.activation_dtype=fp8"])
    with pytest.raises(pydantic.ValidationError, match="never ends"):
        Scenario().with_overrides(["stop.num_requests=null"])
    with pytest.raises(pydantic.ValidationError, match="offline"):
        Scenario().with_overrides(["workload.arrival={kind: offline}", "stop.num_requests=null",
                                   "stop.duration_s=10"])


def test_unknown_catalog_names_list_the_known_ones():
    with pytest.raises(ScenarioError, match=r"llama-3\.1-8b"):
        resolve(Scenario(model="llama-9"))
    with pytest.raises(ScenarioError, match="h100-sxm"):
        resolve(Scenario().with_overrides(["hardware.accelerator=h1000"]))


def test_a_model_that_does_not_fit_is_rejected_with_the_numbers():
    with pytest.raises(ScenarioError) as err:
        resolve(Scenario(model="llama-3.1-405b"))
    message = str(err.value)
    # 405.9e9 params x 2 bytes = 756 GiB of weights on one 79 GiB device.
    assert re.search(r"weights 75[56]\.\d\d GiB", message), message
    assert "h100-sxm" in message and "71.20 GiB" in message  # 79.11 GiB x 0.90


def test_memory_plan_for_llama3_8b_on_h100():
    memory = resolve(Scenario()).memory
    # 8.03e9 parameters in bf16 (embedding and LM head included) = 14.96 GiB.
    assert memory.weight_bytes / GIB == pytest.approx(8.03e9 * 2 / GIB, rel=0.01)
    accounted = memory.weight_bytes + memory.activation_bytes + memory.reserved_bytes
    block_bytes = 128 * 1024 * 16  # 128 KiB per token (GQA, bf16) x 16 tokens
    assert memory.usable_bytes - accounted - memory.kv_bytes < block_bytes
    assert memory.num_kv_blocks * block_bytes == memory.kv_bytes
    # 79.11 GiB x 0.9 = 71.2 GiB, less ~15 GiB of weights, ~1-2 GiB of activations and
    # 1 GiB reserved, leaves a little over 53 GiB for KV.
    assert 52 * GIB < memory.kv_bytes < 55 * GIB


def test_tensor_parallel_must_split_heads():
    with pytest.raises(ScenarioError, match="tensor_parallel=3"):
        resolve(Scenario().with_overrides(["deployment.tensor_parallel=3"]))


def test_max_model_len_checks():
    with pytest.raises(ScenarioError, match="exceeds"):
        resolve(tiny_scenario(engine={"max_model_len": 10_000}))
    with pytest.raises(ScenarioError, match="chunked_prefill"):
        resolve(tiny_scenario(engine={"chunked_prefill": False}))
