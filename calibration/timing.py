"""Timing one op on a torch device: warm-up, synchronised repeats, cold inputs.

``time_op`` calls ``fn`` on a rotation of input sets, so that one call's weights are
not still in cache from the call before (an engine streams each layer's weights and KV
from memory once per step), and returns the median and spread of one call's time.
``rotation_count`` says how many copies of an input set defeat the last-level cache,
within a memory cap. Only this package imports torch.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 32 * 2**20
"""Last-level cache assumed where it cannot be read (a typical desktop/server L3)."""

MAX_ROTATION_SETS = 256
"""Copies of one input set at most: tiny inputs stay cached anyway, and are dispatch-bound."""

MAX_ROTATION_BYTES = 2**30
"""Memory all copies of one input set may take, at most (also at most 1/8 of free memory)."""


class Timing(NamedTuple):
    """One call's time, over the timed samples (seconds).

    Invariant: ``p10_s <= median_s <= p90_s``; all positive.
    """

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    """Timed calls after warm-up (samples times calls per sample)."""
    num_threads: int
    """``torch.get_num_threads()`` while timing (CPU intra-op threads)."""


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work; nothing to wait for on CPU."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def time_op(
    fn: Callable[..., object],
    input_sets: Sequence[Sequence[object]] = ((),),
    *,
    device: str | torch.device,
    warmup: int = 2,
    repeats: int = 10,
    min_time_s: float = 0.05,
    max_time_s: float = 1.0,
    min_sample_s: float | None = None,
    max_samples: int = 2000,
) -> Timing:
    """Time ``fn(*input_sets[i])``, with ``i`` rotating over the sets call by call.

    - Warm-up: ``warmup`` calls (at least one; more only while they take under a quarter
      of ``max_time_s``). They also estimate one call's time.
    - Samples: each sample times ``inner`` consecutive calls between two device
      synchronisations, with ``inner`` chosen so a sample lasts at least ``min_sample_s``
      (default 50 us on CPU, 1 ms on an accelerator, where a synchronisation costs ~10 us
      and an eager engine queues kernels back to back); a sample's value is its time
      divided by ``inner``. Dispatch-bound ops are thus timed at their throughput.
    - Repeats: samples are taken until there are ``repeats`` of them and ``min_time_s``
      has passed, or until ``max_time_s`` has passed (after one sample at least), or
      ``max_samples`` are taken.

    Uses ``time.perf_counter_ns``. Does not modify the inputs except as ``fn`` does.
    Returns the median, 10th and 90th percentile of the samples, and the calls timed.
    """
    if not input_sets:
        raise ValueError("time_op needs at least one input set")
    if max_time_s <= 0:
        raise ValueError(f"max_time_s must be positive, got {max_time_s}")
    kind = torch.device(device).type
    if min_sample_s is None:
        min_sample_s = 50e-6 if kind == "cpu" else 1e-3
    rotation = itertools.cycle(input_sets)

    warm_s = []
    warm_start = time.perf_counter_ns()
    for i in range(max(1, warmup)):
        if i > 0 and (time.perf_counter_ns() - warm_start) * 1e-9 > 0.25 * max_time_s:
            break
        synchronize(device)
        start = time.perf_counter_ns()
        fn(*next(rotation))
        synchronize(device)
        warm_s.append((time.perf_counter_ns() - start) * 1e-9)
    # The first call may pay one-time costs (allocation, kernel selection): prefer later ones.
    call_s = min(warm_s[1:] or warm_s)
    inner = max(1, min(1000, math.ceil(min_sample_s / max(call_s, 1e-9))))

    samples: list[float] = []
    start_ns = time.perf_counter_ns()
    while True:
        synchronize(device)
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn(*next(rotation))
        synchronize(device)
        t1 = time.perf_counter_ns()
        samples.append(max(t1 - t0, 1) * 1e-9 / inner)
        elapsed_s = (t1 - start_ns) * 1e-9
        if (len(samples) >= repeats and elapsed_s >= min_time_s) or elapsed_s >= max_time_s:
            break
        if len(samples) >= max_samples:
            break
    p10, median, p90 = np.quantile(np.asarray(samples), [0.1, 0.5, 0.9])
    return Timing(
        median_s=float(median),
        p10_s=float(p10),
        p90_s=float(p90),
        repeats=len(samples) * inner,
        num_threads=torch.get_num_threads(),
    )


# ---- caches and memory ----


def _parse_size(text: str) -> int | None:
    """'32768K', '32 MiB', '1.5 MB' -> bytes; None if unreadable."""
    found = re.match(r"\s*([\d.]+)\s*([KMG]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not found:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[found.group(2).upper()]
    return int(float(found.group(1)) * scale)


def _cpu_cache_bytes() -> int | None:
    """Size of one instance of the CPU's last-level cache: /sys, then lscpu."""
    best: tuple[int, int] | None = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if size and (best is None or (level, size) > best):
            best = (level, size)
    if best is not None:
        return best[1]
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for cache_name in ("L3", "L2"):
        found = re.search(rf"^{cache_name} cache:\s*(.+)$", out, re.MULTILINE)
        if found:
            # lscpu may print a total over instances: "64 MiB (2 instances)".
            size = _parse_size(found.group(1))
            instances = re.search(r"\((\d+) instances?\)", found.group(1))
            if size:
                return size // int(instances.group(1)) if instances else size
    return None


def cache_bytes(device: str | torch.device) -> int:
    """The device's last-level cache in bytes (CPU L3, GPU L2); 32 MiB if unknown."""
    dev = torch.device(device)
    found: int | None = None
    if dev.type == "cpu":
        found = _cpu_cache_bytes()
    elif dev.type == "cuda":
        found = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
    return found or DEFAULT_CACHE_BYTES


def free_memory_bytes(device: str | torch.device) -> int:
    """Memory free for new tensors on the device, in bytes (a guess of 4 GiB if unknown)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "mps":
        limit = getattr(torch.mps, "recommended_max_memory", None)
        if limit is not None:
            return int(limit() - torch.mps.current_allocated_memory())
        return 4 * 2**30
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def rotation_count(bytes_per_set: int, device: str | torch.device) -> int:
    """Copies of an input set of ``bytes_per_set`` bytes to rotate over: enough for twice
    the last-level cache, at most ``MAX_ROTATION_SETS`` and within ``MAX_ROTATION_BYTES``
    and 1/8 of free memory. At least 1. Pure query."""
    bytes_per_set = max(1, bytes_per_set)
    wanted = math.ceil(2 * cache_bytes(device) / bytes_per_set)
    cap_bytes = min(MAX_ROTATION_BYTES, free_memory_bytes(device) // 8)
    return max(1, min(wanted, MAX_ROTATION_SETS, cap_bytes // bytes_per_set))


def rotated(first: Sequence[object], device: str | torch.device) -> list[tuple[object, ...]]:
    """``first`` and clones of it, as many as ``rotation_count`` asks for its tensors.

    Tensors (also inside lists) are cloned; other objects are shared. Clones have the
    same values, which no op timed here depends on."""
    def size(obj: object) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, list | tuple):
            return sum(size(o) for o in obj)
        return 0

    def clone(obj: object) -> object:
        if isinstance(obj, torch.Tensor):
            return obj.clone()
        if isinstance(obj, list):
            return [clone(o) for o in obj]
        return obj

    count = rotation_count(size(list(first)), device)
    sets = [tuple(first)]
    sets += [tuple(clone(o) for o in first) for _ in range(count - 1)]
    return sets
