"""Disaggregated prefill and decode: pools, the KV hand-over and its link."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scenario_with

from simulator import ScenarioError, resolve, simulate

LLAMA_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # K and V x layers x kv heads x dim x bf16
DISAGG = {"groups": [{"name": "P", "role": "prefill"}, {"name": "D", "role": "decode"}],
          "kv_transfer": {"gb_per_s": 10.0, "latency_us": 100.0}}


def _fixed(prompt: int, output: int, arrival: dict) -> dict:
    return {"kind": "synthetic", "arrival": arrival,
            "prompt_tokens": {"kind": "fixed", "tokens": prompt},
            "output_tokens": {"kind": "fixed", "tokens": output}}


def test_kv_transfer_delay_is_prompt_kv_bytes_over_the_link_plus_latency():
    workload = _fixed(2000, 50, {"kind": "offline"})
    agg = simulate(scenario_with(workload=workload, num_requests=1)).requests
    dis = simulate(scenario_with(workload=workload, num_requests=1,
                                 deployment=DISAGG)).requests
    expected = 100e-6 + 2000 * LLAMA_8B_KV_BYTES_PER_TOKEN / 10e9
    assert dis["kv_transfer_s"].iloc[0] == pytest.approx(expected, rel=1e-6)
    # The same prefill iteration on the prefill replica, then the hand-over.
    assert dis["ttft_s"].iloc[0] == pytest.approx(agg["ttft_s"].iloc[0] + expected, rel=1e-6)
    assert dis["replica"].iloc[0] == 1  # finished on the decode replica
    assert dis["generated_tokens"].iloc[0] == 50


def test_transfers_queue_on_the_senders_link():
    workload = _fixed(1000, 20, {"kind": "offline"})
    req = simulate(scenario_with(workload=workload, num_requests=3, deployment=DISAGG)).requests
    one = 100e-6 + 1000 * LLAMA_8B_KV_BYTES_PER_TOKEN / 10e9
    # All three prefill in one iteration, so their sends start together and go in turn.
    assert np.sort(req["kv_transfer_s"].to_numpy()) == pytest.approx([one, 2 * one, 3 * one])


def test_a_link_bandwidth_scales_with_the_sending_devices():
    workload = _fixed(2000, 10, {"kind": "offline"})
    dep = {**DISAGG, "tensor_parallel": 2}
    req = simulate(scenario_with(workload=workload, num_requests=1, deployment=dep)).requests
    # Two devices each send their half of the KV at 10 GB/s.
    expected = 100e-6 + 2000 * LLAMA_8B_KV_BYTES_PER_TOKEN / (2 * 10e9)
    assert req["kv_transfer_s"].iloc[0] == pytest.approx(expected, rel=1e-6)


def test_disaggregation_removes_prefill_interference_from_tpot_and_costs_ttft():
    workload = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 4},
                "prompt_tokens": {"kind": "lognormal", "median_tokens": 6000, "sigma": 0.3,
                                  "max_tokens": 16000},
                "output_tokens": {"kind": "lognormal", "median_tokens": 100, "sigma": 0.3}}
    agg = simulate(scenario_with(workload=workload, num_requests=300,
                                 deployment={"replicas": 2})).summary()
    dis = simulate(scenario_with(workload=workload, num_requests=300, deployment={
        "groups": [{"role": "prefill"}, {"role": "decode"}]})).summary()
    assert dis["tpot_p99_s"] < 0.8 * agg["tpot_p99_s"]
    assert dis["itl_p99_s"] < 0.5 * agg["itl_p99_s"]
    assert dis["ttft_p50_s"] > agg["ttft_p50_s"]
    assert dis["kv_transfer_mean_s"] > 0
    assert dis["num_finished"] == agg["num_finished"] == 300


def test_xpyd_pools_each_have_their_own_router_and_hardware():
    dep = {"groups": [{"role": "prefill", "replicas": 2},
                      {"role": "decode", "replicas": 3, "accelerator": "h200"}]}
    results = simulate(scenario_with(deployment=dep, num_requests=300, rate_per_s=20,
                                     engine={"routing": "least_requests"}))
    req = results.requests
    assert set(req["replica"]) == {2, 3, 4}  # every request finishes on a decode replica
    assert (req["status"] == "finished").all()
    assert (req["generated_tokens"] == req["output_tokens"]).all()
    iterations = results.iterations
    prefill_rows = iterations[iterations["replica"] < 2]
    assert (prefill_rows["num_decode_seqs"] == 0).all()  # prefill replicas never decode
    assert set(iterations["replica"]) == {0, 1, 2, 3, 4}
    h100, h200 = (resolve(scenario_with()).accelerator,
                  resolve(scenario_with(overrides=("hardware.accelerator=h200",))).accelerator)
    hours = results.info.end_s / 3600
    assert results.summary()["cost_usd"] == pytest.approx(
        (2 * h100.price_per_hour_usd + 3 * h200.price_per_hour_usd) * hours)


def test_single_token_requests_finish_on_the_prefill_replica():
    req = simulate(scenario_with(workload=_fixed(100, 1, {"kind": "offline"}), num_requests=4,
                                 deployment=DISAGG)).requests
    assert (req["replica"] == 0).all()
    assert req["kv_transfer_s"].isna().all()


def test_pools_must_come_in_pairs_and_not_mix():
    with pytest.raises(ValueError, match=r"needs both a .prefill. and a .decode. group"):
        scenario_with(deployment={"groups": [{"role": "prefill"}]})
    with pytest.raises(ValueError, match=r"mixes .mixed. groups"):
        scenario_with(deployment={"groups": [{"role": "prefill"}, {"role": "decode"},
                                             {"role": "mixed"}]})
    with pytest.raises(ValueError, match=r"deployment.replicas is set together"):
        scenario_with(deployment={"replicas": 2, "groups": [{"role": "mixed"}]})


def test_a_group_that_cannot_hold_the_model_is_named():
    dep = {"groups": [{"role": "prefill"},
                      {"role": "decode", "accelerator": "l40s", "tensor_parallel": 1}]}
    with pytest.raises(ScenarioError, match=r"deployment.groups\[1\].*llama-3.1-70b"):
        resolve(scenario_with(model="llama-3.1-70b",
                              deployment={**dep, "tensor_parallel": 4}))
