"""Builders for tiny scenarios: a small model on a small inline device, so engine tests
run in milliseconds and do not depend on catalog figures (shared with check_policy).

Under CI (``CI`` set), hypothesis draws the same examples every run, so a landing is
never decided by a lucky draw; locally it keeps exploring new ones.
"""

from __future__ import annotations

import os

from hypothesis import settings

from simulator.conformance import TINY_DEVICE, TINY_MODEL, tiny_scenario

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["TINY_DEVICE", "TINY_MODEL", "tiny_scenario"]
