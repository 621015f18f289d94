"""Builders for tiny scenarios: a small model on a small inline device, so engine tests
run in milliseconds and do not depend on catalog figures (shared with check_policy)."""

from __future__ import annotations

from simulator.conformance import TINY_DEVICE, TINY_MODEL, tiny_scenario

__all__ = ["TINY_DEVICE", "TINY_MODEL", "tiny_scenario"]
