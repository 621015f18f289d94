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

__all__ = ["TINY_DEVICE", "TINY_MODEL", "assert_fast_paths_equal_price", "scenario_with",
           "tiny_scenario"]


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


def assert_fast_paths_equal_price(cost) -> None:
    """The engine's fast paths (``iteration``, ``decode_run``) give ``price``'s numbers
    for a mixed iteration and a decode run of two context lengths."""
    import numpy as np
    import pytest

    from simulator import BatchShape

    q, ctx = [900, 33], [0, 4000]
    fast = cost.iteration(q, ctx, 40, 40 * 2500.0)
    full = cost.price(BatchShape(q, ctx, 40, 40 * 2500.0))
    assert fast == pytest.approx(
        (float(full.seconds), float(full.flops), float(full.hbm_bytes)), rel=1e-12)
    seconds, flops, hbm = cost.decode_run(40, np.array([40 * 2500.0, 40 * 9000.0]))
    for i, total in enumerate((40 * 2500.0, 40 * 9000.0)):
        single = cost.price(BatchShape(num_decode_seqs=40, decode_context_tokens=total))
        assert seconds[i] == pytest.approx(float(single.seconds), rel=1e-12)
        assert flops[i] == pytest.approx(float(single.flops), rel=1e-12)
        assert hbm[i] == pytest.approx(float(single.hbm_bytes), rel=1e-12)
