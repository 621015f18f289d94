"""Simulator speed: simulated requests and iterations per wall second, and peak RSS.

    python benchmarks/speed.py              # both cases (about a minute or two)
    python benchmarks/speed.py --case 100k  # one case
    python benchmarks/speed.py --case 100k-eagle --case 100k-pp2 --case 100k-1p1d

Targets on a 2-core laptop-class machine (issue #2): 100,000 ShareGPT-like requests on
one replica in <= 10 s; 1,000,000 on 16 replicas in <= 60 s with peak RSS <= 2 GB.
Each case runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {
    # Llama-3.1-8B on H100 SXM at 20 req/s per replica: busy (batches of ~30-60) but stable.
    "100k": {"replicas": 1, "num_requests": 100_000, "rate_per_s": 20.0},
    "1m": {"replicas": 16, "num_requests": 1_000_000, "rate_per_s": 320.0},
    # The layouts and decodings whose runs are simulated differently (issues 8 and 9):
    # speculative decoding draws schedules and advances runs from ring buffers; pipeline
    # stages are SimPy resources, stepped per stage; disaggregated pools hand KV over.
    "100k-eagle": {"replicas": 1, "num_requests": 100_000, "rate_per_s": 20.0,
                   "overrides": ['engine.decoding={"kind": "speculative", "proposer": "eagle"}']},
    "100k-pp2": {"replicas": 1, "num_requests": 100_000, "rate_per_s": 20.0,
                 "overrides": ["deployment.pipeline_parallel=2"]},
    "100k-1p1d": {"replicas": 1, "num_requests": 100_000, "rate_per_s": 20.0,
                  "overrides": ['deployment.groups=[{"role": "prefill"}, {"role": "decode"}]']},
}
DEFAULT_CASES = ("100k", "1m")
"""Run without --case (the targets); the others are run by name."""


def run_case(name: str, workers: int | None) -> dict[str, object]:
    from simulator import Scenario, simulate

    case = CASES[name]
    replicas = [] if "groups" in str(case.get("overrides")) else [
        f"deployment.replicas={case['replicas']}"]
    scenario = Scenario().with_overrides(
        [
            *replicas,
            f"stop.num_requests={case['num_requests']}",
            f"workload.arrival.rate_per_s={case['rate_per_s']}",
            *case.get("overrides", []),  # type: ignore[misc]
        ]
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    results = simulate(scenario, workers=workers)
    sim_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    summary = results.summary()
    total_s = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Replica groups may run in worker processes (simulate(workers=None) picks the CPU
    # count for big oblivious-routing runs); report the largest of them too.
    worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "case": name,
        "workers": "auto" if workers is None else workers,
        "requests": len(results.requests),
        "iterations": len(results.iterations),
        "simulate_wall_s": round(sim_s, 2),
        "parent_cpu_s": round(cpu_s, 2),  # less sensitive than wall time to a busy host
        "with_summary_wall_s": round(total_s, 2),
        "requests_per_wall_s": round(len(results.requests) / sim_s),
        "iterations_per_wall_s": round(len(results.iterations) / sim_s),
        "peak_rss_mb": round(peak_rss_mb),
        "worker_peak_rss_mb": round(worker_rss_mb),
        "simulated_s": round(results.info.end_s, 1),
        "ttft_p99_s": round(float(summary["ttft_p99_s"]), 4),
        "mean_decode_batch": round(float(results.iterations.num_decode_seqs.mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for replica groups (default: auto, the CPU count)")
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.case or list(DEFAULT_CASES)
    if args.inline:
        for name in names:
            print(json.dumps(run_case(name, args.workers)))
        return
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, "--inline", "--case", name]
            + ([] if args.workers is None else ["--workers", str(args.workers)]),
            check=True, capture_output=True, text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
