"""Fitting recovers known efficiencies from synthetic points, and judges itself on
held-out shapes."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.fit import fit_profile, measured_peaks, split
from hardware.catalog import get_accelerator
from hardware.efficiency import (
    DEFAULT_EFFICIENCY,
    DecodeAttentionEfficiency,
    ElementwiseEfficiency,
    GemmEfficiency,
    PrefillAttentionEfficiency,
)
from hardware.profile import MeasuredPoint
from simulator.cost import CostModel
from simulator.model import ModelSpec

DEVICE = get_accelerator("h100-sxm")
TRUE = DEFAULT_EFFICIENCY.model_copy(update={
    "gemm": {"bf16": GemmEfficiency(compute_frac=0.62, memory_frac=0.71, floor_s=7e-6,
                                    half_m=12.0, gemv_memory_frac=0.9)},
    "prefill_attention": PrefillAttentionEfficiency(
        max_compute_frac=0.45, half_tokens=600.0, memory_frac=0.8, floor_s=0.0,
        per_sequence_s=20e-6),
    "decode_attention": DecodeAttentionEfficiency(
        memory_frac=0.55, compute_frac=0.5, floor_s=0.0, per_sequence_s=12e-6),
    "elementwise": ElementwiseEfficiency(memory_frac=0.66, floor_s=3e-6, kernels_per_layer=9),
})


def _point(op: str, shape: dict[str, int], seconds: float, noise: float) -> MeasuredPoint:
    s = seconds * (1.0 + noise)
    return MeasuredPoint(op=op, name="synthetic", dtype="bfloat16", shape=shape, seconds=s,
                         seconds_p10=s, seconds_p90=s, repeats=1)


def _synthetic_points(noise_sd: float) -> list[MeasuredPoint]:
    """Times the cost model gives with TRUE (independently written out for GEMMs and
    elementwise ops), times a log-normal noise."""
    rng = np.random.default_rng(0)
    peak, bw = DEVICE.peak_flops_per_s("bf16"), DEVICE.hbm_bytes_per_s
    g = TRUE.gemm["bf16"]
    points = []
    for m in (1, 2, 4, 8, 16, 64, 256, 1024, 4096):
        for k, n in ((1024, 1024), (4096, 4096), (4096, 14336)):
            memory_frac = g.gemv_memory_frac if m == 1 else g.memory_frac
            t = g.floor_s + max(2 * m * k * n * (m + g.half_m) / (peak * g.compute_frac * m),
                                2 * (k * n + m * k + m * n) / (bw * memory_frac))
            points.append(_point("gemm", {"m": m, "k": k, "n": n}, t, rng.normal(0, noise_sd)))
    e = TRUE.elementwise
    for elements in (256, 1024, 4096, 16384, 65536, 1 << 18, 1 << 20, 1 << 22, 1 << 24):
        t = e.floor_s + elements * 3 * 2 / (bw * e.memory_frac)
        points.append(_point("elementwise", {"elements": elements, "tensors_read": 2,
                                             "tensors_written": 1}, t, rng.normal(0, noise_sd)))
    spec = ModelSpec(name="p", num_layers=1, hidden_size=1024, num_heads=8, num_kv_heads=2,
                     head_dim=128, intermediate_size=4096, vocab_size=2, max_context_tokens=1 << 20)
    model = CostModel(spec, DEVICE, TRUE)
    attn = {"heads": 8, "kv_heads": 2, "head_dim": 128}
    for new in (16, 64, 256, 1024, 4096):
        for cached in (0, 512):
            t = float(model._prefill_attention([new], [cached]).seconds)
            points.append(_point("prefill_attention", {"seqs": 1, "new_tokens": new,
                                                       "cached_tokens": cached, **attn},
                                 t, rng.normal(0, noise_sd)))
    for seqs in (1, 4, 16, 64):
        for ctx in (1024, 8192, 65536):
            t = float(model._decode_attention(seqs, float(seqs * ctx)).seconds)
            points.append(_point("decode_attention", {"seqs": seqs, "context_tokens": ctx,
                                                      **attn}, t, rng.normal(0, noise_sd)))
    return points


def test_exact_points_give_back_the_parameters_they_came_from():
    result = fit_profile(_synthetic_points(0.0), DEVICE, name="synthetic",
                         elementwise_kernels_per_layer=9, per_sequence_attention=True)
    eff = result.efficiency
    g = eff.gemm["bf16"]
    assert (g.compute_frac, g.memory_frac, g.floor_s, g.half_m, g.gemv_memory_frac) == (
        pytest.approx((0.62, 0.71, 7e-6, 12.0, 0.9), rel=1e-3))
    e = eff.elementwise
    assert (e.memory_frac, e.floor_s) == pytest.approx((0.66, 3e-6), rel=1e-3)
    assert e.kernels_per_layer == 9
    d = eff.decode_attention
    assert (d.memory_frac, d.per_sequence_s, d.floor_s) == pytest.approx((0.55, 12e-6, 0.0),
                                                                         rel=1e-3, abs=1e-12)
    p = eff.prefill_attention
    assert (p.max_compute_frac, p.half_tokens, p.per_sequence_s) == pytest.approx(
        (0.45, 600.0, 20e-6), rel=1e-2)
    for q in result.quality:
        assert q.fit_mape < 1e-6 and q.held_out_mape is not None and q.held_out_mape < 1e-6


def test_noisy_points_are_recovered_within_the_noise_and_judged_on_held_out_shapes():
    # 5% log-normal noise: parameters come back within ~10%, and the held-out error is of
    # the order of the noise (it would be far larger if the fit memorised its points).
    result = fit_profile(_synthetic_points(0.05), DEVICE, name="noisy",
                         elementwise_kernels_per_layer=9, per_sequence_attention=True)
    g = result.efficiency.gemm["bf16"]
    assert (g.compute_frac, g.memory_frac) == pytest.approx((0.62, 0.71), rel=0.1)
    assert result.efficiency.decode_attention.memory_frac == pytest.approx(0.55, rel=0.1)
    for q in result.quality:
        assert q.num_held_out > 0
        assert q.held_out_mape is not None and q.held_out_mape < 0.12


def test_held_out_shapes_interleave_the_fitted_ones():
    points = _synthetic_points(0.0)
    gemm = [p for p in points if p.op == "gemm"]
    fitted, held = split(gemm, lambda p: p.shape["m"] * p.shape["k"] * p.shape["n"])
    assert len(held) == len(gemm) // 4 + (1 if len(gemm) % 4 > 1 else 0)
    size = [p.shape["m"] * p.shape["k"] * p.shape["n"] for p in held]
    everything = sorted(p.shape["m"] * p.shape["k"] * p.shape["n"] for p in gemm)
    assert min(size) > everything[0] and max(size) < everything[-1]  # inside the range
    assert not set(map(id, fitted)) & set(map(id, held))


def test_peaks_are_the_best_rates_measured():
    points = [
        MeasuredPoint(op="gemm", name="matmul", dtype="float32",
                      shape={"m": 1024, "k": 1024, "n": 1024}, seconds=0.01,
                      seconds_p10=0.01, seconds_p90=0.01, repeats=3),
        MeasuredPoint(op="copy", name="copy", dtype="float32", shape={"bytes": 10**9},
                      seconds=0.1, seconds_p10=0.1, seconds_p90=0.1, repeats=3),
    ]
    tflops, tb_per_s = measured_peaks(points)
    assert tflops["fp32"] == pytest.approx(2 * 1024**3 / 0.01 / 1e12)
    assert tb_per_s == pytest.approx(2e9 / 0.1 / 1e12)  # a copy reads and writes
