"""Workloads: arrival processes, token-length distributions and trace readers.

Configs are pydantic models discriminated on ``kind`` (see :mod:`workloads.config`);
:func:`open_loop_requests` turns an open-loop workload into arrays of requests and
:func:`read_trace` loads a CSV or JSONL trace; :func:`apply_transforms` applies input
transforms (prompt compression, retrieval, Skeleton-of-Thought). Closed-loop arrivals
are driven by the engine. Code inside the project imports from the submodules, not from here.
"""

from workloads.config import (
    ArrivalProcess,
    ClosedLoopArrivals,
    ConstantArrivals,
    DiurnalArrivals,
    FixedLength,
    GammaArrivals,
    InputTransform,
    LengthDist,
    LogNormalLength,
    MMPPArrivals,
    MMPPState,
    NormalLength,
    OfflineArrivals,
    OpenLoopArrivals,
    PoissonArrivals,
    PromptCompression,
    RateModulatedArrivals,
    Retrieval,
    ScheduleArrivals,
    ScheduleSegment,
    Sessions,
    SkeletonOfThought,
    SyntheticWorkload,
    TraceWorkload,
    UniformLength,
    WorkloadConfig,
    ZipfLength,
)
from workloads.generate import RequestArrays, open_loop_arrival_times, open_loop_requests
from workloads.trace import read_trace
from workloads.transforms import apply_transforms

__all__ = [
    "ArrivalProcess",
    "ClosedLoopArrivals",
    "ConstantArrivals",
    "DiurnalArrivals",
    "FixedLength",
    "GammaArrivals",
    "InputTransform",
    "LengthDist",
    "LogNormalLength",
    "MMPPArrivals",
    "MMPPState",
    "NormalLength",
    "OfflineArrivals",
    "OpenLoopArrivals",
    "PoissonArrivals",
    "PromptCompression",
    "RateModulatedArrivals",
    "RequestArrays",
    "Retrieval",
    "ScheduleArrivals",
    "ScheduleSegment",
    "Sessions",
    "SkeletonOfThought",
    "SyntheticWorkload",
    "TraceWorkload",
    "UniformLength",
    "WorkloadConfig",
    "ZipfLength",
    "apply_transforms",
    "open_loop_arrival_times",
    "open_loop_requests",
    "read_trace",
]
