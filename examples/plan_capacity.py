"""Cheapest deployment of Llama-3.1-8B serving 60 req/s under p99 TTFT <= 1 s and p99
TPOT <= 50 ms, over H100 / A100-80GB / L40S x TP 1, 2 x 1, 2, 4 replicas.

    python examples/plan_capacity.py [--requests N] [--rate R]
"""

from __future__ import annotations

import argparse

from simulator.planner import PlanResult, SearchSpace, cheapest_deployment
from simulator.scenario import Scenario

SPACE = SearchSpace(accelerators=("h100-sxm", "a100-80gb-sxm", "l40s"),
                    tensor_parallel=(1, 2), replicas=(1, 2, 4))


def plan(num_requests: int = 1500, rate_per_s: float = 60.0,
         executor: str = "process") -> PlanResult:
    base = Scenario().with_overrides([
        f"stop.num_requests={num_requests}", "slo.ttft_s=1.0", "slo.tpot_s=0.05",
    ])
    return cheapest_deployment(base, SPACE, rate_per_s=rate_per_s, replications=3,
                               executor=executor)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    result = plan(args.requests, args.rate)
    print(result.describe())
    print(f"wall time {result.wall_s:.1f} s")


if __name__ == "__main__":
    main()
