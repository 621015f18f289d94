"""Swap preemption: KV goes to host memory over PCIe and comes back, nothing recomputed."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY_DEVICE, tiny_scenario

from hardware.catalog import get_accelerator
from simulator import Scenario, simulate
from simulator.conformance import check_results
from simulator.deployment import resolve

PRESSURE = {
    "hardware": {"accelerator": {**TINY_DEVICE, "memory_gib": 0.01}},
    "engine": {"gpu_memory_utilization_frac": 1.0, "max_num_batched_tokens": 256,
               "preemption_mode": "swap", "swap_space_gib": 0.01},
    "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 2000.0},
                 "prompt_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 600},
                 "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 400}},
    "stop": {"num_requests": 150},
}


def test_swapping_keeps_invariants_and_recomputes_nothing():
    s = tiny_scenario(**PRESSURE)
    r = simulate(s)
    check_results(r, resolve(s).memory.num_kv_blocks)
    req, summary = r.requests, r.summary()
    assert (req.status == "finished").all()
    assert req.num_preemptions.sum() > 0
    assert req.recomputed_tokens.sum() == 0
    # Every swapped-out byte comes back in: traffic is even, at 1 KiB per cached token.
    assert summary["swap_bytes"] > 0 and summary["swap_bytes"] % 2048 == 0
    stepped = simulate(s.with_overrides(["engine.fast_forward=false"]))
    pd.testing.assert_frame_equal(r.iterations, stepped.iterations, check_exact=True)


def test_full_swap_space_falls_back_to_recompute():
    s = tiny_scenario(**{**PRESSURE, "engine": {**PRESSURE["engine"],
                                                 "swap_space_gib": 0.00002}})  # one block
    r = simulate(s)
    assert r.requests.recomputed_tokens.sum() > 0
    assert (r.requests.status == "finished").all()


def _long_contexts(pcie_gb_per_s: float, mode: str) -> pd.Series:
    h100 = get_accelerator("h100-sxm").model_dump()
    return simulate(Scenario.model_validate({
        "hardware": {"accelerator": {**h100, "pcie_gb_per_s": pcie_gb_per_s}},
        "engine": {"gpu_memory_utilization_frac": 0.3, "max_model_len": 16384,
                   "swap_space_gib": 16, "preemption_mode": mode},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 2.0},
                     "prompt_tokens": {"kind": "uniform", "min_tokens": 4000,
                                       "max_tokens": 8000},
                     "output_tokens": {"kind": "uniform", "min_tokens": 500,
                                       "max_tokens": 1500}},
        "stop": {"num_requests": 200},
    })).summary()


def test_swap_wins_on_fast_pcie_and_loses_on_slow():
    # Resuming a 4k-8k token context costs a prefill of that length when recomputing
    # (~0.1 s on an H100 for Llama-3.1-8B) against two copies of 0.5-1 GB when swapping:
    # ~25 ms at 64 GB/s, seconds at 0.5 GB/s.
    fast_swap, fast_recompute = _long_contexts(64.0, "swap"), _long_contexts(64.0, "recompute")
    slow_swap, slow_recompute = _long_contexts(0.5, "swap"), _long_contexts(0.5, "recompute")
    assert fast_swap.e2e_mean_s < fast_recompute.e2e_mean_s
    assert fast_swap.output_tokens_per_s > fast_recompute.output_tokens_per_s
    assert slow_swap.e2e_mean_s > 2 * slow_recompute.e2e_mean_s
    # Recompute does not touch PCIe, so its speed does not matter to it.
    assert slow_recompute.e2e_mean_s == pytest.approx(fast_recompute.e2e_mean_s)
