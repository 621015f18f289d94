"""Sweeps: grid × replications into one table, on every executor, with a cache."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

import simulator
from simulator.cli import main
from simulator.conformance import tiny_scenario
from simulator.sweeps import summarize, sweep

# The module by import path: the package attribute ``simulator.sweeps`` is the function
# once looked up through the package's lazy exports, and the module right after a first
# ``import simulator.sweeps``.
sweep_module = importlib.import_module("simulator.sweeps")

GRID = {"deployment.replicas": [1, 2], "workload.arrival.rate_per_s": [20.0, 80.0]}


def _base():
    return tiny_scenario(stop={"num_requests": 100}, seed=3)


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["wall_s", "cached"])


def test_one_row_per_point_and_replication():
    table = sweep(_base(), GRID, replications=3, executor="inprocess")
    assert len(table) == 2 * 2 * 3
    assert list(table.columns[:4]) == [*GRID, "replication", "seed"]
    assert {"ttft_p99_s", "output_tokens_per_s", "wall_s", "cached", "error"} <= set(table)
    assert table["error"].isna().all() and not table["cached"].any()
    points = table.groupby(list(GRID)).size()
    assert len(points) == 4 and (points == 3).all()
    assert (table["num_finished"] == 100).all()


def test_seeds_differ_by_replication_and_repeat_across_points():
    table = sweep(_base(), GRID, replications=3, executor="inprocess")
    for _, group in table.groupby(list(GRID)):
        assert group["seed"].tolist() == [3, 4, 5]
        assert group["replication"].tolist() == [0, 1, 2]
    # Common random numbers: the same replication has the same arrivals everywhere it can.
    ones = table[table["deployment.replicas"] == 1]
    assert ones.groupby("replication")["num_requests"].nunique().eq(1).all()
    assert table["ttft_p99_s"].nunique() > 1
    reseeded = sweep(_base(), GRID, replications=1, executor="inprocess", seed=10)
    assert (reseeded["seed"] == 10).all()


def test_executors_give_identical_tables():
    import ray

    inprocess = sweep(_base(), GRID, replications=2, executor="inprocess")
    process = sweep(_base(), GRID, replications=2, executor="process", workers=2)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        on_ray = sweep(_base(), GRID, replications=2, executor="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(_comparable(process), _comparable(inprocess))
    pd.testing.assert_frame_equal(_comparable(on_ray), _comparable(inprocess))


def test_summarize_interval_matches_student_t_and_shrinks():
    grid = {"deployment.replicas": [1, 2]}
    few = sweep(_base(), grid, replications=2, executor="inprocess")
    many = sweep(_base(), grid, replications=8, executor="inprocess")
    metric = "ttft_p99_s"
    small, large = (summarize(t, by=["deployment.replicas"], metrics=[metric]) for t in
                    (few, many))
    for s in (small, large):
        assert (s[f"{metric}_ci_low"] <= s[f"{metric}_mean"]).all()
        assert (s[f"{metric}_mean"] <= s[f"{metric}_ci_high"]).all()
    width = {n: (s[f"{metric}_ci_high"] - s[f"{metric}_ci_low"]).to_numpy()
             for n, s in ((2, small), (8, large))}
    assert (width[8] < width[2]).all()
    assert large["n"].tolist() == [8, 8]

    values = many.loc[many["deployment.replicas"] == 1, metric].to_numpy()
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    row = large[large["deployment.replicas"] == 1].iloc[0]
    assert row[f"{metric}_mean"] == pytest.approx(values.mean())
    assert row[f"{metric}_ci_low"] == pytest.approx(values.mean() - half)
    assert row[f"{metric}_ci_high"] == pytest.approx(values.mean() + half)

    one = summarize(sweep(_base(), grid, executor="inprocess"), by=["deployment.replicas"],
                    metrics=[metric])
    assert one[f"{metric}_ci_low"].isna().all() and one[f"{metric}_mean"].notna().all()


def test_invalid_points_give_error_rows():
    grid = {"engine.max_num_seqs": [16, 0], "hardware.accelerator.memory_gib": [64, 0.001]}
    for executor in ("inprocess", "process"):
        table = sweep(_base(), grid, executor=executor, workers=2)
        good = table["error"].isna()
        assert good.sum() == 1 and len(table) == 4
        assert "max_num_seqs" in table.loc[table["engine.max_num_seqs"] == 0, "error"].iloc[0]
        unfit = table[(table["engine.max_num_seqs"] == 16)
                      & (table["hardware.accelerator.memory_gib"] == 0.001)]
        assert unfit["error"].iloc[0]  # the ScenarioError from simulate, with its numbers
        assert table.loc[~good, "ttft_p99_s"].isna().all()
        assert table.loc[good, "ttft_p99_s"].notna().all()


def test_dict_values_and_presets_apply_and_serialize(tmp_path):
    grid = {"workload.output_tokens": [{"kind": "fixed", "tokens": 5},
                                       {"kind": "fixed", "tokens": 9}]}
    table = sweep(_base(), grid, executor="inprocess")
    assert table["workload.output_tokens"].tolist() == [
        '{"kind": "fixed", "tokens": 5}', '{"kind": "fixed", "tokens": 9}']
    finished = table["num_finished"].to_numpy()
    assert np.allclose(table["output_tokens_per_s"] * table["duration_s"],
                       finished * np.array([5, 9]))
    for preset in ("vllm", "sglang"):  # a preset as with_overrides applies it
        assert sweep_module._point_scenario(_base(), {"engine.preset": preset}, 3) == \
            _base().with_overrides([f"engine.preset={preset}"])
    sweep_module.to_parquet(table, tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, table)


def test_cache_returns_identical_rows_without_simulating(tmp_path, monkeypatch):
    first = sweep(_base(), GRID, replications=2, executor="inprocess", cache_dir=tmp_path)
    assert not first["cached"].any() and len(list(tmp_path.glob("*.json"))) == 8

    def refuse(*args, **kwargs):
        raise AssertionError("simulated a cached run")

    monkeypatch.setattr(sweep_module, "simulate", refuse)
    again = sweep(_base(), GRID, replications=2, executor="inprocess", cache_dir=tmp_path)
    assert again["cached"].all()
    pd.testing.assert_frame_equal(again.drop(columns="cached"), first.drop(columns="cached"))
    # A new point is simulated (and is not in the cache).
    monkeypatch.undo()
    more = sweep(_base(), {"deployment.replicas": [3]}, executor="inprocess",
                 cache_dir=tmp_path)
    assert not more["cached"].any() and more["error"].isna().all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="executor"):
        sweep(_base(), GRID, executor="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replications"):
        sweep(_base(), GRID, replications=0)
    with pytest.raises(ValueError, match="seed"):
        sweep(_base(), {"seed": [1, 2]})


def test_public_api_exports():
    # The module is simulator.sweeps, so simulator.sweep is always the function.
    from simulator import summarize as exported_summarize
    from simulator import sweep as exported_sweep

    assert exported_sweep is sweep and exported_summarize is summarize
    assert simulator.max_sustainable_rate.__module__ == "simulator.planner"
    assert {"sweep", "summarize"} <= set(simulator.__all__)


def test_cli_sweep_writes_a_parquet(tmp_path, capsys):
    base_path = tmp_path / "base.yaml"
    base_path.write_text(_base().to_yaml())
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump({"base": "base.yaml",
                                         "grid": {"deployment.replicas": [1, 2]},
                                         "replications": 2}))
    out = tmp_path / "table.parquet"
    code = main(["sweep", str(grid_path), "--executor", "inprocess", "--out", str(out),
                 "--cache", str(tmp_path / "cache")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sweep: 4 runs" in printed and "wrote" in printed
    table = pd.read_parquet(out)
    assert len(table) == 4 and table["error"].isna().all()
    assert table["deployment.replicas"].tolist() == [1, 1, 2, 2]
    inline = tmp_path / "inline.yaml"
    inline.write_text(yaml.safe_dump({"base": yaml.safe_load(_base().to_yaml()),
                                      "grid": {"engine.max_num_seqs": [8]}}))
    assert main(["sweep", str(inline), "--executor", "inprocess", "--replications", "3",
                 "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: 3\n")
    assert main(["sweep", str(bad)]) == 2
