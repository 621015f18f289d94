"""Numeric formats: the closed set of dtypes servesim prices, and their sizes."""

from __future__ import annotations

from typing import Literal

DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"]
"""A numeric format. ``tf32`` exists only as a tensor-core compute rate."""

ComputeDType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8"]
"""Formats an accelerator has a peak rate for (int4 weights compute in the activation dtype)."""

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
