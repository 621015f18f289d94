"""Dashboard state: the scenario being edited, and runs, kept in ``st.session_state``.

Every page reads and writes through these functions; none keeps state of its own.
Simulation goes through the public API only (``simulator.simulate``).
"""

from __future__ import annotations

import hashlib

import streamlit as st

from simulator import Results, Scenario, simulate

_SCENARIO = "servesim.scenario"
_SAVED = "servesim.saved_runs"
_LAST = "servesim.last_run"


def default_scenario() -> Scenario:
    """A small, quick scenario: Llama-3.1-8B on one H100, 500 Poisson requests."""
    return Scenario.from_dict({
        "name": "quick",
        "model": "llama-3.1-8b",
        "hardware": {"accelerator": "h100-sxm"},
        "workload": {
            "kind": "synthetic",
            "arrival": {"kind": "poisson", "rate_per_s": 10.0},
            "prompt_tokens": {"kind": "lognormal", "median_tokens": 130, "sigma": 1.0,
                              "min_tokens": 4, "max_tokens": 4096},
            "output_tokens": {"kind": "lognormal", "median_tokens": 120, "sigma": 1.0,
                              "min_tokens": 1, "max_tokens": 2048},
        },
        "stop": {"num_requests": 500},
    })


def get_scenario() -> Scenario:
    """The scenario being edited (a small default until one is set)."""
    if _SCENARIO not in st.session_state:
        st.session_state[_SCENARIO] = default_scenario()
    scenario: Scenario = st.session_state[_SCENARIO]
    return scenario


def set_scenario(s: Scenario) -> None:
    st.session_state[_SCENARIO] = s


def scenario_key(scenario: Scenario) -> str:
    """sha256 of the scenario's JSON: equal scenarios share one cached run."""
    return hashlib.sha256(scenario.model_dump_json().encode()).hexdigest()


@st.cache_resource(max_entries=32, show_spinner=False)
def _simulate_cached(key: str, _scenario: Scenario) -> Results:
    # Keyed by the hash alone (the leading underscore keeps streamlit from hashing the
    # scenario object itself).
    return simulate(_scenario)


def run(scenario: Scenario) -> Results:
    """Simulate ``scenario`` (cached by its content: a rerun is instant); it becomes the
    last run."""
    results = _simulate_cached(scenario_key(scenario), scenario)
    st.session_state[_LAST] = results
    return results


def save_run(name: str, results: Results) -> None:
    """Keep ``results`` under ``name`` for the Compare page (a name given again replaces
    the run, keeping its place)."""
    saved: dict[str, Results] = st.session_state.setdefault(_SAVED, {})
    saved[name] = results


def saved_runs() -> dict[str, Results]:
    """Named runs, in the order they were first saved."""
    saved: dict[str, Results] = st.session_state.setdefault(_SAVED, {})
    return dict(saved)


def last_run() -> Results | None:
    """The results of the latest ``run`` in this session, or None."""
    results: Results | None = st.session_state.get(_LAST)
    return results
