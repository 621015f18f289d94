"""Builders for tiny scenarios: a small model on a small inline device, so engine tests
run in milliseconds and do not depend on catalog figures (shared with check_policy).

Under CI (``CI`` set), hypothesis draws the same examples every run, so a landing is
never decided by a lucky draw; locally it keeps exploring new ones.
"""

from __future__ import annotations

import os

from hypothesis import settings

from simulator import Scenario
from simulator.conformance import TINY_DEVICE, TINY_MODEL, tiny_scenario

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["TINY_DEVICE", "TINY_MODEL", "scenario_with", "tiny_scenario"]


def scenario_with(*, model: str = "llama-3.1-8b", deployment: dict | None = None,
                  engine: dict | None = None, workload: dict | None = None,
                  num_requests: int = 100, rate_per_s: float | None = None,
                  overrides: tuple[str, ...] = ()) -> Scenario:
    """The default scenario (catalog model and device) with these sections replaced: for
    tests whose numbers come from the catalog's parts, as layouts' do."""
    data = Scenario().model_dump(mode="json")
    data["model"] = model
    data["deployment"] = deployment or {}
    data["engine"] = engine or {}
    if workload is not None:
        data["workload"] = workload
    data["stop"] = {"num_requests": num_requests}
    extra = [f"workload.arrival.rate_per_s={rate_per_s}"] if rate_per_s is not None else []
    return Scenario.from_dict(data, [*extra, *overrides])
