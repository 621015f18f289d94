"""Roofline op costs: FLOPs and bytes to seconds, for one device.

Every function works elementwise on floats or numpy arrays, so a run of iterations
that differ only in their KV lengths is priced in one call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hardware.efficiency import CollectiveEfficiency

Scalar = float | np.ndarray


class OpCost(NamedTuple):
    """Cost of one op class for one iteration on one device."""

    seconds: Scalar
    flops: Scalar
    hbm_bytes: Scalar

    def __add__(self, other: object) -> OpCost:
        assert isinstance(other, OpCost)
        return OpCost(
            self.seconds + other.seconds,
            self.flops + other.flops,
            self.hbm_bytes + other.hbm_bytes,
        )

    def scaled(self, factor: float) -> OpCost:
        """The same op run ``factor`` times (e.g. once per layer)."""
        return OpCost(self.seconds * factor, self.flops * factor, self.hbm_bytes * factor)


ZERO = OpCost(0.0, 0.0, 0.0)


def roofline_s(
    flops: Scalar,
    hbm_bytes: Scalar,
    *,
    peak_flops_per_s: float,
    compute_frac: Scalar,
    hbm_bytes_per_s: float,
    memory_frac: float,
    floor_s: float,
) -> Scalar:
    """``floor_s + max(flops / (peak * compute_frac), bytes / (bw * memory_frac))``."""
    compute_s = flops / (peak_flops_per_s * compute_frac)
    memory_s = hbm_bytes / (hbm_bytes_per_s * memory_frac)
    return floor_s + np.maximum(compute_s, memory_s)


def all_reduce_s(
    message_bytes: Scalar, *, num_devices: int, link_bytes_per_s: float, eff: CollectiveEfficiency
) -> Scalar:
    """Ring all-reduce: each device sends and receives 2(n-1)/n of the message.

    Zero for a single device. A fixed latency stands for the one-shot kernels real
    engines use on small messages (shared/FACTS.md: 2.8-3.5 us for 8 KiB on 2-8 GPUs).
    """
    if num_devices <= 1:
        return 0.0 * message_bytes
    fixed_s = eff.latency_s + eff.per_device_latency_s * num_devices
    traffic = 2.0 * (num_devices - 1) / num_devices * message_bytes
    return fixed_s + traffic / (link_bytes_per_s * eff.bus_frac)


def all_gather_s(
    message_bytes: Scalar, *, num_devices: int, link_bytes_per_s: float, eff: CollectiveEfficiency
) -> Scalar:
    """Ring all-gather of a message of ``message_bytes`` in total (each device holds 1/n)."""
    if num_devices <= 1:
        return 0.0 * message_bytes
    fixed_s = eff.latency_s + eff.per_device_latency_s * num_devices
    traffic = (num_devices - 1) / num_devices * message_bytes
    return fixed_s + traffic / (link_bytes_per_s * eff.bus_frac)
