"""Load a 1,000,000-row Azure-format trace: wall time and peak RSS.

Run: ``python benchmarks/trace_load.py [num_rows]``. Writes the CSV to a temporary
directory (deleted afterwards), then loads it with ``format: azure``. Peak RSS is the
process's ``ru_maxrss`` after the load (it includes the interpreter and imports; the
figure before loading is printed too). Target: under ~1.5 GB.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.config import TraceWorkload
from workloads.trace import load_trace


def write_azure(path: Path, num_rows: int) -> None:
    g = np.random.default_rng(0)
    start = np.datetime64("2024-05-10T00:00:00", "ns")
    offsets_ns = np.cumsum(g.exponential(0.6e9, num_rows)).astype(np.int64)
    stamps = pd.Series(start + offsets_ns.astype("timedelta64[ns]"))
    frame = pd.DataFrame({
        # Azure's format: 7 fractional digits (100 ns ticks).
        "TIMESTAMP": stamps.dt.strftime("%Y-%m-%d %H:%M:%S.%f") + "0",
        "ContextTokens": g.integers(1, 8000, num_rows),
        "GeneratedTokens": g.integers(1, 1000, num_rows),
    })
    frame.to_csv(path, index=False)


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes vs KiB


def main(num_rows: int = 1_000_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "AzureLLMInferenceTrace_conv_1week.csv"
        write_azure(path, num_rows)
        size_mib = path.stat().st_size / 2**20
        before = peak_rss_mib()
        t0 = time.perf_counter()
        requests, report = load_trace(TraceWorkload(path=path, format="azure"))
        wall_s = time.perf_counter() - t0
    assert len(requests.arrival_s) == num_rows, report.summary()
    print(f"{num_rows} rows ({size_mib:.0f} MiB CSV): load {wall_s:.2f} s, "
          f"peak RSS {peak_rss_mib():.0f} MiB (before load {before:.0f} MiB)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
