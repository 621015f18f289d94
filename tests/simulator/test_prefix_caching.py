"""Prefix caching through the engine: shared system prompts, sessions, affinity routing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_DEVICE, tiny_scenario

from simulator import Scenario, check_policy, simulate

SYSTEM_PROMPT = {"num_prefixes": 4, "tokens": 2000}


def _llama(shared_prefix: dict | None, cache: str) -> pd.Series:
    workload = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 8.0},
                "prompt_tokens": {"kind": "uniform", "min_tokens": 50, "max_tokens": 300},
                "output_tokens": {"kind": "uniform", "min_tokens": 20, "max_tokens": 200}}
    if shared_prefix is not None:
        workload["shared_prefix"] = shared_prefix
    scenario = Scenario.model_validate({
        "model": "llama-3.1-8b", "engine": {"prefix_cache": cache},
        "workload": workload, "stop": {"num_requests": 300},
    })
    return simulate(scenario).summary()


def test_a_shared_system_prompt_is_computed_once_and_ttft_drops():
    # Four 2000-token system prompts before 50-300 user tokens: after each prefix's first
    # request, later ones compute only their user part (~9% of the prompt), so prefill
    # tokens fall ~10x and TTFT, which is mostly prefill at this light load, several-fold.
    cached, uncached = _llama(SYSTEM_PROMPT, "hashed"), _llama(SYSTEM_PROMPT, "none")
    mean_prompt = 2000 + 175
    assert cached["prefix_hit_rate_frac"] == pytest.approx(2000 // 16 * 16 / mean_prompt,
                                                           rel=0.05)
    assert uncached["prefix_hit_rate_frac"] == 0
    assert cached["ttft_p50_s"] < 0.4 * uncached["ttft_p50_s"]
    assert cached["ttft_p99_s"] < uncached["ttft_p99_s"]


def test_without_shared_prefixes_the_cache_changes_nothing():
    # No request names a prefix: the runs must be identical, frame for frame.
    s = tiny_scenario()
    on = simulate(s.with_overrides(["engine.prefix_cache=hashed"]))
    off = simulate(s.with_overrides(["engine.prefix_cache=none"]))
    pd.testing.assert_frame_equal(on.requests, off.requests)
    pd.testing.assert_frame_equal(on.iterations, off.iterations)
    assert on.summary()["prefix_hit_rate_frac"] == 0


def test_token_granular_radix_hits_the_whole_prefix():
    # Radix at page size 1 reuses all 2010 prefix tokens; hashed blocks of 16 reuse
    # 2000 (125 whole blocks), so radix saves a little more per request.
    radix = tiny_scenario(
        workload={"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 50.0},
                  "prompt_tokens": {"kind": "fixed", "tokens": 10},
                  "output_tokens": {"kind": "fixed", "tokens": 5},
                  "shared_prefix": {"num_prefixes": 1, "tokens": 2010}},
        engine={"prefix_cache": "radix", "block_size_tokens": 1, "max_num_batched_tokens": 4096},
        stop={"num_requests": 50})
    hashed = radix.with_overrides(["engine.prefix_cache=hashed", "engine.block_size_tokens=16"])
    r, h = simulate(radix).requests, simulate(hashed).requests
    assert r.prefix_hit_tokens.iloc[0] == 0 and h.prefix_hit_tokens.iloc[0] == 0
    assert (r.prefix_hit_tokens.iloc[1:] == 2010).all()
    assert (h.prefix_hit_tokens.iloc[1:] == 2000).all()


def test_a_session_turn_reuses_the_previous_turn_including_its_output(tmp_path: Path):
    # Turns of one session, each arriving long after the previous one finished: turn k's
    # prompt is turn k-1's prompt + its output + 30 new tokens. The cache holds turn
    # k-1's prompt and output but the last generated token (never fed back), in whole
    # blocks of 16: the hit is (prompt + output - 1) // 16 * 16 of the previous turn.
    prompts, outputs = [100], [40]
    for _ in range(4):
        prompts.append(prompts[-1] + outputs[-1] + 30)
        outputs.append(40)
    trace = pd.DataFrame({"arrival_s": [10.0 * i for i in range(5)], "prompt_tokens": prompts,
                          "output_tokens": outputs, "session": 7, "history": prompts})
    trace.to_csv(tmp_path / "turns.csv", index=False)
    s = tiny_scenario(workload={"kind": "trace", "path": str(tmp_path / "turns.csv"),
                                "prefix_id_column": "session",
                                "prefix_tokens_column": "history"},
                      stop={"num_requests": None})
    hits = simulate(s).requests.prefix_hit_tokens.tolist()
    expected = [0, *((p + o - 1) // 16 * 16 for p, o in zip(prompts[:4], outputs[:4], strict=True))]
    assert hits == expected


def test_prefix_affinity_routing_keeps_each_prefix_on_one_replica():
    # 40 prefixes of 1000 tokens over 4 replicas whose caches hold ~17k tokens each: round
    # robin sends every prefix everywhere, so each replica cycles through all 40 (40k
    # tokens) and LRU evicts before reuse; affinity gives each replica ~10 (10k), which
    # stay cached. Expect the hit rate to more than double and prefill to fall ~5x.
    def run(routing: str) -> tuple[float, int]:
        s = tiny_scenario(
            workload={"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 400.0},
                      "prompt_tokens": {"kind": "uniform", "min_tokens": 20, "max_tokens": 100},
                      "output_tokens": {"kind": "uniform", "min_tokens": 10, "max_tokens": 60},
                      "shared_prefix": {"num_prefixes": 40, "tokens": 1000}},
            hardware={"accelerator": {**TINY_DEVICE, "memory_gib": 0.03}},
            deployment={"replicas": 4},
            engine={"gpu_memory_utilization_frac": 1.0, "routing": routing,
                    "max_model_len": 2048, "max_num_batched_tokens": 2048},
            stop={"num_requests": 2000})
        r = simulate(s)
        return r.summary()["prefix_hit_rate_frac"], int(r.iterations.num_prefill_tokens.sum())

    rr_hit, rr_prefill = run("round_robin")
    affinity_hit, affinity_prefill = run("prefix_affinity")
    assert affinity_hit > 2 * rr_hit
    assert affinity_prefill < 0.3 * rr_prefill


@pytest.mark.parametrize("engine", [
    {"prefix_cache": "hashed"},
    {"prefix_cache": "radix", "block_size_tokens": 1},
    {"prefix_cache": "hashed", "preemption_mode": "swap", "swap_space_gib": 0.001},
    {"prefix_cache": "hashed", "kv_reservation": "predicted",
     "predictor": {"kind": "noisy", "sigma": 0.5}},
])
def test_prefix_caching_keeps_the_engine_invariants(engine):
    # The conformance cases include shared prefixes under KV pressure (evictions).
    check_policy("batching", "token_budget", engine=engine)
