"""Clusters: heterogeneous replica groups, speed-aware routing, autoscaling, and the
invariants every layout keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import scenario_with

from hardware.catalog import get_accelerator
from simulator import resolve, simulate

MIXED = {"groups": [{"name": "fast", "accelerator": "h100-sxm"},
                    {"name": "slow", "accelerator": "a100-80gb-sxm", "replicas": 2}]}


def test_groups_inherit_the_deployment_and_hardware_sections():
    dep = resolve(scenario_with(deployment={**MIXED, "tensor_parallel": 2},
                                overrides=("hardware.price_per_hour_usd=1.5",)))
    fast, slow = dep.groups
    assert (fast.accelerator.name, slow.accelerator.name) == ("h100-sxm", "a100-80gb-sxm")
    assert fast.layout.tensor_parallel == slow.layout.tensor_parallel == 2
    assert fast.accelerator.price_per_hour_usd == slow.accelerator.price_per_hour_usd == 1.5
    assert [list(g.replica_indices) for g in dep.groups] == [[0], [1, 2]]


def test_cost_is_priced_per_replica_type():
    results = simulate(scenario_with(deployment=MIXED, num_requests=200, rate_per_s=20))
    h100, a100 = get_accelerator("h100-sxm"), get_accelerator("a100-80gb-sxm")
    hours = results.info.end_s / 3600
    expected = (h100.price_per_hour_usd + 2 * a100.price_per_hour_usd) * hours
    assert results.summary()["cost_usd"] == pytest.approx(expected)
    assert results.summary()["num_devices_mean"] == 3


def test_load_aware_routing_gives_a_faster_replica_more_work():
    results = simulate(scenario_with(deployment=MIXED, num_requests=600, rate_per_s=30,
                                     engine={"routing": "least_requests"}))
    per_replica = results.requests.groupby("replica").size()
    assert per_replica[0] > 1.3 * per_replica[1]
    assert per_replica[0] > 1.3 * per_replica[2]
    # Round robin ignores speed: each replica gets a third.
    rr = simulate(scenario_with(deployment=MIXED, num_requests=600, rate_per_s=30))
    assert rr.requests.groupby("replica").size().tolist() == [200, 200, 200]


AUTOSCALE = {"replicas": 1, "autoscale": {
    "metric": "utilization", "target": 0.6, "min_replicas": 1, "max_replicas": 4,
    "interval_s": 5, "startup_s": 30, "cooldown_s": 30}}
BURST = {"kind": "synthetic",
         "arrival": {"kind": "schedule", "segments": [
             {"start_s": 0, "rate_per_s": 150}, {"start_s": 60, "rate_per_s": 2}]},
         "prompt_tokens": {"kind": "lognormal", "median_tokens": 130, "sigma": 1.0,
                           "max_tokens": 4096},
         "output_tokens": {"kind": "lognormal", "median_tokens": 120, "sigma": 1.0,
                           "max_tokens": 2048}}


@pytest.fixture(scope="module")
def scaled():
    return simulate(scenario_with(deployment=AUTOSCALE, workload=BURST, num_requests=9400))


def test_autoscaler_adds_replicas_under_load_that_serve_only_after_startup(scaled):
    events = scaled.scaling
    starts = events[events["event"] == "start"]
    assert len(starts) >= 1
    ready = events[events["event"] == "ready"].set_index("replica")["time_s"]
    for row in starts.itertuples():
        assert ready[row.replica] == pytest.approx(row.time_s + 30)
        served = scaled.requests[scaled.requests["replica"] == row.replica]
        assert (served["first_scheduled_s"] >= row.time_s + 30).all()
    assert scaled.requests["replica"].nunique() > 1
    assert (scaled.requests["status"] == "finished").all()


def test_autoscaler_releases_replicas_when_load_falls_never_below_the_minimum(scaled):
    events = scaled.scaling
    stops = events[events["event"] == "stop"]
    assert len(stops) >= 1
    # Replica 0 serves from the outset and is never released (min_replicas = 1).
    assert 0 not in set(stops["replica"])
    drains = events[events["event"] == "drain"].set_index("replica")["time_s"]
    for row in stops.itertuples():
        late = scaled.requests[(scaled.requests["replica"] == row.replica)
                               & (scaled.requests["arrival_s"] > drains[row.replica])]
        assert late.empty  # a draining replica takes no new requests


def test_autoscaled_cost_counts_provisioned_time_only(scaled):
    events, end_s = scaled.scaling, scaled.info.end_s
    paid = 0.0
    for _, rows in events.groupby("replica"):
        times = dict(zip(rows["event"], rows["time_s"], strict=False))
        begin = times.get("start", times.get("ready"))
        paid += times.get("stop", end_s) - begin
    price = get_accelerator("h100-sxm").price_per_hour_usd
    assert scaled.summary()["cost_usd"] == pytest.approx(price * paid / 3600)
    assert 1 < scaled.summary()["num_devices_mean"] < 4


LAYOUTS = {
    "tp2": {"tensor_parallel": 2},
    "pp2": {"pipeline_parallel": 2},
    "tp2_pp2": {"tensor_parallel": 2, "pipeline_parallel": 2},
    "replicas": {"replicas": 3},
    "heterogeneous": MIXED,
    "disaggregated": {"groups": [{"role": "prefill", "replicas": 2},
                                 {"role": "decode", "tensor_parallel": 2}]},
    "autoscaled": {**AUTOSCALE, "autoscale": {**AUTOSCALE["autoscale"], "interval_s": 1,
                                              "startup_s": 2, "cooldown_s": 2}},
}


MODELS = {"moe_dp_ep": "qwen3-30b-a3b", "hybrid_pp2": "jamba-1.5-mini"}
LAYOUTS["moe_dp_ep"] = {"attention_data_parallel": 2, "expert_parallel": True}
LAYOUTS["hybrid_pp2"] = {"tensor_parallel": 2, "pipeline_parallel": 2}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_invariants_hold_for_every_layout(name):
    scenario = scenario_with(model=MODELS.get(name, "llama-3.1-8b"), deployment=LAYOUTS[name],
                             num_requests=250, rate_per_s=60,
                             engine={"routing": "least_requests", "max_num_seqs": 32,
                                     "max_model_len": 8192})
    results = simulate(scenario)  # replicas check their KV books at the end
    req = results.requests
    assert len(req) == 250 and req["request_id"].is_unique
    assert (req["status"] == "finished").all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()
    times = req[["arrival_s", "first_scheduled_s", "first_token_s", "finish_s"]].to_numpy()
    assert (np.diff(times, axis=1) >= 0).all()
    it = results.iterations
    capacity = {g.first_replica + i: g.num_kv_blocks // len(g.stages)
                for g in resolve(scenario).groups for i in range(g.max_replicas)}
    assert (it["kv_blocks_used"] <= it["replica"].map(capacity)).all()
    again = simulate(scenario)
    pd.testing.assert_frame_equal(results.requests, again.requests)


def test_a_request_bigger_than_a_virtual_engine_is_rejected_not_stuck():
    # A pipelined replica's schedulers each hold half its blocks (vLLM's virtual
    # engines): a request needing more than half can never be admitted, so it is refused.
    long = {"kind": "synthetic", "arrival": {"kind": "offline"},
            "prompt_tokens": {"kind": "fixed", "tokens": 30000},
            "output_tokens": {"kind": "fixed", "tokens": 10}}
    scenario = scenario_with(model="llama-3.1-70b", workload=long, num_requests=1,
                             deployment={"pipeline_parallel": 2},
                             engine={"gpu_memory_utilization_frac": 0.95,
                                     "max_model_len": 32768})
    group = resolve(scenario).groups[0]
    needed = -(-30009 // 16)
    assert group.kv_blocks_per_scheduler < needed <= group.num_kv_blocks
    req = simulate(scenario).requests
    assert req["status"].tolist() == ["rejected"]
    assert f"holds {group.kv_blocks_per_scheduler}" in req["reject_reason"][0]


def test_long_requests_go_to_the_replicas_that_can_hold_them():
    # An H100 and an L40S pair: requests too long for the L40S's cache are served by the
    # H100 rather than rejected (the H100 holds them), whatever the router prefers.
    dep = {"groups": [{"name": "big", "accelerator": "h100-sxm"},
                      {"name": "small", "accelerator": "l40s", "replicas": 2}]}
    engine = {"gpu_memory_utilization_frac": 0.45, "max_model_len": 60000}
    scenario = scenario_with(deployment=dep, engine=engine)
    big, small = resolve(scenario).groups
    tokens = 50000
    assert small.kv_blocks_per_scheduler * 16 < tokens < big.kv_blocks_per_scheduler * 16
    mixed = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 1},
             "prompt_tokens": {"kind": "uniform", "min_tokens": 100, "max_tokens": tokens},
             "output_tokens": {"kind": "fixed", "tokens": 20}}
    results = simulate(scenario_with(deployment=dep, engine=engine, workload=mixed,
                                     num_requests=60))
    req = results.requests
    assert (req["status"] == "finished").all()
    too_long = req["prompt_tokens"] + 19 > small.kv_blocks_per_scheduler * 16
    assert too_long.any() and (req.loc[too_long, "replica"] == 0).all()
