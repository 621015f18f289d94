"""Layouts compared on one workload: where do eight GPUs serve a model best?

    python examples/layouts.py [--requests N]

One chat workload with long prompts (median 2k tokens, outputs median 250) throughout:

1. Llama-3.1-70B on eight H100s: one TP8 replica, two TP4, four TP2, TP4 x PP2, and
   TP2 x PP4.
2. Aggregated (two TP4 replicas serving whole requests) against disaggregated (one TP4
   prefill replica handing KV caches to one TP4 decode replica over the network).
3. Mixtral-8x7B on four H100s: experts split over the devices (expert TP), sharded
   (expert parallelism) with uniform routing, and sharded with Zipf-skewed routing.
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from simulator import Scenario, simulate

METRICS = ["ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "output_tokens_per_s",
           "cost_per_million_output_tokens_usd"]

WORKLOAD: dict[str, Any] = {
    "kind": "synthetic",
    "arrival": {"kind": "poisson", "rate_per_s": 4.0},
    "prompt_tokens": {"kind": "lognormal", "median_tokens": 2000, "sigma": 0.6,
                      "max_tokens": 12000},
    "output_tokens": {"kind": "lognormal", "median_tokens": 250, "sigma": 0.6,
                      "max_tokens": 2000},
}


def compare(model: str, layouts: dict[str, dict[str, Any]], num_requests: int,
            rate_per_s: float, engine: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per layout: its summary metrics on the shared workload at ``rate_per_s``."""
    rows = {}
    for name, deployment in layouts.items():
        scenario = Scenario.model_validate({
            "model": model,
            "deployment": deployment,
            "engine": {"max_model_len": 16384, "routing": "least_requests", **(engine or {})},
            "workload": {**WORKLOAD, "arrival": {"kind": "poisson", "rate_per_s": rate_per_s}},
            "stop": {"num_requests": num_requests},
        })
        rows[name] = simulate(scenario).summary()[METRICS]
    return pd.DataFrame(rows).T


def dense_70b(num_requests: int) -> pd.DataFrame:
    return compare("llama-3.1-70b", {
        "TP8 x 1": {"tensor_parallel": 8},
        "TP4 x 2 replicas": {"tensor_parallel": 4, "replicas": 2},
        "TP2 x 4 replicas": {"tensor_parallel": 2, "replicas": 4},
        "TP4 x PP2": {"tensor_parallel": 4, "pipeline_parallel": 2},
        "TP2 x PP4": {"tensor_parallel": 2, "pipeline_parallel": 4},
    }, num_requests, rate_per_s=4.0)


def disaggregation(num_requests: int) -> pd.DataFrame:
    return compare("llama-3.1-70b", {
        "aggregated 2 x TP4": {"tensor_parallel": 4, "replicas": 2},
        "1P1D TP4": {"tensor_parallel": 4, "groups": [{"role": "prefill"},
                                                      {"role": "decode"}]},
    }, num_requests, rate_per_s=4.0)


def moe_expert_parallel(num_requests: int) -> pd.DataFrame:
    return compare("mixtral-8x7b", {
        "expert TP (TP4)": {"tensor_parallel": 4},
        "EP4, uniform routing": {"tensor_parallel": 4, "expert_parallel": True},
        "EP4, Zipf 1.2 routing": {"tensor_parallel": 4, "expert_parallel": True,
                                  "expert_load": {"kind": "zipf", "exponent": 1.2}},
    }, num_requests, rate_per_s=6.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    args = parser.parse_args()
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.float_format", "{:.4g}".format):
        print("Llama-3.1-70B on 8 x H100, 4 req/s\n", dense_70b(args.requests), "\n")
        print("Aggregated vs disaggregated, 8 x H100, 4 req/s\n",
              disaggregation(args.requests), "\n")
        print("Mixtral-8x7B on 4 x H100, 6 req/s\n", moe_expert_parallel(args.requests))


if __name__ == "__main__":
    main()
