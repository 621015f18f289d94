"""Fitting: microbenchmark points in, the cost model's efficiency parameters out.

Each op class is fitted with the cost model's own formula (``simulator.cost.CostModel``
prices every candidate), so what is fitted is exactly what the simulator will use. The
loss is the squared log ratio of predicted to measured time: relative errors, so a 5 us
call and a 50 ms one weigh alike. One point in four (every fourth by size) is held out
and the parameters are fitted to the rest; the held-out error is what the report
states, and those are the parameters shipped, so the stated error describes them.

No torch here: fitting runs anywhere scipy does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from hardware.efficiency import (
    DEFAULT_EFFICIENCY,
    DecodeAttentionEfficiency,
    EfficiencyProfile,
    ElementwiseEfficiency,
    GemmEfficiency,
    PrefillAttentionEfficiency,
)
from hardware.profile import FitQuality, MeasuredPoint, OpClass
from hardware.spec import AcceleratorSpec
from simulator.cost import CostModel
from simulator.dtypes import BYTES_PER_ELEMENT, ComputeDType
from simulator.model import ModelSpec

TORCH_DTYPES: dict[str, ComputeDType] = {
    "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "tf32": "tf32",
}
"""torch dtype names (MeasuredPoint.dtype) to the cost model's compute dtypes."""

SMALL_M_MAX = 16
"""GEMMs with at most this many rows get measured per-M correction factors."""

HOLD_OUT_EVERY = 4
"""One point in this many (by size) is held out of the fit to judge it."""


@dataclass(frozen=True)
class FitResult:
    efficiency: EfficiencyProfile
    quality: list[FitQuality]


def split(points: Sequence[MeasuredPoint], key: Callable[[MeasuredPoint], float]
          ) -> tuple[list[MeasuredPoint], list[MeasuredPoint]]:
    """(fit, held out): sorted by ``key``, every ``HOLD_OUT_EVERY``-th from the second is
    held out, so held-out shapes interleave the fitted ones across the whole range. With
    fewer than 2 x HOLD_OUT_EVERY points nothing is held out."""
    ordered = sorted(points, key=key)
    if len(ordered) < 2 * HOLD_OUT_EVERY:
        return ordered, []
    held = [p for i, p in enumerate(ordered) if i % HOLD_OUT_EVERY == 1]
    return [p for i, p in enumerate(ordered) if i % HOLD_OUT_EVERY != 1], held


def _ape(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(predicted / measured - 1.0)


def _fit(predict: Callable[[np.ndarray, list[MeasuredPoint]], np.ndarray],
         x0: Sequence[float], lower: Sequence[float], upper: Sequence[float],
         points: list[MeasuredPoint]) -> np.ndarray:
    """Least squares on log(predicted / measured), parameters as given (bounded)."""
    measured = np.array([p.seconds for p in points])

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predict(x, points) / measured)

    start = np.clip(np.asarray(x0, dtype=float), lower, upper)
    return least_squares(residuals, start, bounds=(lower, upper), x_scale="jac").x


def _quality(op: OpClass, dtype: str, names: Sequence[str], x: np.ndarray,
             predict: Callable[[np.ndarray, list[MeasuredPoint]], np.ndarray],
             fitted: list[MeasuredPoint], held: list[MeasuredPoint]) -> FitQuality:
    fit_ape = _ape(predict(x, fitted), np.array([p.seconds for p in fitted]))
    held_ape = (_ape(predict(x, held), np.array([p.seconds for p in held]))
                if held else None)
    return FitQuality(
        op=op,
        dtype=dtype,
        parameters={n: float(v) for n, v in zip(names, x, strict=True)},
        num_fit=len(fitted), num_held_out=len(held),
        fit_mape=float(fit_ape.mean()),
        held_out_mape=None if held_ape is None else float(held_ape.mean()),
        held_out_max_ape=None if held_ape is None else float(held_ape.max()),
    )


# ---------------------------------------------------------------- op classes


def _probe(accelerator: AcceleratorSpec, efficiency: EfficiencyProfile, *, heads: int = 1,
           kv_heads: int = 1, head_dim: int = 64, dtype: ComputeDType = "bf16") -> CostModel:
    """A one-layer cost model: the cost model's formulas for one op at a time."""
    spec = ModelSpec(name="probe", num_layers=1, hidden_size=heads * head_dim,
                     num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                     intermediate_size=4 * heads * head_dim, vocab_size=2,
                     max_context_tokens=1 << 20)
    return CostModel(spec, accelerator, efficiency, weight_dtype=dtype,
                     activation_dtype=dtype, kv_cache_dtype=dtype)


def gemm_seconds(accelerator: AcceleratorSpec, efficiency: EfficiencyProfile,
                 dtype: ComputeDType, m: int, k: int, n: int) -> float:
    """The cost model's time for one ``[m, k] x [k, n]`` GEMM in ``dtype`` on a device
    with ``efficiency``: what a profile predicts for a measured shape."""
    probe = _probe(accelerator, efficiency, dtype=dtype)
    return float(probe._gemm(m, k, n, dtype).seconds)


def fit_gemm(points: list[MeasuredPoint], accelerator: AcceleratorSpec, dtype: ComputeDType
             ) -> tuple[GemmEfficiency, FitQuality]:
    """compute_frac, memory_frac, floor_s and half_m of
    ``floor + max(flops (m + half_m) / (peak cf m), bytes / (bw mf))`` (CostModel._gemm)."""
    peak = accelerator.peak_flops_per_s(dtype)
    bw = accelerator.hbm_bytes_per_s
    eb = BYTES_PER_ELEMENT[dtype]

    def predict(x: np.ndarray, pts: list[MeasuredPoint]) -> np.ndarray:
        cf, mf, floor, half_m, gemv_mf = x
        out = []
        for p in pts:
            m, k, n = p.shape["m"], p.shape["k"], p.shape["n"]
            flops = 2.0 * m * k * n
            hbm = (k * n + m * k + m * n) * eb  # as CostModel._gemm
            memory_frac = gemv_mf if m == 1 else mf
            out.append(floor + max(flops * (m + half_m) / (peak * cf * m),
                                   hbm / (bw * memory_frac)))
        return np.array(out)

    fitted, held = split(points, lambda p: p.shape["m"] * p.shape["k"] * p.shape["n"])
    floor0 = min(p.seconds for p in points) / 2
    x = _fit(predict, [0.5, 0.5, floor0, 1.0, 0.5], [1e-3, 1e-3, 0.0, 0.0, 1e-3],
             [1.0, 1.0, 1e-2, 1e4, 1.0], fitted)
    # What the curve cannot follow at small M (kernel choice by M): the geometric mean
    # of measured over predicted at each small M, from the fitted points only.
    ratios: dict[int, list[float]] = {}
    for p, t in zip(fitted, predict(x, fitted), strict=True):
        if p.shape["m"] <= SMALL_M_MAX:
            ratios.setdefault(p.shape["m"], []).append(math.log(p.seconds / t))
    factors = {m: math.exp(sum(r) / len(r)) for m, r in sorted(ratios.items())}
    eff = GemmEfficiency(compute_frac=x[0], memory_frac=x[1], floor_s=x[2], half_m=x[3],
                         gemv_memory_frac=x[4], small_m_factors=factors)

    def corrected(xx: np.ndarray, pts: list[MeasuredPoint]) -> np.ndarray:
        return predict(xx, pts) * np.array([eff.small_m_factor(p.shape["m"]) for p in pts])

    names = ("compute_frac", "memory_frac", "floor_s", "half_m", "gemv_memory_frac")
    quality = _quality("gemm", dtype, names, x, corrected, fitted, held)
    params = dict(quality.parameters, **{f"factor_m{m}": f for m, f in factors.items()})
    return eff, quality.model_copy(update={"parameters": params})


def fit_prefill_attention(points: list[MeasuredPoint], accelerator: AcceleratorSpec,
                          dtype: ComputeDType, *, per_sequence_calls: bool
                          ) -> tuple[PrefillAttentionEfficiency, FitQuality]:
    """max_compute_frac, half_tokens, memory_frac and the call floor. Each point is one
    sequence; with ``per_sequence_calls`` (an engine calling attention once per
    sequence) the floor is ``per_sequence_s``, else the per-layer ``floor_s``."""

    floor_field = "per_sequence_s" if per_sequence_calls else "floor_s"

    def efficiency(x: np.ndarray) -> PrefillAttentionEfficiency:
        cf, half, mf, floor = x
        return PrefillAttentionEfficiency(max_compute_frac=cf, half_tokens=half,
                                          memory_frac=mf, **{"floor_s": 0.0, floor_field: floor})

    def predict(x: np.ndarray, pts: list[MeasuredPoint]) -> np.ndarray:
        eff = DEFAULT_EFFICIENCY.model_copy(update={"prefill_attention": efficiency(x)})
        out = []
        for p in pts:
            s = p.shape
            probe = _probe(accelerator, eff, heads=s["heads"], kv_heads=s["kv_heads"],
                           head_dim=s["head_dim"], dtype=dtype)
            cost = probe._prefill_attention([s["new_tokens"]] * s["seqs"],
                                            [s["cached_tokens"]] * s["seqs"])
            out.append(float(cost.seconds))
        return np.array(out)

    fitted, held = split(points, lambda p: p.shape["new_tokens"] * (
        p.shape["new_tokens"] + p.shape["cached_tokens"]) * p.shape["heads"])
    floor0 = min(p.seconds for p in points) / 2
    x = _fit(predict, [0.5, 256.0, 0.5, floor0], [1e-3, 0.0, 1e-3, 0.0],
             [1.0, 1e5, 1.0, 1e-2], fitted)
    names = ("max_compute_frac", "half_tokens", "memory_frac", floor_field)
    quality = _quality("prefill_attention", dtype, names, x, predict, fitted, held)
    return efficiency(x), quality


def fit_decode_attention(points: list[MeasuredPoint], accelerator: AcceleratorSpec,
                         dtype: ComputeDType, *, per_sequence_calls: bool
                         ) -> tuple[DecodeAttentionEfficiency, FitQuality]:
    """memory_frac, compute_frac and the floor (per sequence, or per call)."""

    floor_field = "per_sequence_s" if per_sequence_calls else "floor_s"

    def efficiency(x: np.ndarray) -> DecodeAttentionEfficiency:
        mf, cf, floor = x
        return DecodeAttentionEfficiency(memory_frac=mf, compute_frac=cf,
                                         **{"floor_s": 0.0, floor_field: floor})

    def predict(x: np.ndarray, pts: list[MeasuredPoint]) -> np.ndarray:
        eff = DEFAULT_EFFICIENCY.model_copy(update={"decode_attention": efficiency(x)})
        out = []
        for p in pts:
            s = p.shape
            probe = _probe(accelerator, eff, heads=s["heads"], kv_heads=s["kv_heads"],
                           head_dim=s["head_dim"], dtype=dtype)
            cost = probe._decode_attention(s["seqs"], float(s["seqs"] * s["context_tokens"]))
            out.append(float(cost.seconds))
        return np.array(out)

    fitted, held = split(points, lambda p: p.shape["seqs"] * p.shape["context_tokens"]
                         * p.shape["kv_heads"])
    floor0 = min(p.seconds / p.shape["seqs"] for p in points) / 2
    x = _fit(predict, [0.5, 0.5, floor0], [1e-3, 1e-3, 0.0], [1.0, 1.0, 1e-2], fitted)
    names = ("memory_frac", "compute_frac", floor_field)
    quality = _quality("decode_attention", dtype, names, x, predict, fitted, held)
    return efficiency(x), quality


def _elementwise_bytes(p: MeasuredPoint) -> float:
    s = p.shape
    eb = BYTES_PER_ELEMENT.get(TORCH_DTYPES.get(p.dtype, "fp32"), 4.0)
    return s["elements"] * (s["tensors_read"] + s["tensors_written"]) * eb


def fit_elementwise(points: list[MeasuredPoint], accelerator: AcceleratorSpec,
                    kernels_per_layer: int) -> tuple[ElementwiseEfficiency, FitQuality]:
    """floor_s and memory_frac of ``floor + bytes / (bw mf)`` over ``points``."""
    bw = accelerator.hbm_bytes_per_s

    def predict(x: np.ndarray, pts: list[MeasuredPoint]) -> np.ndarray:
        mf, floor = x
        return np.array([floor + _elementwise_bytes(p) / (bw * mf) for p in pts])

    fitted, held = split(points, _elementwise_bytes)
    floor0 = min(p.seconds for p in points) / 2
    x = _fit(predict, [0.5, floor0], [1e-3, 0.0], [1.0, 1e-2], fitted)
    quality = _quality("elementwise", points[0].dtype, ("memory_frac", "floor_s"), x, predict,
                       fitted, held)
    return ElementwiseEfficiency(memory_frac=x[0], floor_s=x[1],
                                 kernels_per_layer=kernels_per_layer), quality


ELEMENTWISE_MAX_BYTES = 32 * 2**20
"""Elementwise points moving more are left out of the fit: their outputs get fresh
pages from the OS on every call on glibc CPUs (a 10-20x cliff), far above what an
engine's per-layer tensors need."""


def fit_elementwise_mix(points: list[MeasuredPoint], accelerator: AcceleratorSpec,
                        mix: dict[str, int]) -> tuple[ElementwiseEfficiency, list[FitQuality]]:
    """An engine's elementwise work per layer: ``mix`` says how many calls of each
    measured op (by ``MeasuredPoint.name``) a layer makes. Each op is fitted on its own;
    the profile's per-kernel floor is the layer's summed floors over its kernel count,
    and its bandwidth share the calls' mean weighted by the bytes they move."""
    per_op: dict[str, tuple[ElementwiseEfficiency, FitQuality]] = {}
    for name in mix:
        mine = [p for p in points
                if p.name == name and _elementwise_bytes(p) < ELEMENTWISE_MAX_BYTES]
        if mine:
            per_op[name] = fit_elementwise(mine, accelerator, 1)
    if not per_op:
        raise ValueError(f"no elementwise points named {sorted(mix)}")
    calls = sum(mix[n] for n in per_op)
    floor_s = sum(mix[n] * e.floor_s for n, (e, _) in per_op.items()) / calls
    tensors = {n: next(p.shape for p in points if p.name == n) for n in per_op}
    weight = {n: mix[n] * (tensors[n]["tensors_read"] + tensors[n]["tensors_written"])
              for n in per_op}
    memory_frac = sum(weight[n] * e.memory_frac for n, (e, _) in per_op.items()) / sum(
        weight.values())
    quality = [q.model_copy(update={"dtype": f"{q.dtype} {n}"}) for n, (_, q) in per_op.items()]
    return ElementwiseEfficiency(memory_frac=memory_frac, floor_s=floor_s,
                                 kernels_per_layer=calls), quality


# ---------------------------------------------------------------- the device and the whole fit


def measured_peaks(points: Sequence[MeasuredPoint]) -> tuple[dict[ComputeDType, float], float]:
    """Best measured rates: (TFLOP/s per compute dtype from GEMMs, TB/s from copies and
    weight-streaming GEMMs). For a device without a catalog entry (a CPU) these are its
    peaks, so fitted efficiencies are fractions of what the device showed it can do."""
    tflops: dict[ComputeDType, float] = {}
    tb_per_s = 0.0
    for p in points:
        if p.op == "gemm":
            dtype = TORCH_DTYPES.get(p.dtype)
            if dtype is None:
                continue
            m, k, n = p.shape["m"], p.shape["k"], p.shape["n"]
            tflops[dtype] = max(tflops.get(dtype, 0.0), 2.0 * m * k * n / p.seconds / 1e12)
            if m <= 4:
                eb = BYTES_PER_ELEMENT[dtype]
                tb_per_s = max(tb_per_s, (k * n + m * k + m * n) * eb / p.seconds / 1e12)
        elif p.op == "copy":
            tb_per_s = max(tb_per_s, 2.0 * p.shape["bytes"] / p.seconds / 1e12)  # read + write
    if "bf16" not in tflops and "fp16" not in tflops:
        if "fp32" not in tflops:
            raise ValueError("no GEMM points: cannot tell the device's compute rate")
        tflops["bf16"] = tflops["fp32"]  # never used for a CPU's fp32 runs; the spec wants one
    if tb_per_s <= 0:
        raise ValueError("no copy or small-m GEMM points: cannot tell the memory bandwidth")
    return tflops, tb_per_s


def fit_profile(points: Sequence[MeasuredPoint], accelerator: AcceleratorSpec, *,
                name: str, elementwise_kernels_per_layer: int,
                per_sequence_attention: bool,
                attention_dtype: ComputeDType | None = None,
                elementwise_mix: dict[str, int] | None = None) -> FitResult:
    """Every op class's efficiencies from ``points`` on ``accelerator`` (whose peaks the
    fractions refer to). Attention is fitted for ``attention_dtype`` (the profile holds
    one attention entry; None: the dtype with most points), GEMMs per dtype. Op classes
    without points keep the catalog defaults, and the quality list says which were
    fitted."""
    quality: list[FitQuality] = []
    by_op: dict[str, list[MeasuredPoint]] = {}
    for p in points:
        by_op.setdefault(p.op, []).append(p)
    gemm: dict[ComputeDType, GemmEfficiency] = {}
    for torch_dtype in sorted({p.dtype for p in by_op.get("gemm", [])}):
        dtype = TORCH_DTYPES.get(torch_dtype)
        if dtype is None:
            continue
        eff, q = fit_gemm([p for p in by_op["gemm"] if p.dtype == torch_dtype],
                          accelerator, dtype)
        gemm[dtype] = eff
        quality.append(q)
    if "bf16" not in gemm:
        gemm["bf16"] = gemm.get("fp16") or gemm.get("fp32") or DEFAULT_EFFICIENCY.gemm["bf16"]
    update: dict[str, object] = {"name": name, "gemm": gemm}
    if attention_dtype is None:
        attention_dtype = _main_dtype(by_op.get("prefill_attention", []) +
                                      by_op.get("decode_attention", []))
    if by_op.get("prefill_attention"):
        eff_p, q = fit_prefill_attention(
            [p for p in by_op["prefill_attention"] if TORCH_DTYPES.get(p.dtype) == attention_dtype],
            accelerator, attention_dtype, per_sequence_calls=per_sequence_attention)
        update["prefill_attention"] = eff_p
        quality.append(q)
    if by_op.get("decode_attention"):
        eff_d, q = fit_decode_attention(
            [p for p in by_op["decode_attention"] if TORCH_DTYPES.get(p.dtype) == attention_dtype],
            accelerator, attention_dtype, per_sequence_calls=per_sequence_attention)
        update["decode_attention"] = eff_d
        quality.append(q)
    if by_op.get("elementwise") and elementwise_mix:
        # The engine's activations are in the attention dtype: fit those points.
        mine = [p for p in by_op["elementwise"] if TORCH_DTYPES.get(p.dtype) == attention_dtype]
        eff_e, qs = fit_elementwise_mix(mine or by_op["elementwise"], accelerator,
                                        elementwise_mix)
        update["elementwise"] = eff_e
        quality.extend(qs)
    elif by_op.get("elementwise"):
        eff_e, q = fit_elementwise(by_op["elementwise"], accelerator,
                                   elementwise_kernels_per_layer)
        update["elementwise"] = eff_e
        quality.append(q)
    return FitResult(DEFAULT_EFFICIENCY.model_copy(update=update), quality)


def _main_dtype(points: Sequence[MeasuredPoint]) -> ComputeDType:
    """The dtype with the most points (attention is fitted for one dtype)."""
    counts: dict[ComputeDType, int] = {}
    for p in points:
        dtype = TORCH_DTYPES.get(p.dtype)
        if dtype is not None:
            counts[dtype] = counts.get(dtype, 0) + 1
    return max(counts, key=lambda d: counts[d]) if counts else "bf16"


def mape(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray
         ) -> float:
    """Mean absolute percentage error, as a fraction."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p / m - 1.0))) if len(m) else math.nan
