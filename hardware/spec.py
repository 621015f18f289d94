"""Accelerator and link specs: datasheet numbers, in datasheet units at the edge.

Fields are in the units datasheets print (GiB, TB/s, TFLOP/s, GB/s, W); the
``*_bytes``/``*_per_s`` properties convert once for the engine, which works in
bytes, FLOP and seconds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.dtypes import ComputeDType

GIB = 1024**3


class AcceleratorSpec(BaseModel):
    """One accelerator (GPU, or a CPU socket) and the node it sits in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Catalog name, e.g. 'h100-sxm'.")
    memory_gib: float = Field(gt=0, description="Device memory usable by the engine, GiB.")
    hbm_tb_per_s: float = Field(gt=0, description="Peak device-memory bandwidth, TB/s (10^12 B/s).")
    peak_tflops: dict[ComputeDType, float] = Field(
        description="Dense (no sparsity) peak rate per compute dtype, TFLOP/s (or TOP/s for int8)."
    )
    structured_sparsity: bool = Field(
        default=False,
        description="Tensor cores run 2:4 structured-sparse GEMMs at twice the dense rate "
        "(NVIDIA Ampere and later, AMD CDNA 3); false: a 2:4 model computes at the dense rate.",
    )
    intra_node_gb_per_s: float = Field(
        gt=0,
        description="Device-to-device bandwidth inside a node (NVLink/xGMI, or PCIe), "
        "GB/s per direction per device.",
    )
    intra_node_link: str = Field(default="pcie", description="Name of the intra-node link.")
    pcie_gb_per_s: float = Field(gt=0, description="Host link bandwidth, GB/s per direction.")
    network_gb_per_s: float = Field(
        gt=0, description="Inter-node network bandwidth per device, GB/s per direction."
    )
    network_latency_us: float = Field(
        default=5.0, ge=0, description="One-way inter-node message latency, microseconds."
    )
    devices_per_node: int = Field(default=8, gt=0, description="Devices in one node.")
    tdp_w: float = Field(gt=0, description="Board power at full load, watts.")
    idle_w: float = Field(ge=0, description="Board power when idle, watts.")
    price_per_hour_usd: float = Field(
        ge=0, description="Cost of one device for one hour, USD (cloud on-demand unless noted)."
    )
    sources: list[str] = Field(
        default_factory=list, description="Where each figure comes from (datasheet URLs, notes)."
    )

    @model_validator(mode="after")
    def _check_power(self) -> AcceleratorSpec:
        if self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w={self.idle_w} exceeds tdp_w={self.tdp_w}")
        if "bf16" not in self.peak_tflops and "fp16" not in self.peak_tflops:
            raise ValueError("peak_tflops needs at least a 'bf16' or 'fp16' entry")
        return self

    # ---- engine units ----

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tb_per_s * 1e12

    def peak_flops_per_s(self, dtype: ComputeDType) -> float:
        """Peak rate for ``dtype``; a dtype the part lacks falls back to the 16-bit rate
        (e.g. fp8 weights on an A100 are up-cast and computed in bf16, as vLLM's Marlin
        kernels do)."""
        tflops = self.peak_tflops.get(dtype)
        if tflops is None:
            tflops = self.peak_tflops.get("bf16", self.peak_tflops.get("fp16"))
        assert tflops is not None  # guaranteed by _check_power
        return tflops * 1e12

    @property
    def intra_node_bytes_per_s(self) -> float:
        return self.intra_node_gb_per_s * 1e9

    @property
    def network_bytes_per_s(self) -> float:
        return self.network_gb_per_s * 1e9
