"""What ``servesim calibrate`` prints: the device against its peaks, the fit per op class,
and how far to trust the simulator on it. No torch."""

from __future__ import annotations

from rich.table import Table

from calibration.fit import TORCH_DTYPES
from hardware.profile import CalibrationProfile

TRUST_GOOD = 0.10
TRUST_FAIR = 0.25


def trust(held_out_mape: float | None) -> str:
    """A word for a held-out error: good (<10%), fair (<25%), poor; 'unjudged' without one."""
    if held_out_mape is None:
        return "unjudged (too few points to hold any out)"
    if held_out_mape < TRUST_GOOD:
        return "good"
    return "fair" if held_out_mape < TRUST_FAIR else "poor"


def device_table(profile: CalibrationProfile) -> Table:
    """Best measured rates per dtype against the profile's peaks."""
    acc = profile.accelerator
    table = Table(title=f"{acc.name}: achieved against peak")
    for column in ("rate", "best measured", "peak", "share", "peak is"):
        table.add_column(column)
    measured = acc.sources and acc.sources[0].startswith("measured")
    basis = "best measured here" if measured else "datasheet"
    best: dict[str, float] = {}
    for p in profile.points:
        if p.op == "gemm":
            rate = 2.0 * p.shape["m"] * p.shape["k"] * p.shape["n"] / p.seconds / 1e12
            best[p.dtype] = max(best.get(p.dtype, 0.0), rate)
    for torch_dtype, rate in sorted(best.items()):
        dtype = TORCH_DTYPES.get(torch_dtype, "bf16")
        peak = acc.peak_flops_per_s(dtype) / 1e12
        table.add_row(f"GEMM {torch_dtype} TFLOP/s", f"{rate:.3g}", f"{peak:.3g}",
                      f"{rate / peak:.0%}", basis)
    copies = [2.0 * p.shape["bytes"] / p.seconds / 1e12 for p in profile.points if p.op == "copy"]
    if copies:
        table.add_row("memory TB/s (copy)", f"{max(copies):.3g}", f"{acc.hbm_tb_per_s:.3g}",
                      f"{max(copies) / acc.hbm_tb_per_s:.0%}", basis)
    return table


def fit_table(profile: CalibrationProfile) -> Table:
    """Per op class: fitted parameters and errors on fitted and held-out shapes."""
    table = Table(title="fit per op class (errors: mean absolute percentage)")
    for column in ("op", "dtype", "parameters", "points fit / held out", "fit error",
                   "held-out error (max)", "trust"):
        table.add_column(column)
    for q in profile.fit:
        params = ", ".join(f"{k} {_fmt(v)}" for k, v in q.parameters.items())
        held = ("-" if q.held_out_mape is None
                else f"{q.held_out_mape:.1%} ({q.held_out_max_ape or 0:.0%})")
        table.add_row(q.op, q.dtype, params, f"{q.num_fit} / {q.num_held_out}",
                      f"{q.fit_mape:.1%}", held, trust(q.held_out_mape))
    return table


def roofline_notes(profile: CalibrationProfile) -> list[str]:
    """Where the device departs from the roofline, in words."""
    eff = profile.efficiency
    notes = []
    for dtype, g in sorted(eff.gemm.items()):
        if any(q.op == "gemm" and TORCH_DTYPES.get(q.dtype) == dtype for q in profile.fit):
            notes.append(
                f"GEMM {dtype}: {g.compute_frac:.0%} of peak when compute-bound, "
                f"{g.memory_frac:.0%} of bandwidth when streaming weights, "
                f"{g.floor_s * 1e6:.1f} us per call")
    prefill_call_s = eff.prefill_attention.per_sequence_s + eff.prefill_attention.floor_s
    notes.append(
        f"attention: {prefill_call_s * 1e6:.1f} us per prefill call, "
        f"{eff.decode_attention.per_sequence_s * 1e6:.1f} us per decoding sequence, "
        f"decode reads at {eff.decode_attention.memory_frac:.0%} of bandwidth")
    notes.append(
        f"elementwise: {eff.elementwise.floor_s * 1e6:.1f} us per op, "
        f"{eff.elementwise.memory_frac:.0%} of bandwidth; "
        f"{eff.elementwise.kernels_per_layer} elementwise calls per layer in the reference "
        "engine")
    return notes


def _fmt(value: float) -> str:
    if value != 0 and abs(value) < 1e-2:
        return f"{value * 1e6:.3g}us"
    return f"{value:.3g}"
