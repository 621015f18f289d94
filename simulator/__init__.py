"""servesim: a discrete-event simulator of LLM serving systems.

    >>> from simulator import Scenario, simulate
    >>> results = simulate(Scenario())          # the built-in default scenario
    >>> results.summary()["ttft_p99_s"]         # doctest: +SKIP

The public API is ``__all__``; everything else may change.

Names load lazily (PEP 562): ``hardware``, ``workloads`` and ``policies`` import core
types from ``simulator``'s submodules, and the engine imports them back, so this
package must not import the engine merely because a submodule was imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BatchShape": "simulator.cost",
    "CostModel": "simulator.cost",
    "IterationCost": "simulator.cost",
    "Deployment": "simulator.deployment",
    "MemoryPlan": "simulator.memory",
    "ScenarioError": "simulator.deployment",
    "resolve": "simulator.deployment",
    "simulate": "simulator.engine",
    "ModelSpec": "simulator.model",
    "check_policy": "simulator.conformance",
    "get_model": "simulator.model_catalog",
    "list_models": "simulator.model_catalog",
    "model_from_hf_config": "simulator.model_catalog",
    "price_iteration": "simulator.pricing",
    "Results": "simulator.results",
    "RunInfo": "simulator.results",
    "Scenario": "simulator.scenario",
    "summarize": "simulator.sweeps",
    "sweep": "simulator.sweeps",
    "SearchSpace": "simulator.planner",
    "Target": "simulator.planner",
    "cheapest_deployment": "simulator.planner",
    "max_sustainable_rate": "simulator.planner",
}

__all__ = [
    "BatchShape",
    "CostModel",
    "Deployment",
    "IterationCost",
    "MemoryPlan",
    "ModelSpec",
    "Results",
    "RunInfo",
    "Scenario",
    "ScenarioError",
    "SearchSpace",
    "Target",
    "cheapest_deployment",
    "check_policy",
    "get_model",
    "list_models",
    "max_sustainable_rate",
    "model_from_hf_config",
    "price_iteration",
    "resolve",
    "simulate",
    "summarize",
    "sweep",
]

if TYPE_CHECKING:
    from simulator.conformance import check_policy
    from simulator.cost import BatchShape, CostModel, IterationCost
    from simulator.deployment import Deployment, ScenarioError, resolve
    from simulator.engine import simulate
    from simulator.memory import MemoryPlan
    from simulator.model import ModelSpec
    from simulator.model_catalog import get_model, list_models, model_from_hf_config
    from simulator.planner import SearchSpace, Target, cheapest_deployment, max_sustainable_rate
    from simulator.pricing import price_iteration
    from simulator.results import Results, RunInfo
    from simulator.scenario import Scenario
    from simulator.sweeps import summarize, sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
