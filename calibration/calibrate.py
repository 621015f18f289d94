"""``servesim calibrate``: measure the local torch device, fit, and write a profile.

``build_profile`` (no torch) turns raw points into a profile: the device's description,
the fitted efficiencies and their quality. ``calibrate`` runs the microbenchmarks
first (torch, imported only when called).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from calibration.fit import TORCH_DTYPES, fit_elementwise, fit_profile, measured_peaks
from hardware.catalog import load_catalog
from hardware.efficiency import EfficiencyProfile
from hardware.profile import CalibrationProfile, HostInfo, MeasuredPoint
from hardware.spec import AcceleratorSpec

Progress = Callable[[str, int, int], None]
"""(suite, points done, points planned) -> None."""

# The reference engine's structure (calibration/reference.py, which imports torch; a test
# holds these equal to its constants): a profile measured here describes that engine.
REFERENCE_ELEMENTWISE_OPS = 10
"""Elementwise dispatches per layer (norms, rotary, activation, residual adds)."""
REFERENCE_ELEMENTWISE_MIX = {"rms_norm": 2, "rotary": 1, "silu_mul": 1, "add": 3}
"""Calls per layer of each measured elementwise op (calibration/microbench.py names):
two norms, one rotary (3 kernels), silu x mul (2), two residual adds and the
concatenation of the attention outputs (priced as an add): the 10 dispatches above."""
REFERENCE_KV_WRITES = 2
"""KV-cache writes (keys, values) per sequence and layer, beside its attention call."""

_CUDA_NAMES = {  # torch.cuda.get_device_name fragments -> catalog entries
    "H200": "h200", "H100 PCIe": "h100-pcie", "H100": "h100-sxm", "B200": "b200",
    "A100-SXM4-40GB": "a100-sxm-40gb", "A100": "a100-sxm-80gb", "L40S": "l40s",
    "MI300X": "mi300x",
}


def catalog_part(device_name: str) -> AcceleratorSpec | None:
    """The catalog entry a CUDA/ROCm device name matches, if any (most specific first)."""
    catalog = load_catalog()
    for fragment, name in _CUDA_NAMES.items():
        if fragment in device_name and name in catalog:
            return catalog[name]
    return None


def device_spec(info: Mapping[str, Any], points: Sequence[MeasuredPoint],
                memory_gib: float) -> AcceleratorSpec:
    """The device's description: its catalog entry when it has one (fractions are then
    of the datasheet peaks), else one built from the best rates measured."""
    known = catalog_part(str(info["device_name"])) if info["device_type"] != "cpu" else None
    if known is not None:
        return known
    tflops, tb_per_s = measured_peaks(points)
    name = f"{info['device_type']}:{info['device_name']}"
    return AcceleratorSpec(
        name=name,
        memory_gib=memory_gib,
        hbm_tb_per_s=tb_per_s,
        peak_tflops=tflops,
        # No collectives or host copies are measured on one device: nominal figures,
        # unused by single-device runs.
        intra_node_gb_per_s=tb_per_s * 1e3,
        pcie_gb_per_s=tb_per_s * 1e3,
        network_gb_per_s=1.0,
        devices_per_node=1,
        tdp_w=200.0,
        idle_w=50.0,
        price_per_hour_usd=0.0,
        sources=[
            f"measured by servesim calibrate with torch {info['torch_version']} on "
            f"{info['num_threads']} threads: peaks are the best GEMM rate per dtype and the "
            "best copy or weight-streaming bandwidth, not a datasheet",
            "power and price are placeholders (not measured): set them in the scenario",
        ],
    )


def build_profile(points: Sequence[MeasuredPoint], info: Mapping[str, Any], *, quick: bool,
                  memory_gib: float) -> CalibrationProfile:
    """Fit ``points`` (measured on the device ``info`` describes) into a profile."""
    accelerator = device_spec(info, points, memory_gib)
    # What the reference engine runs: fp32 on a CPU, 16-bit on accelerators.
    attention = "float32" if info["device_type"] == "cpu" else "bfloat16"
    result = fit_profile(
        points, accelerator, name=f"calibrated:{accelerator.name}",
        elementwise_kernels_per_layer=REFERENCE_ELEMENTWISE_OPS,
        per_sequence_attention=True,  # the reference engine calls attention per sequence
        attention_dtype=TORCH_DTYPES[attention],
        elementwise_mix=REFERENCE_ELEMENTWISE_MIX,
    )
    writes = [p for p in points if p.name == "kv_cache_write" and p.dtype == attention]
    quality = list(result.quality)
    if writes:
        write, q = fit_elementwise(writes, accelerator, 1)
        write_s = write.floor_s
        quality.append(q.model_copy(update={"dtype": f"{q.dtype} kv_cache_write"}))
    else:
        write_s = result.efficiency.elementwise.floor_s
    efficiency = _with_kv_writes(result.efficiency, write_s)
    host = HostInfo(
        torch_version=str(info["torch_version"]),
        device_type=info["device_type"],
        device_name=str(info["device_name"]),
        num_threads=int(info["num_threads"]),
        platform=str(info["platform"]),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        quick=quick,
    )
    return CalibrationProfile(accelerator=accelerator, host=host, efficiency=efficiency,
                              fit=quality, points=list(points))


def _with_kv_writes(eff: EfficiencyProfile, write_s: float) -> EfficiencyProfile:
    """Each sequence also writes its keys and values per layer: two small copies of
    ``write_s`` each (the fitted KV-write floor), added to attention's per-sequence cost."""
    extra = REFERENCE_KV_WRITES * write_s
    return eff.model_copy(update={
        "prefill_attention": eff.prefill_attention.model_copy(
            update={"per_sequence_s": eff.prefill_attention.per_sequence_s + extra}),
        "decode_attention": eff.decode_attention.model_copy(
            update={"per_sequence_s": eff.decode_attention.per_sequence_s + extra}),
    })


def calibrate(device: str = "cpu", *, quick: bool = False, time_budget_s: float | None = None,
              dtypes: list[str] | None = None, num_threads: int | None = None,
              progress: Progress | None = None) -> CalibrationProfile:
    """Run the microbenchmarks on ``device`` ('cpu', 'cuda', 'mps') with ``num_threads``
    torch threads (None: torch's default) and fit a profile."""
    import torch

    from calibration import microbench  # torch, only now

    budget = time_budget_s if time_budget_s is not None else (45.0 if quick else 300.0)
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        points = microbench.run_all(device, dtypes, quick, budget, progress)
        info = microbench.device_info(device)
    finally:
        torch.set_num_threads(previous)
    return build_profile(points, info, quick=quick, memory_gib=_memory_gib(device))


def _memory_gib(device: str) -> float:
    """Memory the device offers: total RAM for a CPU, the device's own otherwise."""
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory) / 2**30
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 16.0
