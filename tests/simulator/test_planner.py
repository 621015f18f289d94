"""The capacity planner: known answers, sound pre-screening, honest uncertainty."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from simulator.conformance import TINY_DEVICE, tiny_scenario
from simulator.engine import simulate
from simulator.planner import (
    SearchSpace,
    Target,
    cheapest_deployment,
    judge,
    max_sustainable_rate,
    pareto_front,
    throughput_ceiling,
)

FIXED = {
    "arrival": {"kind": "constant", "rate_per_s": 100.0},
    "prompt_tokens": {"kind": "fixed", "tokens": 64},
    "output_tokens": {"kind": "fixed", "tokens": 32},
}


def _deterministic(replicas: int):
    # The same 300 requests per replica: a finite run's backlog depends on the count.
    return tiny_scenario(workload=FIXED, stop={"num_requests": 300 * replicas},
                         deployment={"replicas": replicas},
                         slo={"ttft_s": 0.02, "tpot_s": 0.01})


def test_max_rate_doubles_exactly_with_two_round_robin_replicas():
    # Constant arrivals at 2r, round robin: each replica sees constant arrivals at r with
    # fixed lengths, the one-replica run shifted by half a gap. Seeds change nothing.
    one = max_sustainable_rate(_deterministic(1), replications=2, low_rate_per_s=100,
                               tolerance_frac=0.02, executor="inprocess")
    two = max_sustainable_rate(_deterministic(2), replications=2, low_rate_per_s=200,
                               tolerance_frac=0.02, executor="inprocess")
    assert one.rate_per_s is not None and one.fails_rate_per_s is not None
    assert two.rate_per_s == pytest.approx(2 * one.rate_per_s)
    assert two.fails_rate_per_s == pytest.approx(2 * one.fails_rate_per_s)
    assert one.fails_rate_per_s <= one.rate_per_s * 1.021
    assert one.binding_constraint in ("ttft_p99_s", "tpot_p99_s")
    # Below the ceiling, by the pre-screen's argument.
    assert one.rate_per_s <= throughput_ceiling(_deterministic(1)).requests_per_s
    assert set(one.probes["verdict"]) <= {"meets", "fails"}


def test_max_rate_refuses_closed_loop_workloads():
    base = tiny_scenario(workload={"arrival": {"kind": "closed_loop", "concurrency": 4}})
    with pytest.raises(ValueError, match="open-loop"):
        max_sustainable_rate(base, executor="inprocess")


def test_a_target_at_the_measured_p99_is_uncertain_not_met():
    base = tiny_scenario(stop={"num_requests": 150})
    rows = [simulate(base.model_copy(update={"seed": s})).summary() for s in range(3)]
    table = pd.DataFrame(rows)
    mean = float(table["ttft_p99_s"].mean())
    result = max_sustainable_rate(
        base, targets=[Target("ttft_p99_s", mean)], replications=3, max_replications=3,
        low_rate_per_s=50.0, high_rate_per_s=50.0, executor="inprocess")
    probe = result.probes.iloc[0]
    assert probe["verdict"] == "uncertain"
    assert probe["ttft_p99_s_ci_low"] < mean < probe["ttft_p99_s_ci_high"]
    assert result.rate_per_s is None and result.uncertain_rates == (50.0,)


def test_judge_directions_and_nan():
    stats = {"m_mean": 1.0, "m_ci_low": 0.9, "m_ci_high": 1.1}
    assert judge(stats, [Target("m", 1.2)]).verdict == "meets"
    assert judge(stats, [Target("m", 0.8)]).verdict == "fails"
    assert judge(stats, [Target("m", 1.0)]).verdict == "uncertain"
    assert judge(stats, [Target("m", 0.8, "min")]).verdict == "meets"
    assert judge(stats, [Target("m", 1.2, "min")]).verdict == "fails"
    nan = {"m_mean": math.nan, "m_ci_low": math.nan, "m_ci_high": math.nan}
    assert judge(nan, [Target("m", 1.0)]).verdict == "uncertain"


def _space_base():
    # Two tiny devices: a slow cheap one and a fast dear one; 1 GiB devices, and a
    # memory-hungry budget so TP=1 of the small one does not fit.
    return tiny_scenario(stop={"num_requests": 300}, slo={"ttft_s": 0.05, "tpot_s": 0.01})


SLOW = {**TINY_DEVICE, "name": "slow", "hbm_tb_per_s": 0.25, "peak_tflops": {"bf16": 25.0},
        "price_per_hour_usd": 0.5, "memory_gib": 0.004}
FAST = {**TINY_DEVICE, "name": "fast", "price_per_hour_usd": 1.5}


def _space():
    return SearchSpace(accelerators=("slow", "fast"), tensor_parallel=(1, 2), replicas=(1, 2))


@pytest.fixture
def catalog(monkeypatch):
    from hardware import catalog as cat
    from hardware.spec import AcceleratorSpec
    specs = {**cat.load_catalog(), "slow": AcceleratorSpec.model_validate(SLOW),
             "fast": AcceleratorSpec.model_validate(FAST)}
    monkeypatch.setattr(cat, "_catalog", lambda: specs)


def test_cheapest_deployment_on_a_small_space(catalog):
    plan = cheapest_deployment(_space_base(), _space(), rate_per_s=1500.0, replications=2,
                               executor="inprocess")
    table = plan.candidates
    assert len(table) == 8
    assert table["reason"].notna().all() and (table["reason"] != "").all()
    feasible = table[table["status"] == "meets"]
    assert plan.best is not None
    assert plan.best["cost_per_hour_usd"] == feasible["cost_per_hour_usd"].min()
    # Everything cheaper than the answer was rejected with a reason.
    cheaper = table[table["cost_per_hour_usd"] < plan.best["cost_per_hour_usd"]]
    assert (cheaper["status"] != "meets").all()
    # The Pareto front is non-dominated and includes the best.
    front = plan.pareto
    for _, a in front.iterrows():
        for _, b in feasible.iterrows():
            assert not (b["cost_per_hour_usd"] <= a["cost_per_hour_usd"]
                        and b["ttft_p99_s_mean"] <= a["ttft_p99_s_mean"]
                        and (b["cost_per_hour_usd"] < a["cost_per_hour_usd"]
                             or b["ttft_p99_s_mean"] < a["ttft_p99_s_mean"]))
    assert plan.best.name in front.index
    assert plan.num_pruned >= 1
    assert set(table["status"]) <= {"pruned_memory", "pruned_invalid", "pruned_ceiling",
                                     "meets", "fails", "uncertain"}


def test_pre_screen_never_prunes_a_feasible_candidate(catalog):
    plan = cheapest_deployment(_space_base(), _space(), rate_per_s=1500.0, replications=2,
                               executor="inprocess")
    pruned = plan.candidates[plan.candidates["status"].str.startswith("pruned")]
    assert len(pruned) >= 2
    assert {"pruned_memory", "pruned_ceiling"} <= set(pruned["status"])
    base = _space_base().with_overrides(["workload.arrival.rate_per_s=1500"])
    for _, row in pruned.iterrows():
        overrides = [f"hardware.accelerator={row['hardware.accelerator']}",
                     f"deployment.tensor_parallel={row['deployment.tensor_parallel']}",
                     f"deployment.replicas={row['deployment.replicas']}"]
        scenario = base.with_overrides(overrides)
        if row["status"] == "pruned_memory":
            with pytest.raises(ValueError, match="does not fit"):
                simulate(scenario)
            continue
        for seed in range(2):
            summary = simulate(scenario.model_copy(update={"seed": seed})).summary()
            assert (summary["ttft_p99_s"] > 0.05 or summary["tpot_p99_s"] > 0.01), row


def test_pareto_front_keeps_only_non_dominated_rows():
    table = pd.DataFrame({"cost": [1, 2, 2, 3, 4], "ttft": [5.0, 4.0, 6.0, 4.0, 1.0]})
    front = pareto_front(table, "cost", "ttft")
    assert list(front.index) == [0, 1, 4]


@pytest.mark.parametrize("deployment, engine", [
    ({"pipeline_parallel": 2}, {}),
    ({"groups": [{"role": "prefill"}, {"role": "decode"}]}, {}),
    # Few sequences and long outputs: the per-step bound binds, and a speculative step
    # keeps up to gamma + 1 tokens, so the ceiling must count steps, not tokens.
    ({}, {"max_num_seqs": 8, "decoding": {"kind": "speculative", "proposer": "eagle",
                                          "acceptance": {"kind": "fixed", "rate": 0.9}}}),
])
def test_the_ceiling_bounds_what_new_layouts_and_decodings_serve(deployment, engine):
    # Offline load saturates the deployment: what it finishes per second can only be
    # below a valid ceiling (else the planner would prune feasible candidates).
    from conftest import scenario_with

    offline = {"kind": "synthetic", "arrival": {"kind": "offline"},
               "prompt_tokens": {"kind": "fixed", "tokens": 16},
               "output_tokens": {"kind": "fixed", "tokens": 1000}}
    scenario = scenario_with(workload=offline, num_requests=400, deployment=deployment,
                             engine=engine)
    achieved = simulate(scenario).summary()["request_throughput_per_s"]
    assert achieved <= throughput_ceiling(scenario).requests_per_s


def test_search_space_spans_pipeline_stages_and_decodings():
    space = SearchSpace(accelerators=("h100-sxm",), tensor_parallel=(1, 2),
                        pipeline_parallel=(1, 2),
                        decoding=({"kind": "autoregressive"},
                                  {"kind": "speculative", "proposer": "eagle"}))
    points = space.points()
    assert len(points) == 8
    assert {p["deployment.pipeline_parallel"] for p in points} == {1, 2}
    assert {p["engine.decoding"]["kind"] for p in points} == {"autoregressive", "speculative"}


def test_combinations_the_scenario_refuses_are_pruned_invalid_not_simulated():
    from conftest import scenario_with

    base = scenario_with(num_requests=40, rate_per_s=2)
    space = SearchSpace(accelerators=("h100-sxm",), pipeline_parallel=(1, 2), decoding=(
        {"kind": "speculative", "proposer": "draft", "draft_model": "llama-3.2-1b"},))
    plan = cheapest_deployment(base, space, rate_per_s=2.0, replications=2,
                               executor="inprocess")
    table = plan.candidates.set_index("deployment.pipeline_parallel")
    assert table.loc[2, "status"] == "pruned_invalid"
    assert "draft" in table.loc[2, "reason"]
    assert table.loc[1, "status"] != "pruned_invalid"
