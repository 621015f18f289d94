"""Workloads: arrival processes, token-length distributions and trace readers.

Configs are pydantic models discriminated on ``kind`` (see :mod:`workloads.config`);
:func:`open_loop_requests` turns an open-loop workload into arrays of requests and
:func:`read_trace` loads a CSV or JSONL trace. Closed-loop arrivals are driven by the
engine. Code inside the project imports from the submodules, not from here.
"""

from workloads.config import (
    ArrivalProcess,
    ClosedLoopArrivals,
    ConstantArrivals,
    DiurnalArrivals,
    FixedLength,
    GammaArrivals,
    LengthDist,
    LogNormalLength,
    MMPPArrivals,
    MMPPState,
    NormalLength,
    OfflineArrivals,
    OpenLoopArrivals,
    PoissonArrivals,
    RateModulatedArrivals,
    ScheduleArrivals,
    ScheduleSegment,
    Sessions,
    SyntheticWorkload,
    TraceWorkload,
    UniformLength,
    WorkloadConfig,
    ZipfLength,
)
from workloads.generate import RequestArrays, open_loop_arrival_times, open_loop_requests
from workloads.trace import read_trace

__all__ = [
    "ArrivalProcess",
    "ClosedLoopArrivals",
    "ConstantArrivals",
    "DiurnalArrivals",
    "FixedLength",
    "GammaArrivals",
    "LengthDist",
    "LogNormalLength",
    "MMPPArrivals",
    "MMPPState",
    "NormalLength",
    "OfflineArrivals",
    "OpenLoopArrivals",
    "PoissonArrivals",
    "RateModulatedArrivals",
    "RequestArrays",
    "ScheduleArrivals",
    "ScheduleSegment",
    "Sessions",
    "SyntheticWorkload",
    "TraceWorkload",
    "UniformLength",
    "WorkloadConfig",
    "ZipfLength",
    "open_loop_arrival_times",
    "open_loop_requests",
    "read_trace",
]
