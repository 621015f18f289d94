"""Every efficiency knob against one model and workload, in one table.

    python examples/knobs.py [--requests N] [--rate R]

Llama-3.1-8B on one H100 under a chat load (prompts median 1k tokens, outputs median
250), each knob changed alone from the same baseline: decoding strategies, precision,
model transforms, attention and kernel choices, input transforms. servesim predicts
speed and memory, not accuracy: every row is what the technique costs or saves, at the
acceptance rates or quality the scenario assumes.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd

from simulator import Scenario, simulate

METRICS = ["ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "output_tokens_per_s",
           "weight_gib_per_device", "kv_capacity_tokens", "tokens_per_step_mean"]

WORKLOAD: dict[str, Any] = {
    "kind": "synthetic",
    "arrival": {"kind": "poisson", "rate_per_s": 8.0},
    "prompt_tokens": {"kind": "lognormal", "median_tokens": 1000, "sigma": 0.6,
                      "max_tokens": 8000},
    "output_tokens": {"kind": "lognormal", "median_tokens": 250, "sigma": 0.6,
                      "max_tokens": 2000},
}

EAGLE = {"kind": "speculative", "proposer": "eagle", "num_speculative_tokens": 4,
         "acceptance": {"kind": "fixed", "rate": 0.7}}

KNOBS: dict[str, dict[str, Any]] = {
    "baseline (bf16)": {},
    # decoding
    "EAGLE, gamma 4, alpha 0.7": {"engine.decoding": EAGLE},
    "draft Llama-3.2-1B, alpha 0.7": {"engine.decoding": {
        **EAGLE, "proposer": "draft", "draft_model": "llama-3.2-1b"}},
    "lookahead W5 N4 G5": {"engine.decoding": {"kind": "lookahead"}},
    "beam search, width 4": {"engine.decoding": {"kind": "beam", "beam_width": 4}},
    "parallel sampling, n 2": {"engine.decoding": {"kind": "parallel_sampling", "n": 2}},
    # precision
    "int4 weights, group 128 (AWQ)": {"deployment.weight_dtype": "int4",
                                      "deployment.weight_group_size": 128},
    "int4, first and last layers bf16": {
        "deployment.weight_dtype": "int4", "deployment.weight_group_size": 128,
        "deployment.layer_weight_dtypes": [{"layers": [0, -1], "weight_dtype": "bf16"}]},
    "W8A8 fp8": {"deployment.weight_dtype": "fp8", "deployment.activation_dtype": "fp8"},
    "fp8 KV cache": {"deployment.kv_cache_dtype": "fp8"},
    "int4 KV cache": {"deployment.kv_cache_dtype": "int4"},
    # model transforms
    "prune 25% of FFN width": {"model_transforms": [{"kind": "prune", "ffn_frac": 0.25}]},
    "prune 25% of layers": {"model_transforms": [{"kind": "prune", "layers_frac": 0.25}]},
    "2:4 sparsity": {"model_transforms": [{"kind": "sparsity", "pattern": "2:4"}]},
    "low rank 1024 (MLP)": {"model_transforms": [{"kind": "low_rank", "rank": 1024}]},
    "distilled to Llama-3.2-3B": {"model_transforms": [
        {"kind": "distill", "student": "llama-3.2-3b"}]},
    # attention and kernels
    "unfused attention": {"engine.attention": {"kernel": "unfused"}},
    "sparse attention, 1k window + 64": {"engine.attention": {
        "sparse_window_tokens": 1024, "sparse_global_tokens": 64}},
    "no kernel fusion": {"engine.kernel_fusion": "none"},
    "no CUDA graphs": {"engine.cuda_graphs": False},
    # input transforms
    "prompt compression 4x": {"workload.transforms": [
        {"kind": "prompt_compression", "ratio": 4, "compressor_s_per_token": 2e-5,
         "compressor_fixed_s": 0.005}]},
    "RAG, +2000 tokens, 50 ms": {"workload.transforms": [
        {"kind": "retrieval", "retrieved_tokens": {"kind": "fixed", "tokens": 2000},
         "latency_s": 0.05}]},
    "Skeleton-of-Thought, 4 points": {"workload.transforms": [
        {"kind": "skeleton_of_thought", "num_points": 4, "skeleton_tokens": 60}]},
}


def base_scenario(num_requests: int, rate_per_s: float) -> Scenario:
    return Scenario.model_validate({
        "model": "llama-3.1-8b",
        "engine": {"max_model_len": 16384},
        "workload": {**WORKLOAD, "arrival": {"kind": "poisson", "rate_per_s": rate_per_s}},
        "stop": {"num_requests": num_requests},
    })


def knob_table(num_requests: int = 1000, rate_per_s: float = 8.0,
               knobs: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per knob: its summary metrics on the shared workload."""
    base = base_scenario(num_requests, rate_per_s)
    rows = {}
    for name, changes in (knobs or KNOBS).items():
        # JSON is YAML, so structured values go through --set-style overrides too.
        overrides = [f"{path}={json.dumps(value)}" for path, value in changes.items()]
        summary = simulate(base.with_overrides(overrides)).summary()
        # Skeleton-of-Thought splits requests: its latency is the client's, end to end.
        rows[name] = summary[METRICS]
        rows[name]["client_e2e_p50_s"] = summary["client_e2e_p50_s"]
    return pd.DataFrame(rows).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    parser.add_argument("--rate", type=float, default=8.0, help="arrival rate, req/s")
    args = parser.parse_args()
    with pd.option_context("display.width", 220, "display.max_columns", None,
                           "display.float_format", "{:.4g}".format):
        print(f"Llama-3.1-8B on 1 x H100, {args.rate:g} req/s, {args.requests} requests\n")
        print(knob_table(args.requests, args.rate))


if __name__ == "__main__":
    main()
