"""Max sustainable rate of Llama-3.1-8B on one H100 under p99 TTFT <= 1 s, p99 TPOT <= 50 ms.

    python examples/max_rate.py [--requests N]
"""

from __future__ import annotations

import argparse

from simulator.planner import LoadResult, max_sustainable_rate
from simulator.scenario import Scenario


def plan(num_requests: int = 2000, executor: str = "process") -> LoadResult:
    base = Scenario().with_overrides([
        f"stop.num_requests={num_requests}", "slo.ttft_s=1.0", "slo.tpot_s=0.05",
    ])
    return max_sustainable_rate(base, replications=2, max_replications=4, low_rate_per_s=4.0,
                                tolerance_frac=0.1, executor=executor)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    result = plan(args.requests)
    print(result.describe())
    print(result.probes[["rate_per_s", "n", "verdict", "detail"]].to_string(index=False))
    print(f"wall time {result.wall_s:.1f} s")


if __name__ == "__main__":
    main()
