"""The README's Python example runs as written (STYLE §8: docs are tested)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(capsys, monkeypatch):
    monkeypatch.chdir(README.parent)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "ttft_p99_s" in out and "e2e_s" in out and "num_decode_seqs" in out


def test_readme_python_api_example_runs(capsys, monkeypatch):
    monkeypatch.chdir(README.parent)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    exec(compile(blocks[1], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "goodput_requests_per_s" in out and "attention_prefill" in out


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install torch==2.13.0 -e ".[dev]" && python -m pytest'
    assert test_command in README.read_text()
    assert test_command in ci
    assert "pip install -e . && servesim run" in README.read_text()
