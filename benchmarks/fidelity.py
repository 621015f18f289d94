"""Fidelity, first look: servesim's predictions against published measurements.

    python benchmarks/fidelity.py            # every case in fidelity_cases.yaml
    python benchmarks/fidelity.py --csv out.csv

Each case (benchmarks/fidelity_cases.yaml, sources in docs/fidelity-sources.md) is
turned into a scenario with the catalog's model and accelerator and the engine
defaults; nothing is tuned per case. Offline cases use a large batch cap, as
TensorRT-LLM's benchmark picks one (its exact cap is not published).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from simulator import Scenario, simulate

CASES = Path(__file__).with_name("fidelity_cases.yaml")


def scenario_for(case: dict[str, Any], max_requests: int) -> Scenario:
    weight = case["weight_dtype"]
    activation = weight if weight in ("fp8", "int8") else ("fp16" if weight == "fp16" else "bf16")
    kind = case["kind"]
    prompt, output = int(case["input_tokens"]), int(case["output_tokens"])
    engine: dict[str, Any] = {"max_model_len": max(prompt + output, 4096)}
    if kind.startswith("offline"):
        num = min(int(case.get("num_requests") or case.get("batch_size")), max_requests)
        arrival: dict[str, Any] = {"kind": "offline"}
        engine |= {"max_num_seqs": int(case.get("batch_size") or 2048),
                   "max_num_batched_tokens": 8192}
    elif "request_rate_qps" in case:
        num = min(int(case["num_requests"]), max_requests)
        arrival = {"kind": "poisson", "rate_per_s": float(case["request_rate_qps"])}
    else:  # batch-1 latency cases: one request on an idle engine
        num = 1
        arrival = {"kind": "offline"}
    return Scenario.model_validate(
        {
            "name": case["id"],
            "model": case["model"],
            "hardware": {"accelerator": case["accelerator"]},
            "deployment": {
                "tensor_parallel": case["tensor_parallel"],
                "weight_dtype": weight,
                "activation_dtype": activation,
                "kv_cache_dtype": case.get("kv_cache_dtype", "auto"),
            },
            "engine": engine,
            "workload": {
                "kind": "synthetic",
                "arrival": arrival,
                "prompt_tokens": {"kind": "fixed", "tokens": prompt},
                "output_tokens": {"kind": "fixed", "tokens": output},
            },
            "stop": {"num_requests": num},
        }
    )


def predict(case: dict[str, Any], max_requests: int) -> float:
    results = simulate(scenario_for(case, max_requests))
    summary = results.summary()
    kind = case["kind"]
    if kind == "decode_tokens_per_s_batch1":
        req = results.requests.iloc[0]
        return float(req.generated_tokens / req.e2e_s)
    if kind in ("prefill_latency_s", "ttft_s"):
        return float(summary["ttft_mean_s"])
    if kind == "tpot_s":
        return float(summary["tpot_mean_s"])
    if kind == "offline_output_tokens_per_s":
        return float(summary["output_tokens_per_s"])
    if kind == "offline_total_tokens_per_s":
        return float(summary["total_tokens_per_s"])
    raise ValueError(f"unknown case kind {kind!r}")


def run(max_requests: int) -> pd.DataFrame:
    rows = []
    for case in yaml.safe_load(CASES.read_text()):
        predicted = predict(case, max_requests)
        rows.append(
            {
                "case": case["id"],
                "metric": case["kind"],
                "measured": case["value"],
                "predicted": predicted,
                "error_pct": 100.0 * (predicted - case["value"]) / case["value"],
                "confidence": case.get("confidence", ""),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--max-requests", type=int, default=5000,
                        help="cap on simulated requests per offline case (steady state)")
    args = parser.parse_args()
    table = run(args.max_requests)
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda x: f"{x:,.4g}"))
    abs_err = table.error_pct.abs()
    print(f"\nmedian |error| {abs_err.median():.1f}%, within 15%: "
          f"{(abs_err <= 15).sum()}/{len(table)}")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
