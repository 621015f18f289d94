"""The servesim command, end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.cli import main
from simulator.scenario import Scenario, load_mapping


def test_run_default_prints_a_summary(capsys):
    assert main(["run", "--set", "stop.num_requests=40"]) == 0
    out = capsys.readouterr().out
    assert "TTFT" in out and "TPOT" in out and "Throughput" in out


def test_run_writes_every_output(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["run", "examples/llama3-8b-h100.yaml", "--set", "stop.num_requests=30",
                 "--out", str(out_dir)])
    assert code == 0
    names = {p.name for p in out_dir.iterdir()}
    assert {"requests.parquet", "iterations.parquet", "requests.csv", "iterations.csv",
            "summary.json", "trace.json", "scenario.yaml"} <= names
    assert len(pd.read_parquet(out_dir / "requests.parquet")) == 30
    trace = json.loads((out_dir / "trace.json").read_text())
    assert any(e.get("ph") == "X" for e in trace["traceEvents"])
    assert yaml.safe_load((out_dir / "scenario.yaml").read_text())["stop"]["num_requests"] == 30


def test_bad_field_is_reported_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("engine:\n  max_num_seqs: -1\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "engine.max_num_seqs" in err and "-1" in err and "Traceback" not in err


def test_unfit_deployment_is_reported_with_numbers(capsys):
    assert main(["run", "--set", "model=llama-3.1-70b"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "GiB" in err


def test_missing_file_and_bad_override(capsys):
    assert main(["run", "no/such/file.yaml"]) == 2
    assert "cannot read scenario file" in capsys.readouterr().err
    assert main(["run", "--set", "engine.max_num_seqs"]) == 2
    assert "dotted.key=value" in capsys.readouterr().err


def test_scenario_prints_a_loadable_yaml(capsys):
    assert main(["scenario", "--set", "engine.max_num_seqs=12"]) == 0
    out = capsys.readouterr().out
    yaml_part = out.split("# memory")[0]
    assert yaml.safe_load(yaml_part)["engine"]["max_num_seqs"] == 12


def test_catalog_listings(capsys):
    assert main(["models"]) == 0
    assert "llama-3.1-70b" in capsys.readouterr().out
    assert main(["hardware"]) == 0
    assert "h100-sxm" in capsys.readouterr().out


def test_schema_describes_every_engine_field(capsys):
    assert main(["scenario", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    engine = schema["$defs"]["EngineConfig"]["properties"]
    assert engine["max_num_seqs"]["description"]
    assert all(field.get("description") for field in engine.values())


def test_fit_writes_a_look_alike_that_runs(tmp_path, capsys):
    # A Poisson trace at 5 req/s with fixed lengths: the fit must find that rate and
    # those lengths, and the YAML it writes must run as a scenario.
    g = np.random.default_rng(3)
    arrival = np.cumsum(g.exponential(0.2, 3000))
    pd.DataFrame({"arrival_s": arrival, "prompt_tokens": 300, "output_tokens": 40}).to_csv(
        tmp_path / "t.csv", index=False)
    out = tmp_path / "w.yaml"
    assert main(["fit", str(tmp_path / "t.csv"), "--out", str(out)]) == 0
    s = Scenario.from_dict(load_mapping(out))
    assert s.workload.arrival.rate_per_s == pytest.approx(5.0, rel=0.05)
    assert s.workload.prompt_tokens.kind == "fixed" and s.workload.prompt_tokens.tokens == 300
    assert main(["run", str(out), "--set", "stop.num_requests=50"]) == 0
