"""KV allocation and preemption choices: reservation at admission, victim choice."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY_DEVICE, tiny_scenario

from simulator import check_policy, simulate
from simulator.deployment import ScenarioError

# A few hundred KV blocks under a load that needs more: paged allocation preempts.
PRESSURE = {
    "hardware": {"accelerator": {**TINY_DEVICE, "memory_gib": 0.01}},
    "engine": {"gpu_memory_utilization_frac": 1.0, "max_num_batched_tokens": 1024,
               "max_model_len": 1000},
    "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 400.0},
                 "prompt_tokens": {"kind": "uniform", "min_tokens": 20, "max_tokens": 200},
                 "output_tokens": {"kind": "uniform", "min_tokens": 50, "max_tokens": 400}},
    "stop": {"num_requests": 300},
}


def _run(**engine):
    return simulate(tiny_scenario(**{**PRESSURE, "engine": {**PRESSURE["engine"], **engine}}))


@pytest.mark.parametrize("engine", [
    {"kv_reservation": "max"},
    {"kv_reservation": "predicted", "predictor": {"kind": "oracle"}},
    {"kv_reservation": "predicted", "predictor": {"kind": "noisy", "sigma": 0.8}},
    {"preemption_victim": "lowest_priority"},
])
def test_kv_choices_keep_the_engine_invariants(engine):
    check_policy("batching", "token_budget", engine=engine)


def test_static_reservation_admits_fewer_requests_and_serves_less_than_paged():
    # FasterTransformer / TensorRT-LLM guaranteed_no_evict: each request holds
    # max_model_len - 1 = 999 tokens of KV from admission, so at most
    # floor(capacity / 63 blocks) run at once, while paged allocation packs requests by
    # what they have computed (~300 tokens here). It never preempts; paged does.
    paged, static = _run(), _run(kv_reservation="max")
    capacity = static.info.kv_capacity_blocks
    per_request = -(-999 // 16)
    concurrent = static.iterations.num_decode_seqs + static.iterations.num_prefill_seqs
    assert concurrent.max() <= capacity // per_request
    paged_concurrent = paged.iterations.num_decode_seqs + paged.iterations.num_prefill_seqs
    assert paged_concurrent.max() >= 2 * concurrent.max()
    assert static.requests.num_preemptions.sum() == 0
    assert paged.requests.num_preemptions.sum() > 0
    # Fewer requests per batch on a memory-bound decode: less throughput, by a lot.
    assert static.summary()["output_tokens_per_s"] < 0.7 * paged.summary()["output_tokens_per_s"]


def test_reserving_the_true_length_never_preempts_and_packs_more_than_max():
    # An oracle predictor reserves exactly prompt + output - 1 tokens: nobody outgrows
    # its reservation, so no preemption, with more requests at once than max reservation.
    oracle = _run(kv_reservation="predicted", predictor={"kind": "oracle"})
    static = _run(kv_reservation="max")
    assert oracle.requests.num_preemptions.sum() == 0
    concurrent = oracle.iterations.num_decode_seqs.max()
    assert concurrent > 1.5 * static.iterations.num_decode_seqs.max()


def test_under_predicted_reservations_grow_on_demand_and_may_preempt():
    # Guesses off by e^N(0, 1): half are short, those requests allocate past their
    # reservation as paged ones do, and KV pressure can then force preemptions; the run
    # still finishes everyone with exact accounting.
    r = _run(kv_reservation="predicted", predictor={"kind": "noisy", "sigma": 1.0})
    assert (r.requests.status == "finished").all()
    assert (r.iterations.kv_blocks_used <= r.info.kv_capacity_blocks).all()


def test_reservation_settings_are_checked_against_the_scenario():
    with pytest.raises(ScenarioError, match=r"engine\.predictor"):
        _run(kv_reservation="predicted")
    with pytest.raises(ScenarioError, match=r"max_model_len - 1 = 4095 tokens \(256 blocks\)"):
        simulate(tiny_scenario(**{**PRESSURE, "engine": {**PRESSURE["engine"],
                                                         "max_model_len": 4096,
                                                         "kv_reservation": "max"}}))


def test_lowest_priority_victims_spare_the_important_class():
    # Half the requests have priority 0, half 1, under KV pressure. Newest-first victims
    # fall on both classes alike; lowest-priority victims take a priority-1 request
    # whenever one runs, so priority-0 requests are preempted far less.
    classes = [{"weight": 1, "priority": 0}, {"weight": 1, "priority": 1}]
    workload = {**PRESSURE["workload"], "classes": classes}

    def preemptions_by_class(victim: str) -> pd.Series:
        s = tiny_scenario(**{**PRESSURE, "workload": workload,
                             "engine": {**PRESSURE["engine"], "preemption_victim": victim}})
        r = simulate(s).requests
        return r.groupby("priority").num_preemptions.sum()

    newest, lowest = preemptions_by_class("newest"), preemptions_by_class("lowest_priority")
    assert newest[0] > 0.5 * newest[1]  # no preference: similar counts
    assert lowest[0] < 0.2 * lowest[1]
    assert lowest[0] < 0.5 * newest[0]


def test_token_level_allocation_leaves_no_slack_and_reservation_leaves_much():
    # Paged blocks of 16 waste the unfilled part of each request's last block (about 8
    # tokens of a few hundred, a few percent); blocks of 1 token (LightLLM, SGLang page
    # size 1) waste nothing; reserving max_model_len leaves most reserved room empty.
    token = _run(block_size_tokens=1).summary()["kv_fragmentation_frac"]
    paged = _run().summary()["kv_fragmentation_frac"]
    static = _run(kv_reservation="max").summary()["kv_fragmentation_frac"]
    assert token == 0
    assert 0.005 < paged < 0.1
    assert static > 0.5
