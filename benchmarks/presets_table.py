"""One mixed workload under every engine preset, as a markdown table.

    python benchmarks/presets_table.py                 # about 10 s on a 2-core machine
    python benchmarks/presets_table.py --load 0.9 --num-requests 8000

Llama-3.1-8B on one H100 SXM, max_model_len 8192. Prompts are lognormal (median 600
tokens, clipped to 100-3500) after a 512-token system prompt shared by half the
requests (16 distinct ones); outputs lognormal (median 150, clipped to 10-1000).
Arrivals are Poisson at ``--load`` times the vllm preset's capacity, measured first as
its throughput on the same requests all present at t=0 (offline).

Every preset runs with the same max_model_len (the presets that compute whole prompts
or reserve KV for the longest sequence need one). Extra rows override one preset field
by field, to show what a choice costs.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from typing import Any

from simulator import Scenario, simulate
from simulator.presets import PRESETS

MAX_MODEL_LEN = 8192
WORKLOAD: dict[str, Any] = {
    "kind": "synthetic",
    "prompt_tokens": {"kind": "lognormal", "median_tokens": 600, "sigma": 0.9,
                      "min_tokens": 100, "max_tokens": 3500},
    "output_tokens": {"kind": "lognormal", "median_tokens": 150, "sigma": 0.9,
                      "min_tokens": 10, "max_tokens": 1000},
    "shared_prefix": {"num_prefixes": 16, "tokens": 512, "request_frac": 0.5},
}
VARIANTS: dict[str, dict[str, Any]] = {
    # Clients that send max_tokens equal to the true output length (as benchmark clients
    # do): GUARANTEED_NO_EVICT then reserves exactly prompt + output.
    "trtllm, max_tokens = output": {"preset": "trtllm", "kv_reservation": "predicted",
                                    "predictor": {"kind": "oracle"}},
    # The same for LightLLM's router, which plans with each request's max_new_tokens.
    "lightllm, max_new_tokens = output": {"preset": "lightllm", "kv_reservation": "predicted",
                                          "predictor": {"kind": "oracle"}},
}


def scenario(engine: dict[str, Any], arrival: dict[str, Any], num_requests: int) -> Scenario:
    return Scenario.from_dict({
        "name": "presets-table",
        "model": "llama-3.1-8b",
        "hardware": {"accelerator": "h100-sxm"},
        "engine": {"max_model_len": MAX_MODEL_LEN, **engine},
        "workload": {**WORKLOAD, "arrival": arrival},
        "stop": {"num_requests": num_requests},
        "seed": 0,
    })


def row(label: str, summary: Any) -> str:
    def ms(x: float) -> str:
        return "-" if math.isnan(x) else f"{x * 1e3:.1f}"

    def s(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    cells = [
        label, s(summary["ttft_p50_s"]), s(summary["ttft_p99_s"]),
        ms(summary["tpot_p50_s"]), ms(summary["tpot_p99_s"]),
        f"{summary['output_tokens_per_s']:.0f}", f"{summary['num_preemptions']:.0f}",
        f"{summary['prefix_hit_rate_frac']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=float, default=0.8,
                        help="arrival rate as a share of the vllm preset's offline capacity")
    parser.add_argument("--rate", type=float, default=None,
                        help="arrival rate, req/s (overrides --load)")
    parser.add_argument("--num-requests", type=int, default=10_000)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print("command: python " + shlex.join(sys.argv))
    offline = simulate(scenario({"preset": "vllm"}, {"kind": "offline"}, args.num_requests))
    capacity = offline.summary()["request_throughput_per_s"]
    rate = args.rate if args.rate is not None else args.load * capacity
    print(f"llama-3.1-8b, 1 x H100 SXM, max_model_len {MAX_MODEL_LEN}, "
          f"{args.num_requests} requests; vllm preset offline capacity {capacity:.1f} req/s; "
          f"Poisson arrivals at {rate:.1f} req/s ({rate / capacity:.0%} of it)\n")

    print("| preset | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | TPOT p99 (ms) "
          "| output tok/s | preemptions | prefix hit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    arrival = {"kind": "poisson", "rate_per_s": rate}
    runs = {name: {"preset": name} for name in PRESETS} | VARIANTS
    for label, engine in runs.items():
        results = simulate(scenario(engine, arrival, args.num_requests))
        print(row(label, results.summary()), flush=True)
    print(f"\nwall time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
