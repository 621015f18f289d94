"""Efficiency profiles: how far real kernels sit from the roofline, per op class.

Every op's time is ``floor_s + max(flops / (peak * compute_frac), bytes / (bw * memory_frac))``
(see ``hardware.roofline``). The defaults below are fitted by hand to measured
TensorRT-LLM 1.3 kernels on an H100 SXM, as published in the kernel tables of NVIDIA's
aiconfigurator-core 0.12 (Apache-2.0), summarised in ``shared/FACTS.md``. They are one
GPU and one engine; ``servesim calibrate`` replaces them with curves measured on the
user's own device.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simulator.dtypes import ComputeDType


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GemmEfficiency(_Frozen):
    """A dense matrix multiply ``[M, K] x [K, N]``."""

    compute_frac: float = Field(gt=0, le=1, description="Fraction of peak FLOP/s at large M.")
    memory_frac: float = Field(
        gt=0, le=1, description="Fraction of HBM bandwidth when streaming weights (small M)."
    )
    floor_s: float = Field(ge=0, description="Fixed cost per GEMM call, seconds.")
    half_m: float = Field(
        default=0.0, ge=0,
        description="Rows (tokens) at which compute efficiency is half of compute_frac: "
        "compute_frac x M / (M + half_m). 0: flat, as on GPUs, where small M is "
        "weight-streaming bound anyway; CPU GEMMs ramp up with M (calibration fits it).",
    )
    gemv_memory_frac: float | None = Field(
        default=None, gt=0, le=1,
        description="Fraction of bandwidth for single-row products (M = 1), which BLAS "
        "libraries and engines run as matrix-vector kernels; None: memory_frac.",
    )
    small_m_factors: dict[int, float] = Field(
        default_factory=dict,
        description="Measured time multipliers for small row counts, by M: BLAS libraries "
        "pick kernels by M, so e.g. M = 3 can be slower than M = 4. Applied to the roofline "
        "time of GEMMs with M up to the largest key (interpolated between keys); empty: none.",
    )

    def small_m_factor(self, m: float) -> float:
        """The multiplier for ``m`` rows (1.0 beyond the table)."""
        table = self.small_m_factors
        if not table or m > max(table):
            return 1.0
        keys = sorted(table)
        return float(np.interp(m, keys, [table[k] for k in keys]))


class PrefillAttentionEfficiency(_Frozen):
    """Causal flash attention over new query tokens (and any cached prefix)."""

    max_compute_frac: float = Field(gt=0, le=1, description="Fraction of peak for long prompts.")
    half_tokens: float = Field(
        gt=0, description="Sequence length at which half of max_compute_frac is reached, tokens."
    )
    memory_frac: float = Field(gt=0, le=1, description="Fraction of HBM bandwidth for KV reads.")
    floor_s: float = Field(ge=0, description="Fixed cost per attention call, seconds.")
    per_sequence_s: float = Field(
        default=0.0, ge=0,
        description="Extra fixed cost per prefilling sequence, seconds (0 for varlen kernels "
        "that take the whole batch in one call; an engine looping over sequences pays it).",
    )


class DecodeAttentionEfficiency(_Frozen):
    """Paged attention of one new token per sequence over its KV cache."""

    memory_frac: float = Field(gt=0, le=1, description="Fraction of HBM bandwidth for KV reads.")
    compute_frac: float = Field(gt=0, le=1, description="Fraction of peak FLOP/s.")
    floor_s: float = Field(ge=0, description="Fixed cost per attention call, seconds.")
    per_sequence_s: float = Field(
        default=0.0, ge=0,
        description="Extra fixed cost per decoding sequence, seconds (0 for paged kernels over "
        "the whole batch; an engine looping over sequences pays it).",
    )


class ElementwiseEfficiency(_Frozen):
    """Norms, rotary embedding, activation, residual adds, sampling: bandwidth-bound."""

    memory_frac: float = Field(gt=0, le=1, description="Fraction of HBM bandwidth.")
    floor_s: float = Field(ge=0, description="Fixed cost per kernel, seconds.")
    kernels_per_layer: int = Field(
        default=4, ge=1,
        description="Elementwise kernels per layer in the engine measured: 4 where norms "
        "and adds are fused, residual-add+RMSNorm twice, rotary, activation (vLLM, "
        "TensorRT-LLM); more in eager PyTorch.",
    )


class CollectiveEfficiency(_Frozen):
    """Collectives and point-to-point copies between devices (``hardware.topology``): the
    intra-node link's share, and the network's for steps that leave a node."""

    latency_s: float = Field(ge=0, description="Fixed cost of a small collective, seconds.")
    per_device_latency_s: float = Field(
        ge=0, description="Extra fixed cost per participating device, seconds."
    )
    bus_frac: float = Field(
        gt=0, le=1, description="Fraction of the intra-node link bandwidth achieved."
    )
    network_bus_frac: float = Field(
        # NCCL's maintainers expect 46-48 GB/s per 400 Gb/s NDR NIC (50 GB/s) in nccl-tests
        # across nodes (https://github.com/NVIDIA/nccl-tests/issues/290): 46 / 50.
        default=0.92, gt=0, le=1,
        description="Fraction of the inter-node network bandwidth per device (NIC) achieved "
        "by the inter-node steps of collectives and point-to-point sends.",
    )


class HostLinkEfficiency(_Frozen):
    """Copies between device and host memory (KV swapping) over PCIe."""

    bandwidth_frac: float = Field(gt=0, le=1, description="Fraction of the PCIe rate achieved.")
    latency_s: float = Field(ge=0, description="Fixed cost per copy, seconds.")


class WeightOnlyGemmEfficiency(_Frozen):
    """Weight-only quantised GEMMs (int4/int8 weights with 16-bit activations: Marlin,
    AWQ, Machete; fp8 weights on a part without an fp8 rate): weights are widened to 16
    bits in registers and multiplied on the 16-bit tensor cores, so these GEMMs use the
    16-bit efficiencies plus the dequantisation work priced here."""

    tile_rows: int = Field(
        # Marlin runs thread blocks of at most 4 x 16 = 64 activation rows; a larger batch
        # is processed as repeated 64-row slices, each dequantising the weights again
        # (IST-DASLab/marlin marlin_cuda_kernel.cu, thread_m_blocks <= 4, 'par').
        default=64, gt=0,
        description="Activation rows per thread-block tile; each weight is dequantised once "
        "per tile, so ceil(M / tile_rows) times per GEMM.",
    )
    dequant_flops_per_weight: float = Field(
        # Estimate. Marlin widens four int4 weights with 2 LOP3 + HSUB2 + HFMA2 and scales
        # them with 2 HMUL2: ~1.5 CUDA-core instructions per weight. An H100 SM issues 128
        # thread-instructions per clock against 4096 dense bf16 tensor FLOPs, so unhidden
        # that is 1.5 x 4096 / 128 = 48 FLOP-equivalents per weight per tile (37.5% on top
        # of a full 64-row tile's 128). Kernels overlap it with the MMAs (Marlin's README;
        # Machete "matches compute-bound" FP16 on Hopper, Neural Magic 2024), so a third
        # of it is kept: 16, i.e. 12.5% over bf16 at large M.
        default=16.0, ge=0,
        description="Dequantisation work per weight element per tile, in tensor-core FLOP "
        "equivalents (charged at the GEMM's compute efficiency; not counted as FLOPs). At "
        "large M a weight-only GEMM takes 1 + this / (2 tile_rows) times the 16-bit one.",
    )


class EfficiencyProfile(_Frozen):
    """All op classes' efficiencies for one device (catalog default or calibrated)."""

    name: str = Field(default="default-h100-trtllm", description="Where these numbers come from.")
    gemm: dict[ComputeDType, GemmEfficiency] = Field(
        description="Per compute dtype; a dtype without an entry uses the 'bf16' one."
    )
    prefill_attention: PrefillAttentionEfficiency
    decode_attention: DecodeAttentionEfficiency
    elementwise: ElementwiseEfficiency
    collective: CollectiveEfficiency
    host_link: HostLinkEfficiency = Field(
        # Pinned-memory copies reach ~80% of a PCIe link's nominal rate (e.g. ~25 GB/s of
        # Gen4 x16's 32 GB/s in CUDA's bandwidthTest); ~10 us to launch a copy.
        default_factory=lambda: HostLinkEfficiency(bandwidth_frac=0.8, latency_s=10e-6),
        description="Device-host copies (KV swap).",
    )
    weight_only: WeightOnlyGemmEfficiency = Field(
        default_factory=WeightOnlyGemmEfficiency,
        description="Dequantisation cost of weight-only quantised GEMMs (int4/int8 weights, "
        "16-bit compute).",
    )

    def gemm_for(self, dtype: ComputeDType) -> GemmEfficiency:
        return self.gemm.get(dtype) or self.gemm["bf16"]


# Fits to shared/FACTS.md (H100 SXM, TensorRT-LLM 1.3 kernels, aiconfigurator-core 0.12 tables):
# - bf16 GEMM: a 4096x4096 weight at M=1 takes 16 us and a 65536x8192 one 0.38 ms; both fit
#   4.4 us + bytes / (0.86 x 3.35 TB/s). Large-M medians are 0.72-0.79 of peak -> 0.77.
# - fp8 GEMM: small-M efficiency 0.25 (4096^2) to 0.79 (largest) fits a 14 us floor (activation
#   quantisation) + bytes / (0.86 x bw); large-M medians 0.55-0.61 -> 0.60.
# - prefill attention: 26 us @512, 125 us @2048, 1.08 ms @8192, 4.34 ms @16384 tokens fit
#   15 us + flops / (peak x 0.55 x L / (L + 1200)) within about 10%.
# - decode attention: a 14-16 us floor, then bandwidth efficiency ~0.90 of HBM
#   (1x8192: 24 us, 64x8192: 715 us, 256x512: 191 us).
# - all-reduce: 2.8-3.5 us for 8 KiB on 2-8 GPUs; 512 MiB on 2 GPUs in 1.68 ms -> ~0.71 of
#   450 GB/s NVLink per direction with a ring's 2(n-1)/n factor.
DEFAULT_EFFICIENCY = EfficiencyProfile(
    gemm={
        "bf16": GemmEfficiency(compute_frac=0.77, memory_frac=0.86, floor_s=4.4e-6),
        "fp16": GemmEfficiency(compute_frac=0.77, memory_frac=0.86, floor_s=4.4e-6),
        "fp8": GemmEfficiency(compute_frac=0.60, memory_frac=0.86, floor_s=14e-6),
        "int8": GemmEfficiency(compute_frac=0.60, memory_frac=0.86, floor_s=14e-6),
        "fp32": GemmEfficiency(compute_frac=0.80, memory_frac=0.86, floor_s=4.4e-6),
        "tf32": GemmEfficiency(compute_frac=0.77, memory_frac=0.86, floor_s=4.4e-6),
    },
    prefill_attention=PrefillAttentionEfficiency(
        max_compute_frac=0.55, half_tokens=1200.0, memory_frac=0.85, floor_s=15e-6
    ),
    decode_attention=DecodeAttentionEfficiency(memory_frac=0.90, compute_frac=0.5, floor_s=15e-6),
    elementwise=ElementwiseEfficiency(memory_frac=0.80, floor_s=2e-6),
    collective=CollectiveEfficiency(latency_s=2.5e-6, per_device_latency_s=0.125e-6, bus_frac=0.71),
)
