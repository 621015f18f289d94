"""Engine presets: each resolves and runs, user fields win, dumps round-trip, and the
distinctive behaviour of each system shows."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_DEVICE, tiny_scenario
from pydantic import ValidationError

from simulator import Scenario, simulate
from simulator.conformance import check_results
from simulator.deployment import resolve
from simulator.presets import PRESETS, apply_preset
from simulator.scenario import EngineConfig

NAMES = sorted(PRESETS)

# A few hundred KV blocks under a load that needs more: paged allocation preempts.
PRESSURE = {
    "hardware": {"accelerator": {**TINY_DEVICE, "memory_gib": 0.01}},
    "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 400.0},
                 "prompt_tokens": {"kind": "uniform", "min_tokens": 20, "max_tokens": 200},
                 "output_tokens": {"kind": "uniform", "min_tokens": 50, "max_tokens": 400}},
    "stop": {"num_requests": 300},
}
PRESSURE_ENGINE = {"gpu_memory_utilization_frac": 1.0, "max_num_batched_tokens": 1024,
                   "max_model_len": 1000}


def _tiny(name: str, **engine):
    # tiny_scenario sets max_num_seqs=32 and max_num_batched_tokens=512 itself (they win
    # over the preset's); prompts <= 300 + outputs <= 120 fit max_model_len=512.
    return tiny_scenario(engine={"preset": name, "max_model_len": 512, **engine})


def _pressure(name: str):
    return simulate(tiny_scenario(**PRESSURE, engine={"preset": name, **PRESSURE_ENGINE}))


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_runs_a_small_scenario_to_the_end(name):
    scenario = _tiny(name)
    assert scenario.engine.preset == name
    results = simulate(scenario)
    check_results(results, resolve(scenario).memory.num_kv_blocks)
    assert (results.requests.status == "finished").all()
    # The preset's combination of policies fast-forwards exactly.
    stepped = simulate(scenario.with_overrides(["engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(results.requests, stepped.requests, check_exact=True)
    pd.testing.assert_frame_equal(results.iterations, stepped.iterations, check_exact=True)


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_runs_on_the_default_model(name):
    # Llama-3.1-8B on one H100. Presets that compute whole prompts or reserve KV for the
    # longest sequence need max_model_len bounded; the others run on the bare default.
    needs_bound = not EngineConfig(preset=name, max_model_len=8192).chunked_prefill or (
        EngineConfig(preset=name, max_model_len=8192).kv_reservation == "max"
    )
    engine = {"preset": name, **({"max_model_len": 8192} if needs_bound else {})}
    scenario = Scenario.from_dict({"engine": engine, "stop": {"num_requests": 30}})
    results = simulate(scenario)
    assert (results.requests.status == "finished").all()


def test_presets_set_only_engine_fields_and_say_what_they_are():
    fields = set(EngineConfig.model_fields) - {"preset"}
    for name, preset in PRESETS.items():
        assert set(preset.engine) <= fields, name
        assert preset.description, name
    assert set(NAMES) == {"vllm", "sglang", "trtllm", "orca", "sarathi", "fastertransformer",
                          "lightllm"}


@pytest.mark.parametrize("name", NAMES)
def test_a_preset_is_its_values_written_out(name):
    by_name = EngineConfig(preset=name, max_model_len=8192)
    by_hand = EngineConfig.model_validate({**PRESETS[name].engine, "max_model_len": 8192})
    assert by_name.model_dump(exclude={"preset"}) == by_hand.model_dump(exclude={"preset"})


def test_fields_the_user_sets_win_and_the_rest_come_from_the_preset():
    engine = EngineConfig(preset="sglang", block_size_tokens=16, prefix_cache="none",
                          batching="token_budget")
    assert engine.block_size_tokens == 16
    assert engine.prefix_cache == "none"
    assert engine.batching.kind == "token_budget"
    assert engine.max_num_batched_tokens == 8192  # SGLang's chunked_prefill_size
    assert engine.max_num_seqs == 2048
    assert engine.kv_reservation == "paged"
    # An unset field that the preset does not name keeps the engine's default.
    assert engine.iteration_overhead_s == EngineConfig().iteration_overhead_s
    # The same through a scenario's overrides, as `servesim run --set` applies them.
    scenario = Scenario.from_dict({"engine": {"preset": "vllm"}},
                                  ["engine.max_num_seqs=64", "engine.prefix_cache=radix"])
    assert scenario.engine.max_num_seqs == 64
    assert scenario.engine.prefix_cache == "radix"
    assert scenario.engine.block_size_tokens == 16


def test_apply_preset_does_not_touch_its_argument():
    raw = {"preset": "orca", "max_model_len": 4096}
    out = apply_preset(raw)
    assert raw == {"preset": "orca", "max_model_len": 4096}
    assert out["batching"] == "orca" and out["max_model_len"] == 4096
    out2 = apply_preset({"preset": "sarathi"})
    out2["batching"]["token_budget"] = 1  # a copy: the preset itself is unchanged
    assert PRESETS["sarathi"].engine["batching"]["token_budget"] == 512
    assert apply_preset({"max_num_seqs": 4}) == {"max_num_seqs": 4}


def test_an_unknown_preset_is_named_with_the_known_ones():
    with pytest.raises(ValidationError) as info:
        Scenario.from_dict({"engine": {"preset": "vlm"}})
    message = str(info.value)
    assert "'vlm'" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_a_dumped_scenario_reloads_identical_and_keeps_the_preset_name(name):
    scenario = Scenario.from_dict({"engine": {"preset": name, "max_model_len": 8192,
                                              "max_num_seqs": 200}})
    text = scenario.to_yaml()
    dumped = yaml.safe_load(text)
    assert dumped["engine"]["preset"] == name
    assert dumped["engine"]["max_num_seqs"] == 200
    reloaded = Scenario.from_dict(dumped)
    assert reloaded == scenario
    assert reloaded.to_yaml() == text
    # Re-applying the preset on the resolved values changes nothing.
    assert Scenario.from_dict(scenario.model_dump(mode="json")) == scenario
    assert scenario.with_overrides([]) == scenario


def test_only_the_scenarios_own_engine_keys_count_as_set():
    engine = EngineConfig(preset="sglang", max_num_seqs=64)
    assert engine.model_fields_set == {"preset", "max_num_seqs"}
    assert engine.model_dump(exclude_unset=True) == {"preset": "sglang", "max_num_seqs": 64}
    assert engine.block_size_tokens == 1


def test_an_override_of_the_preset_fills_the_fields_the_scenario_did_not_set():
    # `servesim run --set engine.preset=sglang` without a file goes through this path.
    sglang = Scenario().with_overrides(["engine.preset=sglang"])
    assert sglang.engine.batching.kind == "prefill_first"
    assert sglang.engine.block_size_tokens == 1
    mine = Scenario.from_dict({"engine": {"preset": "sglang", "max_num_seqs": 64}})
    vllm = mine.with_overrides(["engine.preset=vllm"])
    assert vllm.engine.max_num_seqs == 64  # set by the scenario: kept
    assert vllm.engine.block_size_tokens == 16  # from the new preset
    assert vllm.engine.batching.kind == "token_budget"


@pytest.mark.parametrize("name", ["trtllm", "orca", "fastertransformer", "lightllm"])
def test_presets_that_need_a_bounded_max_model_len_say_so(name):
    with pytest.raises(ValidationError, match=f"engine.preset='{name}'.*max_model_len"):
        Scenario.from_dict({"engine": {"preset": name}})


def test_whole_prompt_presets_refuse_a_max_model_len_beyond_their_budget():
    with pytest.raises(ValidationError, match=r"preset='trtllm'.*16384 exceeds "
                                              r"max_num_batched_tokens=8192"):
        EngineConfig(preset="trtllm", max_model_len=16384)
    assert EngineConfig(preset="trtllm", max_model_len=16384,
                        max_num_batched_tokens=16384).max_model_len == 16384


# ---- behaviour of the systems the presets stand for


def test_trtllm_never_preempts_under_kv_pressure_while_vllm_does():
    # GUARANTEED_NO_EVICT reserves prompt + most output at admission; vLLM allocates
    # block by block and preempts (recompute) when the cache runs out.
    trtllm, vllm = _pressure("trtllm"), _pressure("vllm")
    assert (trtllm.requests.status == "finished").all()
    assert trtllm.summary()["num_preemptions"] == 0
    assert vllm.summary()["num_preemptions"] > 0


def test_fastertransformer_never_joins_a_running_batch():
    results = simulate(_tiny("fastertransformer"))
    req = results.requests.sort_values("first_scheduled_s")
    starts = req.first_scheduled_s.to_numpy()
    finishes = req.finish_s.to_numpy()
    batches = np.unique(starts)
    assert len(batches) > 1
    for earlier, later in itertools.pairwise(batches):
        # Every member of a batch finishes before the next batch is admitted.
        assert finishes[starts == earlier].max() <= later


def test_sglang_and_lightllm_never_mix_prefill_and_decode_while_vllm_does():
    for name in ["sglang", "lightllm"]:
        it = simulate(_tiny(name)).iterations
        assert (it.num_decode_seqs[it.num_prefill_seqs > 0] == 0).all(), name
    it = simulate(_tiny("vllm")).iterations
    assert (it.num_decode_seqs[it.num_prefill_seqs > 0] > 0).any()


def test_token_level_presets_hold_exactly_the_tokens_they_compute():
    # Page size 1 (SGLang, LightLLM): no last-block slack.
    it = simulate(_tiny("sglang")).iterations
    assert (it.kv_blocks_used == it.kv_tokens).all()


def test_sarathi_keeps_every_iteration_within_its_token_budget():
    engine = {"max_num_batched_tokens": 2048, "max_model_len": 2048}
    workload = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 100.0},
                "prompt_tokens": {"kind": "uniform", "min_tokens": 500, "max_tokens": 1500},
                "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 50}}
    sarathi = simulate(tiny_scenario(engine={"preset": "sarathi", **engine}, workload=workload))
    vllm = simulate(tiny_scenario(engine={"preset": "vllm", **engine}, workload=workload))
    tokens = sarathi.iterations.num_prefill_tokens + sarathi.iterations.num_decode_seqs
    assert tokens.max() <= 512
    assert (vllm.iterations.num_prefill_tokens + vllm.iterations.num_decode_seqs).max() > 512


def test_orca_computes_each_prompt_in_one_iteration():
    results = simulate(_tiny("orca"))
    req, it = results.requests, results.iterations
    first = it.set_index("start_s").loc[req.first_scheduled_s.to_numpy()]
    assert np.array_equal(req.first_token_s.to_numpy(),
                          (first.index + first.duration_s).to_numpy())


def test_prefix_caches_follow_the_system():
    assert EngineConfig(preset="vllm").prefix_cache == "hashed"
    assert EngineConfig(preset="sglang").prefix_cache == "radix"
    assert EngineConfig(preset="sarathi").prefix_cache == "none"
    shared = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 50.0},
              "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 100},
              "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 50},
              "shared_prefix": {"num_prefixes": 2, "tokens": 100}}
    hits = {name: simulate(tiny_scenario(engine={"preset": name, "max_model_len": 512},
                                         workload=shared)).summary()["prefix_hit_rate_frac"]
            for name in ["sglang", "vllm", "sarathi"]}
    assert hits["sarathi"] == 0
    assert hits["sglang"] > hits["vllm"] > 0  # token-granular beats whole blocks
