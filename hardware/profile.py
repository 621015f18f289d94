"""Calibration profiles: a device measured with ``servesim calibrate``, as a portable file.

A profile holds the device's description (an ``AcceleratorSpec``), where and when it
was measured, every raw microbenchmark point, and the fitted ``EfficiencyProfile`` with
its goodness of fit. It is plain JSON validated here, without torch: anyone can
simulate with a profile someone else measured (``hardware: {profile: path}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hardware.efficiency import EfficiencyProfile
from hardware.spec import AcceleratorSpec

PROFILE_SCHEMA_VERSION: Literal[1] = 1

OpClass = Literal["gemm", "prefill_attention", "decode_attention", "elementwise", "copy"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MeasuredPoint(_Frozen):
    """One microbenchmark: an op at one shape, timed on the device.

    ``shape`` keys by op class (all integers):

    - gemm: ``m``, ``k``, ``n`` (``[m, k] x [k, n]``);
    - prefill_attention: ``seqs``, ``new_tokens`` and ``cached_tokens`` (each sequence),
      ``heads``, ``kv_heads``, ``head_dim``;
    - decode_attention: ``seqs``, ``context_tokens`` (each sequence, the new token
      included), ``heads``, ``kv_heads``, ``head_dim``;
    - elementwise: ``elements`` (per tensor), ``tensors_read``, ``tensors_written``;
    - copy: ``bytes``.
    """

    op: OpClass
    name: str = Field(description="What was run, e.g. 'matmul', 'sdpa_causal', 'rms_norm'.")
    dtype: str = Field(description="torch dtype name without the prefix, e.g. 'bfloat16'.")
    shape: dict[str, int]
    seconds: float = Field(gt=0, description="Median time of one call, seconds.")
    seconds_p10: float = Field(gt=0, description="10th percentile of the repeats, seconds.")
    seconds_p90: float = Field(gt=0, description="90th percentile of the repeats, seconds.")
    repeats: int = Field(gt=0, description="Timed calls (after warm-up).")


class FitQuality(_Frozen):
    """How well one op class's fitted curve predicts its points."""

    op: OpClass
    dtype: str
    parameters: dict[str, float] = Field(description="The fitted parameters, by name.")
    num_fit: int = Field(ge=0, description="Points the parameters were fitted to.")
    num_held_out: int = Field(ge=0, description="Points kept out of the fit, to judge it.")
    fit_mape: float = Field(ge=0, description="Mean absolute percentage error on fitted points.")
    held_out_mape: float | None = Field(
        default=None, ge=0, description="Mean absolute percentage error on held-out points."
    )
    held_out_max_ape: float | None = Field(
        default=None, ge=0, description="Worst absolute percentage error on held-out points."
    )


class HostInfo(_Frozen):
    """Where the profile was measured."""

    torch_version: str
    device_type: Literal["cpu", "cuda", "mps"]
    device_name: str = Field(description="torch's name for the device, or the CPU model.")
    num_threads: int = Field(ge=1, description="torch intra-op threads used.")
    platform: str = Field(description="OS and machine, e.g. 'Linux-6.1-x86_64'.")
    created: str = Field(description="ISO 8601 date and time of the measurement (UTC).")
    quick: bool = Field(default=False, description="Measured with --quick (fewer shapes).")


class CalibrationProfile(_Frozen):
    """A measured device: what ``servesim calibrate`` writes and a scenario can name."""

    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    accelerator: AcceleratorSpec = Field(
        description="The device. Peaks are the catalog's for a known part; for an unknown "
        "one (a CPU), the best rates measured here, so efficiencies are fractions of them."
    )
    host: HostInfo
    efficiency: EfficiencyProfile = Field(description="The fitted efficiencies.")
    fit: list[FitQuality] = Field(default_factory=list, description="Per op class and dtype.")
    points: list[MeasuredPoint] = Field(default_factory=list, description="Every raw point.")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")


def load_profile(path: str | Path) -> CalibrationProfile:
    """Read and validate a profile; ValueError names the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read calibration profile {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    try:
        return CalibrationProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise ValueError(f"{path} is not a valid calibration profile: {problems}") from None
