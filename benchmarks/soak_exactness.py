"""Soak test of the engine's exactness claims over many random tiny scenarios.

    python benchmarks/soak_exactness.py --trials 150

For each random scenario (batching and routing policies, batch limits, chunking, block
size, KV pressure, sliding windows, Poisson/Gamma/offline/closed-loop arrivals, count or
duration stops, 1-3 replicas) it checks the engine invariants and that fast-forwarded
runs, stepped runs and (for oblivious routing) worker-process runs give identical
frames. The unit tests run a few of these; this runs many, for changes to the engine.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from simulator.conformance import TINY_DEVICE, check_results, tiny_scenario
from simulator.deployment import ScenarioError, resolve
from simulator.engine import simulate


def random_scenario(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    max_seqs = int(rng.integers(1, 24))
    budget = max_seqs + int(rng.integers(0, 400))
    chunked = bool(rng.integers(0, 2))
    engine = {"max_num_seqs": max_seqs, "max_num_batched_tokens": budget,
              "chunked_prefill": chunked, "block_size_tokens": int(rng.choice([1, 4, 16, 32])),
              "gpu_memory_utilization_frac": 1.0}
    if rng.random() < 0.3:
        engine["long_prefill_token_threshold"] = int(rng.integers(1, 100))
    if not chunked:
        engine["max_model_len"] = budget
    model = {"sliding_window_tokens": int(rng.integers(8, 200))} if rng.random() < 0.2 else {}
    engine["batching"] = str(rng.choice(
        ["token_budget", "orca", "prefill_first", "static", "decode_priority", "sarathi"]
    ))
    engine["routing"] = str(rng.choice(
        ["round_robin", "random", "least_requests", "least_tokens", "power_of_two"]
    ))
    if engine["batching"] in ("orca", "prefill_first", "static", "decode_priority"):
        engine["max_model_len"] = budget  # whole prompts must fit the budget
    if rng.random() < 0.3:
        engine["preemption_mode"] = "swap"
        engine["swap_space_gib"] = float(rng.choice([0.00005, 0.002, 0.05]))
    if rng.random() < 0.3:
        engine["queue"] = "sjf"
        engine["predictor"] = ({"kind": "oracle"} if rng.random() < 0.5
                               else {"kind": "noisy", "sigma": 1.0})
    if engine["batching"] == "sarathi":
        engine["batching"] = {"kind": "sarathi", "token_budget": budget}
    kind = str(rng.choice(["poisson", "gamma", "offline", "closed_loop"]))
    arrival = {
        "poisson": {"kind": "poisson", "rate_per_s": float(rng.uniform(20, 5000))},
        "gamma": {"kind": "gamma", "rate_per_s": float(rng.uniform(20, 3000)), "cv": 3.0},
        "offline": {"kind": "offline"},
        "closed_loop": {"kind": "closed_loop", "concurrency": int(rng.integers(1, 30)),
                        "think_time_s": float(rng.choice([0.0, 0.001]))},
    }[kind]
    by_count = kind == "offline" or rng.random() < 0.7
    stop = ({"num_requests": 80} if by_count
            else {"num_requests": None, "duration_s": float(rng.uniform(0.05, 2))})
    return tiny_scenario(
        hardware={"accelerator": {**TINY_DEVICE,
                                  "memory_gib": float(rng.choice([0.0045, 0.006, 0.01, 0.05]))}},
        engine=engine, model=model, deployment={"replicas": int(rng.integers(1, 4))},
        workload={"kind": "synthetic", "arrival": arrival,
                  "prompt_tokens": {"kind": "uniform", "min_tokens": 1,
                                    "max_tokens": int(rng.integers(1, 1500))},
                  "output_tokens": {"kind": "uniform", "min_tokens": 1,
                                    "max_tokens": int(rng.integers(1, 600))}},
        stop=stop, seed=int(rng.integers(0, 1000)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    checked = preempting = 0
    for _ in range(args.trials):
        try:
            scenario = random_scenario(rng)
            capacity = resolve(scenario).memory.num_kv_blocks
            fast = simulate(scenario)
        except (ScenarioError, ValueError):
            continue  # a random deployment that does not fit its tiny device
        check_results(fast, capacity)
        others = [simulate(scenario.with_overrides(["engine.fast_forward=false"]))]
        oblivious = scenario.engine.routing.kind in ("round_robin", "random")
        if (scenario.deployment.replicas > 1 and oblivious
                and scenario.workload.arrival.kind != "closed_loop"):
            others.append(simulate(scenario, workers=2))
        for other in others:
            pd.testing.assert_frame_equal(fast.requests, other.requests, check_exact=True)
            pd.testing.assert_frame_equal(fast.iterations, other.iterations, check_exact=True)
        checked += 1
        preempting += int(fast.requests.num_preemptions.sum() > 0)
    print(f"{checked} scenarios identical across modes ({preempting} with preemptions)")


if __name__ == "__main__":
    main()
