"""Decoding strategies: speculative and lookahead steps, beams and parallel samples."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scenario_with
from scipy import stats

from simulator import ScenarioError, resolve, simulate
from simulator.decoding import expected_tokens_per_step


def _fixed(prompt: int, output: int, rate: float | None = None) -> dict:
    arrival = {"kind": "offline"} if rate is None else {"kind": "poisson", "rate_per_s": rate}
    return {"kind": "synthetic", "arrival": arrival,
            "prompt_tokens": {"kind": "fixed", "tokens": prompt},
            "output_tokens": {"kind": "fixed", "tokens": output}}


def _eagle(alpha: float, gamma: int = 4) -> dict:
    return {"decoding": {"kind": "speculative", "proposer": "eagle",
                         "num_speculative_tokens": gamma,
                         "acceptance": {"kind": "fixed", "rate": alpha}}}


def _tokens_per_step(results) -> float:
    it = results.iterations
    multi = it["num_proposed_tokens"] > 0
    return it.loc[multi, "num_accepted_tokens"].sum() / it.loc[multi, "num_decode_seqs"].sum()


@pytest.mark.parametrize(("alpha", "gamma"), [(0.5, 2), (0.8, 4), (0.9, 7)])
def test_speculative_tokens_per_step_match_the_closed_form(alpha, gamma):
    # Leviathan et al. (ICML 2023): E[tokens per step] = (1 - a^(g+1)) / (1 - a). Long
    # outputs so that the last step's truncation at the output length is negligible.
    results = simulate(scenario_with(workload=_fixed(64, 4000), num_requests=16,
                                     engine=_eagle(alpha, gamma)))
    expected = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    assert expected_tokens_per_step(alpha, gamma) == pytest.approx(expected)
    assert _tokens_per_step(results) == pytest.approx(expected, rel=0.02)
    summary = results.summary()
    assert summary["tokens_per_step_mean"] == pytest.approx(expected, rel=0.02)
    # Accepted proposals over proposed: (E - 1) / g.
    assert summary["acceptance_rate_frac"] == pytest.approx((expected - 1) / gamma, rel=0.03)
    req = results.requests
    assert (req["generated_tokens"] == req["output_tokens"]).all()


def test_with_nothing_accepted_speculation_only_costs():
    workload = _fixed(200, 300, rate=0.5)
    plain = simulate(scenario_with(workload=workload, num_requests=20)).summary()
    wasted = simulate(scenario_with(workload=workload, num_requests=20,
                                    engine=_eagle(0.0))).summary()
    assert wasted["tokens_per_step_mean"] == 1.0
    assert wasted["tpot_p50_s"] > plain["tpot_p50_s"]


def test_speculation_speeds_up_light_load_and_slows_a_compute_bound_batch():
    # vLLM's published measurements (blog "How Speculative Decoding Boosts vLLM
    # Performance by up to 2.8x", 2024-10) show both: faster at low QPS, slower at high.
    light = _fixed(200, 300, rate=0.5)
    plain = simulate(scenario_with(workload=light, num_requests=20)).summary()
    fast = simulate(scenario_with(workload=light, num_requests=20,
                                  engine=_eagle(0.8))).summary()
    assert fast["tpot_p50_s"] < 0.6 * plain["tpot_p50_s"]
    heavy = _fixed(200, 300, rate=60)
    plain = simulate(scenario_with(workload=heavy, num_requests=1500)).summary()
    slow = simulate(scenario_with(workload=heavy, num_requests=1500,
                                  engine=_eagle(0.6))).summary()
    assert slow["tpot_p50_s"] > plain["tpot_p50_s"]


def test_a_draft_model_takes_memory_and_must_share_the_vocabulary():
    plain = resolve(scenario_with())
    drafted = resolve(scenario_with(engine={"decoding": {
        "kind": "speculative", "proposer": "draft", "draft_model": "llama-3.2-1b"}}))
    # Its weights come out of the KV budget, and every token stores both models' KV.
    assert drafted.memory.weight_bytes > plain.memory.weight_bytes
    assert drafted.memory.num_kv_blocks < plain.memory.num_kv_blocks
    with pytest.raises(ScenarioError, match=r"vocabulary of 32000 tokens"):
        resolve(scenario_with(engine={"decoding": {
            "kind": "speculative", "proposer": "draft", "draft_model": "llama-2-7b"}}))
    with pytest.raises(ValueError, match=r"needs draft_model"):
        scenario_with(engine={"decoding": {"kind": "speculative", "proposer": "draft"}})


def test_lookahead_keeps_its_mean_capped_at_the_ngram():
    config = {"kind": "lookahead", "window": 5, "ngram": 4, "candidates": 5,
              "mean_accepted_tokens": 1.8}
    results = simulate(scenario_with(workload=_fixed(64, 4000), num_requests=16,
                                     engine={"decoding": config}))
    # 1 + min(Poisson(0.8), 3): its mean by the Poisson pmf.
    k = np.arange(0, 60)
    expected = 1 + float((np.minimum(k, 3) * stats.poisson.pmf(k, 0.8)).sum())
    assert _tokens_per_step(results) == pytest.approx(expected, rel=0.02)
    # Each step verifies 1 + (W + G)(N - 1) = 31 positions per sequence.
    assert results.iterations["num_proposed_tokens"].max() > 0


def test_beams_multiply_decode_sequences_but_share_the_prompt_kv():
    workload = _fixed(1000, 50)  # 1000 = 62 full blocks of 16 + a partial one
    one = simulate(scenario_with(workload=workload, num_requests=1))
    four = simulate(scenario_with(workload=workload, num_requests=1,
                                  engine={"decoding": {"kind": "beam", "beam_width": 4}}))
    peak1 = one.iterations["kv_blocks_used"].max()
    peak4 = four.iterations["kv_blocks_used"].max()
    # 62 shared prompt blocks; everything after them once per beam.
    assert peak4 == 62 + 4 * (peak1 - 62)
    # A decode step of 4 beams does 4 times the work of one sequence's step (linear layers,
    # LM head and attention all scale with the sequences and their keys).
    d1 = one.iterations.query("num_prefill_tokens == 0")["flops"].iloc[5]
    d4 = four.iterations.query("num_prefill_tokens == 0")["flops"].iloc[5]
    assert d4 == pytest.approx(4 * d1, rel=1e-9)
    assert four.requests["generated_tokens"].iloc[0] == 50


def test_parallel_samples_run_and_keep_every_invariant():
    results = simulate(scenario_with(num_requests=200, rate_per_s=20,
                                     engine={"decoding": {"kind": "parallel_sampling", "n": 3},
                                             "max_num_seqs": 32}))
    req = results.requests
    assert (req["status"] == "finished").all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()
    assert results.iterations["num_decode_seqs"].max() <= 32


def test_multi_token_decoding_is_deterministic_and_keeps_the_books():
    scenario = scenario_with(num_requests=300, rate_per_s=40,
                             engine={**_eagle(0.7), "max_num_seqs": 16})
    a, b = simulate(scenario), simulate(scenario)  # replicas check their KV books
    assert a.requests.equals(b.requests)
    assert np.array_equal(a.iterations.to_numpy(), b.iterations.to_numpy())
    req = a.requests
    times = req[["arrival_s", "first_scheduled_s", "first_token_s", "finish_s"]].to_numpy()
    assert (np.diff(times, axis=1) >= 0).all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()


def test_acceptance_per_class_and_per_request_draws():
    by_class = {"decoding": {"kind": "speculative", "proposer": "mtp",
                             "acceptance": {"kind": "beta", "mean": 0.7},
                             "acceptance_by_priority": {1: 0.0}}}
    workload = {**_fixed(64, 400, rate=2), "classes": [
        {"weight": 1, "priority": 0},
        {"weight": 1, "priority": 1}]}
    results = simulate(scenario_with(workload=workload, num_requests=60, engine=by_class))
    assert 1.0 < results.summary()["tokens_per_step_mean"] < 2.6


@pytest.mark.parametrize("decoding", [
    {"kind": "speculative", "proposer": "eagle", "acceptance": {"kind": "beta", "mean": 0.7}},
    {"kind": "speculative", "proposer": "draft", "draft_model": "llama-3.2-1b"},
    {"kind": "lookahead"},
])
@pytest.mark.parametrize("window", [None, 512])
def test_multi_token_runs_equal_stepping(decoding, window):
    # Each request draws its whole schedule when it starts decoding, so advancing runs
    # of steps in one event gives exactly what stepping one at a time gives.
    engine = {"decoding": decoding, "max_num_seqs": 24}
    if window:
        engine["attention"] = {"sparse_window_tokens": window}
    fast = simulate(scenario_with(num_requests=250, rate_per_s=12, engine=engine))
    slow = simulate(scenario_with(num_requests=250, rate_per_s=12,
                                  engine={**engine, "fast_forward": False}))
    assert fast.requests.equals(slow.requests)
    columns = [c for c in fast.iterations.columns if c != "iteration"]
    assert np.array_equal(fast.iterations[columns].to_numpy(),
                          slow.iterations[columns].to_numpy())
    assert len(fast.iterations) == len(slow.iterations)


def test_beams_that_could_never_fit_are_rejected_not_stuck():
    # Four beams of a long output need the prompt's full blocks once and the rest four
    # times over: more than the cache holds, though prompt + output alone would fit.
    workload = _fixed(1000, 30000)
    engine = {"decoding": {"kind": "beam", "beam_width": 4},
              "gpu_memory_utilization_frac": 0.3, "max_model_len": 40000}
    scenario = scenario_with(workload=workload, num_requests=1, engine=engine)
    capacity = resolve(scenario).memory.num_kv_blocks
    alone = -(-(1000 + 30000 - 1) // 16)
    assert alone <= capacity < 62 + 4 * (alone - 62)
    req = simulate(scenario).requests
    assert req["status"].tolist() == ["rejected"]
    assert "KV blocks" in req["reject_reason"][0]


def test_speculative_heads_run_on_pipeline_stages():
    # Every stage verifies the gamma + 1 positions; the head runs on the last stage.
    eagle = _eagle(0.8)
    flat = simulate(scenario_with(workload=_fixed(200, 300, rate=0.5), num_requests=20,
                                  engine=eagle)).summary()
    staged = simulate(scenario_with(workload=_fixed(200, 300, rate=0.5), num_requests=20,
                                    engine=eagle, deployment={"pipeline_parallel": 2}))
    summary = staged.summary()
    assert summary["tokens_per_step_mean"] == pytest.approx(
        expected_tokens_per_step(0.8, 4), rel=0.05)
    # Two stages one after the other, plus a send: a little slower per step than one.
    assert flat["tpot_p50_s"] < summary["tpot_p50_s"] < 1.3 * flat["tpot_p50_s"]
    with pytest.raises(ScenarioError, match="proposer 'draft' is not modelled"):
        resolve(scenario_with(deployment={"pipeline_parallel": 2}, engine={"decoding": {
            "kind": "speculative", "proposer": "draft", "draft_model": "llama-3.2-1b"}}))
