"""price_iteration: the cost model as a public function."""

from __future__ import annotations

from simulator.cost import BatchShape, IterationCost
from simulator.deployment import resolve
from simulator.scenario import Scenario


def price_iteration(scenario: Scenario, shape: BatchShape) -> IterationCost:
    """Seconds, FLOPs and bytes of one iteration of ``shape`` on one device of the
    scenario's deployment, with the per-op breakdown. It is what the engine charges for
    the same shape; capacity planners and validation call it directly."""
    return resolve(scenario).cost.price(shape)
