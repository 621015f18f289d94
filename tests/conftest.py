"""Builders for tiny scenarios: a small model on a small inline device, so engine tests
run in milliseconds and do not depend on catalog figures."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.scenario import Scenario

TINY_MODEL: dict[str, Any] = {
    "name": "tiny",
    "num_layers": 2,
    "hidden_size": 256,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 1000,
    "max_context_tokens": 4096,
}
# KV per token: 2 layers x 2 kv heads x 64 x (K, V) x 2 bytes = 1 KiB.

TINY_DEVICE: dict[str, Any] = {
    "name": "tiny-gpu",
    "memory_gib": 1.0,
    "hbm_tb_per_s": 1.0,
    "peak_tflops": {"bf16": 100.0},
    "intra_node_gb_per_s": 100.0,
    "pcie_gb_per_s": 32.0,
    "network_gb_per_s": 25.0,
    "tdp_w": 300.0,
    "idle_w": 60.0,
    "price_per_hour_usd": 1.0,
}


def tiny_scenario(**sections: Any) -> Scenario:
    """A scenario on the tiny model and device; keyword arguments replace whole sections
    or top-level fields, nested dicts are merged one level deep."""
    data: dict[str, Any] = {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "hardware": {"accelerator": dict(TINY_DEVICE)},
        "engine": {"runtime_reserved_gib": 0.0, "max_num_seqs": 32,
                   "max_num_batched_tokens": 512},
        "workload": {
            "kind": "synthetic",
            "arrival": {"kind": "poisson", "rate_per_s": 50.0},
            "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 300},
            "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 120},
        },
        "stop": {"num_requests": 200},
        "seed": 1,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and "kind" not in value:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Scenario.model_validate(data)


@pytest.fixture
def tiny() -> Any:
    return tiny_scenario
