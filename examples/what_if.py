"""Two what-if questions from a capacity planner, answered in seconds.

    python examples/what_if.py [--requests N]

1. Is an FP8 KV cache worth it for Llama-3.1-70B on 2xH100 under a long-context load?
   (Weights leave ~3.5 GiB per GPU for KV; FP8 halves the bytes per token, so twice the
   tokens fit: bigger batches, fewer preemptions, far shorter queues.)
2. Does chunked prefill help long prompts? (Sarathi-Serve: bounding each iteration's
   prefill work keeps decode steps short, so the tail of time-per-output-token drops.)
"""

from __future__ import annotations

import argparse

import pandas as pd

from simulator import Scenario, resolve, simulate

METRICS = ["ttft_p50_s", "ttft_p99_s", "itl_p99_s", "output_tokens_per_s", "num_preemptions"]


def compare(base: Scenario, variants: dict[str, list[str]]) -> pd.DataFrame:
    """One row per variant: its summary metrics and KV capacity."""
    rows = {}
    for name, overrides in variants.items():
        scenario = base.with_overrides(overrides)
        summary = simulate(scenario).summary()[METRICS]
        summary["kv_capacity_tokens"] = resolve(scenario).memory.kv_capacity_tokens
        rows[name] = summary
    return pd.DataFrame(rows).T


def fp8_kv(num_requests: int) -> pd.DataFrame:
    base = Scenario.model_validate({
        "model": "llama-3.1-70b",
        "deployment": {"tensor_parallel": 2},
        "engine": {"max_model_len": 16384},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 0.3},
                     "prompt_tokens": {"kind": "uniform", "min_tokens": 2000, "max_tokens": 8000},
                     "output_tokens": {"kind": "uniform", "min_tokens": 200, "max_tokens": 800}},
        "stop": {"num_requests": num_requests},
    })
    return compare(base, {"bf16 KV": [], "fp8 KV": ["deployment.kv_cache_dtype=fp8"]})


def chunked_prefill(num_requests: int) -> pd.DataFrame:
    base = Scenario.model_validate({
        "model": "llama-3.1-8b",
        "engine": {"max_model_len": 16384, "max_num_batched_tokens": 16384},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 3.0},
                     "prompt_tokens": {"kind": "uniform", "min_tokens": 1000,
                                       "max_tokens": 15000},
                     "output_tokens": {"kind": "uniform", "min_tokens": 100, "max_tokens": 500}},
        "stop": {"num_requests": num_requests},
    })
    return compare(base, {
        "whole prompts": ["engine.chunked_prefill=false"],
        "chunks of 2048": ["engine.max_num_batched_tokens=2048"],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with pd.option_context("display.width", 120, "display.float_format", "{:,.4g}".format):
        print("1. FP8 KV cache, Llama-3.1-70B on 2xH100, 2k-8k token prompts")
        print(fp8_kv(args.requests).to_string(), end="\n\n")
        print("2. Chunked prefill, Llama-3.1-8B on 1xH100, 1k-15k token prompts")
        print(chunked_prefill(args.requests).to_string())


if __name__ == "__main__":
    main()
