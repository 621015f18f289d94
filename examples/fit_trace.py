"""Fit a synthetic workload to a trace, then check the look-alike serves like the trace.

    python examples/fit_trace.py [--requests N] [--seed S]

1. Writes a realistic trace to a temporary CSV: bursty gamma arrivals (cv 2, 8 req/s),
   log-normal prompts, and outputs correlated with the prompts (Spearman ~ 0.5), as in
   production chat logs.
2. Reads it back as a ``TraceWorkload`` and fits it (``workloads.fit.fit_workload``).
3. Simulates the trace and its look-alike on the default deployment (Llama-3.1-8B on
   one H100) and prints their latency and throughput side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from simulator import Scenario, simulate
from workloads.config import TraceWorkload
from workloads.fit import fit_workload
from workloads.trace import read_trace

METRICS = ["ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
           "request_throughput_per_s", "output_tokens_per_s"]
REPORT_COLUMNS = ["family", "params", "ks_distance", "verdict", "trace_mean", "fit_mean",
                  "trace_p50", "fit_p50", "trace_p90", "fit_p90", "trace_p99", "fit_p99"]


def write_trace(path: Path, num_requests: int, seed: int) -> None:
    """A bursty chat-like trace: gamma gaps, correlated log-normal prompt/output lengths."""
    rng = np.random.default_rng(seed)
    rate_per_s, cv = 8.0, 2.0
    shape = 1 / cv**2
    arrival_s = np.cumsum(rng.gamma(shape, 1 / (rate_per_s * shape), num_requests))
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], size=num_requests)
    prompt = np.clip(np.rint(600 * np.exp(1.0 * z[:, 0])), 4, 8000).astype(np.int64)
    output = np.clip(np.rint(180 * np.exp(0.8 * z[:, 1])), 1, 2000).astype(np.int64)
    pd.DataFrame({"arrival_s": arrival_s.round(6), "prompt_tokens": prompt,
                  "output_tokens": output}).to_csv(path, index=False)


def side_by_side(trace: TraceWorkload, num_requests: int, seed: int) -> tuple[pd.DataFrame,
                                                                              pd.DataFrame]:
    """(fit report, summary metrics of the trace and its look-alike, one column each)."""
    requests = read_trace(trace)
    fit = fit_workload(requests)
    report = fit.report()
    runs = {}
    for name, workload in {"trace": trace.model_dump(mode="json"),
                           "look-alike": fit.to_dict()}.items():
        scenario = Scenario.from_dict({"workload": workload, "seed": seed,
                                       "stop": {"num_requests": num_requests}})
        runs[name] = simulate(scenario).summary()[METRICS]
    table = pd.DataFrame(runs)
    table["ratio"] = table["look-alike"] / table["trace"]
    extra = pd.Series({"gap_cv": fit.gap_cv, "dispersion_index": fit.dispersion_index,
                       "prompt_output_spearman": fit.prompt_output_spearman}, name="trace")
    report.attrs["extra"] = extra
    return report, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        write_trace(path, args.requests, args.seed)
        report, table = side_by_side(TraceWorkload(path=path), args.requests, args.seed)
    print("Fit (chosen family per quantity; gaps in s, lengths in tokens)")
    print(report[REPORT_COLUMNS].to_string(float_format=lambda x: f"{x:.4g}"))
    print()
    print(report.attrs["extra"].to_string(float_format=lambda x: f"{x:.3f}"))
    print("(the look-alike draws prompt and output lengths independently)")
    print()
    print("Llama-3.1-8B on one H100: trace vs look-alike")
    print(table.to_string(float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
