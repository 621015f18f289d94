"""Every YAML and Python snippet in docs/workloads.md is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from workloads.config import ArrivalProcess, LengthDist, WorkloadConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "workloads.md"
ADAPTERS: dict[str, TypeAdapter[object]] = {
    "workload": TypeAdapter(WorkloadConfig),
    "arrival": TypeAdapter(ArrivalProcess),
    "prompt_tokens": TypeAdapter(LengthDist),
    "output_tokens": TypeAdapter(LengthDist),
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("snippet", blocks("yaml"))
def test_yaml_snippet_validates(snippet: str) -> None:
    data = yaml.safe_load(snippet)
    assert len(data) == 1
    ((key, value),) = data.items()
    ADAPTERS[key].validate_python(value)


def test_every_kind_has_a_snippet() -> None:
    kinds = {yaml.safe_load(s).popitem()[1]["kind"] for s in blocks("yaml")}
    assert kinds >= {
        "synthetic",
        "trace",
        "poisson",
        "gamma",
        "constant",
        "offline",
        "closed_loop",
        "fixed",
        "uniform",
        "normal",
        "lognormal",
        "zipf",
    }


def test_every_input_transform_has_a_snippet() -> None:
    snippets = [yaml.safe_load(s) for s in blocks("yaml")]
    kinds = {t["kind"] for d in snippets if "workload" in d
             for t in d["workload"].get("transforms", [])}
    assert kinds == {"prompt_compression", "retrieval", "skeleton_of_thought"}


def test_python_snippet_runs() -> None:
    for snippet in blocks("python"):
        namespace: dict[str, object] = {}
        exec(compile(snippet, str(DOC), "exec"), namespace)
        assert len(namespace["requests"].arrival_s) > 0  # type: ignore[attr-defined]
