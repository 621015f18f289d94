"""Engine behaviour: hand-derived iteration logs, closed forms, invariants, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.conformance import check_results
from simulator.cost import BatchShape
from simulator.deployment import resolve
from simulator.engine import simulate
from simulator.scenario import Scenario


def _fixed(prompt: int, output: int, n: int, arrival: dict | None = None) -> dict:
    return {
        "kind": "synthetic",
        "arrival": arrival or {"kind": "offline"},
        "prompt_tokens": {"kind": "fixed", "tokens": prompt},
        "output_tokens": {"kind": "fixed", "tokens": output},
    }


def _log(results) -> list[tuple[int, int, int]]:
    it = results.iterations
    return list(zip(it.num_prefill_tokens, it.num_prefill_seqs, it.num_decode_seqs, strict=True))


def test_two_requests_share_prefill_then_decode_together():
    # Both arrive at t=0: one iteration prefills 2 x 10 tokens and emits both first
    # tokens; then 2 decode iterations, each emitting one token per request.
    s = tiny_scenario(workload=_fixed(10, 3, 2), stop={"num_requests": 2})
    r = simulate(s)
    assert _log(r) == [(20, 2, 0), (0, 0, 2), (0, 0, 2)]
    assert list(r.requests.generated_tokens) == [3, 3]
    assert (r.requests.status == "finished").all()


def test_chunked_prefill_splits_prompt_and_fills_budget():
    # Budget 32 tokens, two 40-token prompts at t=0:
    #   it0: A 32 | it1: A 8 + B 24 (A emits) | it2: A decode + B 16 (A done, B emits)
    #   it3: B decode.
    s = tiny_scenario(
        workload=_fixed(40, 2, 2), stop={"num_requests": 2},
        engine={"max_num_batched_tokens": 32, "max_num_seqs": 8},
    )
    r = simulate(s)
    assert _log(r) == [(32, 1, 0), (32, 2, 0), (16, 1, 1), (0, 0, 1)]


def test_no_chunking_waits_for_a_budget_that_fits_whole_prompts():
    s = tiny_scenario(
        workload=_fixed(300, 2, 3), stop={"num_requests": 3},
        engine={"max_num_batched_tokens": 700, "chunked_prefill": False, "max_model_len": 700},
    )
    r = simulate(s)
    # Two 300-token prompts fit in 700; the third waits for the next iteration, which
    # also carries the two decodes (2 + 300 <= 700).
    assert _log(r) == [(600, 2, 0), (300, 1, 2), (0, 0, 1)]


def test_max_num_seqs_caps_the_batch():
    s = tiny_scenario(workload=_fixed(8, 2, 3), stop={"num_requests": 3},
                      engine={"max_num_seqs": 2, "max_num_batched_tokens": 64})
    r = simulate(s)
    assert _log(r) == [(16, 2, 0), (0, 0, 2), (8, 1, 0), (0, 0, 1)]


def test_single_request_times_match_the_cost_model():
    prompt, output = 200, 50
    s = tiny_scenario(workload=_fixed(prompt, output, 1), stop={"num_requests": 1})
    r = simulate(s)
    cost = resolve(s).cost
    prefill_s = float(cost.price(BatchShape((prompt,), (0,))).seconds)
    # Decode step j attends prompt + j cached tokens plus its new one.
    decode_s = [
        float(cost.price(BatchShape(num_decode_seqs=1, decode_context_tokens=prompt + j)).seconds)
        for j in range(1, output)
    ]
    req = r.requests.iloc[0]
    assert req.ttft_s == pytest.approx(prefill_s, abs=1e-8)
    assert req.tpot_s == pytest.approx(np.mean(decode_s), rel=1e-7)
    assert req.e2e_s == pytest.approx(prefill_s + sum(decode_s), abs=1e-7)


def test_batch1_decode_is_weight_streaming_bound():
    # A 70B-class model at batch 1: each token streams every weight once, so the step
    # time is close to weight bytes / (HBM bandwidth x weight-streaming efficiency).
    s = tiny_scenario(
        model="llama-3.1-70b",
        hardware={"accelerator": {**tiny_scenario().hardware.accelerator.model_dump(),
                                  "memory_gib": 200.0, "hbm_tb_per_s": 3.35,
                                  "peak_tflops": {"bf16": 989.0}}},
        engine={"iteration_overhead_s": 0.0, "max_model_len": 4096},
        workload=_fixed(16, 64, 1), stop={"num_requests": 1},
    )
    r = simulate(s)
    weight_bytes = 70.6e9 * 2
    expected_s = weight_bytes / (3.35e12 * 0.86)
    assert r.requests.tpot_s.iloc[0] == pytest.approx(expected_s, rel=0.10)


def test_same_seed_identical_other_seed_different():
    a, b = simulate(tiny_scenario()), simulate(tiny_scenario())
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)
    c = simulate(tiny_scenario(seed=2))
    assert not a.requests.arrival_s.equals(c.requests.arrival_s)


def _assert_invariants(results, capacity_blocks: int) -> None:
    check_results(results, capacity_blocks)


def test_preemption_under_kv_pressure_keeps_invariants():
    s = tiny_scenario(
        hardware={"accelerator": {**tiny_scenario().hardware.accelerator.model_dump(),
                                  "memory_gib": 0.01}},
        engine={"max_num_batched_tokens": 256, "max_num_seqs": 32,
                "gpu_memory_utilization_frac": 1.0},
        workload=_fixed(200, 400, 40, {"kind": "poisson", "rate_per_s": 200.0}),
        stop={"num_requests": 40},
    )
    capacity = resolve(s).memory.num_kv_blocks
    r = simulate(s)
    assert r.requests.num_preemptions.sum() > 0
    assert (r.requests.status == "finished").all()
    _assert_invariants(r, capacity)
    assert len(r.itl_extra_s) > 0
    # Each preemption drops at least one cached token, all of which are prefilled again.
    req = r.requests
    assert req.recomputed_tokens.sum() >= req.num_preemptions.sum()
    prefilled = r.iterations.num_prefill_tokens.sum()
    assert prefilled >= req.prompt_tokens.sum() + req.recomputed_tokens.sum()
    assert r.summary()["recomputed_tokens"] == req.recomputed_tokens.sum()
    # Fast-forwarding through preemptions and recomputes changes nothing.
    stepped = simulate(s.with_overrides(["engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(r.requests, stepped.requests, check_exact=True)
    pd.testing.assert_frame_equal(r.iterations, stepped.iterations, check_exact=True)


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"stop": {"num_requests": None, "duration_s": 3.0}},
        {"deployment": {"replicas": 3}},
        {"model": {"sliding_window_tokens": 64}},
        {"engine": {"max_num_batched_tokens": 64, "long_prefill_token_threshold": 40}},
        {"hardware": {"accelerator": {"memory_gib": 0.01}},
         "engine": {"gpu_memory_utilization_frac": 1.0}},
        {"workload": {"kind": "synthetic",
                      "arrival": {"kind": "closed_loop", "concurrency": 7, "think_time_s": 0.01},
                      "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 300},
                      "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 120}}},
    ],
    ids=["base", "duration", "replicas", "window", "chunk", "kv-pressure", "closed-loop"],
)
def test_fast_forward_is_identical_to_stepping(sections):
    if "hardware" in sections:
        device = {**tiny_scenario().hardware.accelerator.model_dump(),
                  **sections["hardware"]["accelerator"]}
        sections = {**sections, "hardware": {"accelerator": device}}
    fast = tiny_scenario(**sections)
    slow = fast.with_overrides(["engine.fast_forward=false"])
    a, b = simulate(fast), simulate(slow)
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)
    np.testing.assert_array_equal(a.itl_extra_s, b.itl_extra_s)
    _assert_invariants(a, resolve(fast).memory.num_kv_blocks)


def test_duration_stop_reports_in_flight():
    s = tiny_scenario(stop={"num_requests": None, "duration_s": 2.0},
                      workload=_fixed(100, 2000, 0, {"kind": "poisson", "rate_per_s": 20.0}),
                      engine={"max_model_len": 4096})
    for fast_forward in (True, False):
        r = simulate(s.with_overrides([f"engine.fast_forward={fast_forward}"]))
        assert (r.requests.status == "in_flight").any()
        assert r.requests.arrival_s.max() < 2.0
        assert r.info.end_s == 2.0
        # Only iterations that completed are rows; the one cut off by the stop is not.
        assert (r.iterations.start_s + r.iterations.duration_s < 2.0).all()


def test_impossible_requests_are_rejected_and_counted():
    s = tiny_scenario(
        workload={"kind": "synthetic", "arrival": {"kind": "offline"},
                  "prompt_tokens": {"kind": "uniform", "min_tokens": 100, "max_tokens": 3000},
                  "output_tokens": {"kind": "fixed", "tokens": 1000}},
        engine={"max_model_len": 2048}, stop={"num_requests": 50},
    )
    r = simulate(s)
    too_long = r.requests.prompt_tokens + r.requests.output_tokens > 2048
    assert too_long.any() and (~too_long).any()
    assert (r.requests.status[too_long] == "rejected").all()
    assert (r.requests.status[~too_long] == "finished").all()
    assert r.requests.reject_reason[too_long].str.contains("max_model_len 2048").all()
    assert r.summary()["num_rejected"] == too_long.sum()


def test_closed_loop_never_exceeds_its_concurrency():
    s = tiny_scenario(
        workload={"kind": "synthetic",
                  "arrival": {"kind": "closed_loop", "concurrency": 5},
                  "prompt_tokens": {"kind": "fixed", "tokens": 50},
                  "output_tokens": {"kind": "fixed", "tokens": 20}},
        stop={"num_requests": 40},
    )
    r = simulate(s)
    req = r.requests
    assert len(req) == 40 and (req.status == "finished").all()
    events = sorted([(t, 1) for t in req.arrival_s] + [(t, -1) for t in req.finish_s],
                    key=lambda e: (e[0], e[1]))
    in_system = np.cumsum([d for _, d in events])
    assert in_system.max() == 5
    assert (r.iterations.num_prefill_seqs + r.iterations.num_decode_seqs <= 5).all()


def test_round_robin_spreads_requests():
    s = tiny_scenario(deployment={"replicas": 4}, stop={"num_requests": 40})
    counts = simulate(s).requests.replica.value_counts()
    assert sorted(counts.index) == [0, 1, 2, 3]
    assert (counts == 10).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_num_seqs=st.integers(1, 16),
    budget_extra=st.integers(0, 300),
    chunked=st.booleans(),
    block=st.sampled_from([1, 4, 16]),
    memory_gib=st.sampled_from([0.008, 0.01, 0.05]),
    rate=st.floats(20.0, 2000.0),
    max_prompt=st.integers(1, 400),
    max_output=st.integers(1, 300),
    replicas=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_random_scenarios_keep_invariants_and_fast_forward_exactness(
    max_num_seqs, budget_extra, chunked, block, memory_gib, rate, max_prompt, max_output,
    replicas, seed,
):
    budget = max(max_num_seqs, 1) + budget_extra
    engine = {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": budget,
              "chunked_prefill": chunked, "block_size_tokens": block,
              "gpu_memory_utilization_frac": 1.0}
    if not chunked:
        engine["max_model_len"] = budget
    s = tiny_scenario(
        hardware={"accelerator": {**tiny_scenario().hardware.accelerator.model_dump(),
                                  "memory_gib": memory_gib}},
        engine=engine,
        deployment={"replicas": replicas},
        workload={"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": rate},
                  "prompt_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": max_prompt},
                  "output_tokens": {"kind": "uniform", "min_tokens": 1,
                                    "max_tokens": max_output}},
        stop={"num_requests": 60},
        seed=seed,
    )
    r = simulate(s)
    req = r.requests
    assert len(req) == 60
    assert set(req.status) <= {"finished", "rejected"}
    _assert_invariants(r, resolve(s).memory.num_kv_blocks)
    stepped = simulate(s.with_overrides(["engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(req, stepped.requests, check_exact=True)
    pd.testing.assert_frame_equal(r.iterations, stepped.iterations, check_exact=True)


def test_trace_replay_and_hf_config_from_a_scenario(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,5\n0.5,50,3\n0.5,20,1\n")
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    config.write_text(
        '{"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 256,'
        ' "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,'
        ' "vocab_size": 1000, "max_position_embeddings": 4096}'
    )
    base = tiny_scenario(workload={"kind": "trace", "path": str(trace)},
                         stop={"num_requests": None})
    s = Scenario.model_validate({**base.model_dump(), "model": {"hf_config": str(config)}})
    r = simulate(s)
    req = r.requests
    assert list(req.arrival_s) == [0.0, 0.5, 0.5]
    assert list(req.prompt_tokens) == [100, 50, 20]
    assert list(req.generated_tokens) == [5, 3, 1]
    assert (req.status == "finished").all()
    assert resolve(s).model.name == "model"


def test_routing_ahead_skips_rejected_requests():
    # Rejected requests never reach a replica, so round robin cycles over the accepted.
    s = tiny_scenario(
        deployment={"replicas": 3},
        workload={"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 100.0},
                  "prompt_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 3000},
                  "output_tokens": {"kind": "fixed", "tokens": 1000}},
        engine={"max_model_len": 2048}, stop={"num_requests": 60},
    )
    req = simulate(s).requests
    accepted = req[req.status != "rejected"]
    assert (req.replica[req.status == "rejected"] == -1).all()
    assert list(accepted.replica) == [i % 3 for i in range(len(accepted))]


@pytest.mark.parametrize("stop", [{"num_requests": 300}, {"num_requests": None, "duration_s": 3.0}])
def test_replica_groups_in_worker_processes_give_identical_frames(stop):
    s = tiny_scenario(
        deployment={"replicas": 5}, stop=stop,
        workload={"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 300.0},
                  "prompt_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 2500},
                  "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 400}},
        engine={"max_model_len": 2048},
    )
    one, two = simulate(s, workers=1), simulate(s, workers=2)
    assert (one.requests.status == "rejected").any()
    pd.testing.assert_frame_equal(one.requests, two.requests, check_exact=True)
    pd.testing.assert_frame_equal(one.iterations, two.iterations, check_exact=True)
    np.testing.assert_array_equal(one.itl_extra_s, two.itl_extra_s)
    assert one.info.end_s == two.info.end_s


def test_a_chunk_short_of_blocks_preempts_a_later_decoding_request(tmp_path):
    # A (800-token prompt) is admitted first and prefills 32 tokens an iteration; seven
    # short requests admitted after it are already decoding. When the cache (60 blocks)
    # runs out, A's next chunk preempts the most recently admitted request, a decoding
    # one, as vLLM does; that decode must then leave the iteration.
    rows = ["0.0,800,10"] + ["0.0001,4,300"] * 7
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    s = tiny_scenario(
        hardware={"accelerator": {**tiny_scenario().hardware.accelerator.model_dump(),
                                  "memory_gib": 0.0045}},
        engine={"max_num_batched_tokens": 64, "max_num_seqs": 16,
                "long_prefill_token_threshold": 32, "gpu_memory_utilization_frac": 1.0},
        workload={"kind": "trace", "path": str(trace)}, stop={"num_requests": None},
    )
    r = simulate(s)
    req = r.requests
    assert req.num_preemptions.iloc[1:].sum() > 0 and req.num_preemptions.iloc[0] == 0
    assert (req.status == "finished").all()
    _assert_invariants(r, resolve(s).memory.num_kv_blocks)
    stepped = simulate(s.with_overrides(["engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(r.iterations, stepped.iterations, check_exact=True)


def test_closed_loop_with_only_impossible_requests_fails_clearly_instead_of_spinning():
    from simulator.deployment import ScenarioError

    s = tiny_scenario(
        workload={"kind": "synthetic", "arrival": {"kind": "closed_loop", "concurrency": 4},
                  "prompt_tokens": {"kind": "fixed", "tokens": 3000},
                  "output_tokens": {"kind": "fixed", "tokens": 2000}},
        stop={"num_requests": None, "duration_s": 1.0},
    )
    with pytest.raises(ScenarioError, match="rejected"):
        simulate(s)
    # With a request count the clients simply run out of requests.
    r = simulate(s.with_overrides(["stop.num_requests=50", "stop.duration_s=null"]))
    assert (r.requests.status == "rejected").sum() == 50
