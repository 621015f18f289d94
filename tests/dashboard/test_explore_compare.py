"""Explore and Compare: the chart functions on a tiny run, and the pages driven by AppTest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")
pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest

from dashboard import charts
from simulator import simulate
from simulator.conformance import tiny_scenario

LAST_KEY = "servesim.last_run"
SAVED_KEY = "servesim.saved_runs"
PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "views"
EXPLORE = str(PAGES / "explore.py")
COMPARE = str(PAGES / "compare.py")


@pytest.fixture(scope="module")
def run():
    return simulate(tiny_scenario())


@pytest.fixture(scope="module")
def run_fast():
    return simulate(tiny_scenario(workload={"arrival": {"kind": "poisson",
                                                        "rate_per_s": 200.0}}))


def _trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


# ---- timelines ----

def test_timeline_has_every_series_and_the_window_filters(run):
    end = run.info.end_s
    full = charts.timeline_figure(run, 0.0, end, max_points=10_000)
    names = {t.name for t in full.data}
    assert names == {"prefill tokens", "decode tokens", "iteration duration", "KV occupancy",
                     "KV fragmentation", "queue depth", "preemptions", "arrivals"}
    assert len(_trace(full, "prefill tokens").x) == len(run.iterations)

    t0, t1 = 0.25 * end, 0.5 * end
    part = charts.timeline_figure(run, t0, t1)
    for name in ("prefill tokens", "decode tokens", "iteration duration", "KV occupancy",
                 "queue depth", "arrivals"):
        x = np.asarray(_trace(part, name).x, dtype=float)
        assert x.size and x.min() >= t0 and x.max() <= t1, name
    start = run.iterations["start_s"]
    assert len(_trace(part, "decode tokens").x) == int(start.between(t0, t1).sum())
    # Values are the frame's: decode tokens = decode seqs of the same iterations.
    expected = charts.window_iterations(run, t0, t1)["num_decode_seqs"].to_numpy()
    np.testing.assert_array_equal(_trace(part, "decode tokens").y, expected)
    occupancy = np.asarray(_trace(part, "KV occupancy").y, dtype=float)
    assert ((occupancy >= 0) & (occupancy <= 1)).all()
    frag = np.asarray(_trace(part, "KV fragmentation").y, dtype=float)
    frag = frag[~np.isnan(frag)]
    assert ((frag >= 0) & (frag < 1)).all()
    assert sum(_trace(part, "arrivals").y) == int(run.requests.arrival_s.between(t0, t1).sum())


def test_timeline_bins_big_windows(run):
    fig = charts.timeline_figure(run, 0.0, run.info.end_s, max_points=100)
    assert len(_trace(fig, "prefill tokens").x) == 100
    # Bin sums keep the count of preemptions.
    assert sum(_trace(fig, "preemptions").y) == run.iterations["num_preempted"].sum()


def test_timeline_highlight_shades_every_row(run):
    fig = charts.timeline_figure(run, 0.0, run.info.end_s, highlight=(1.0, 1.5))
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == len(charts.TIMELINE_ROWS)
    assert {(s.x0, s.x1) for s in rects} == {(1.0, 1.5)}


def test_queue_depth_counts_arrived_not_yet_scheduled(run):
    req = run.requests
    t = float(req["arrival_s"].iloc[50])
    expected = int(((req.arrival_s <= t) & ~(req.first_scheduled_s <= t)).sum())
    assert charts.queue_depth(run, np.array([t]))[0] == expected
    assert charts.queue_depth(run, np.array([-1.0]))[0] == 0


# ---- latency ----

@pytest.mark.parametrize("metric,slo", [("ttft", "slo_ttft_s"), ("tpot", "slo_tpot_s")])
def test_cdf_ends_at_one_with_the_slo_line(run, metric, slo):
    fig = charts.latency_cdf(run, metric)
    y = np.asarray(fig.data[0].y)
    assert y[-1] == 1.0 and (np.diff(y) >= 0).all()
    assert np.asarray(fig.data[0].x).max() == pytest.approx(run.requests[f"{metric}_s"].max())
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [s.x0 for s in lines] == [getattr(run.info, slo)]


def test_cdf_thinned_still_ends_at_one(run):
    fig = charts.latency_cdf(run, "ttft", max_points=10)
    assert len(fig.data[0].x) == 10 and fig.data[0].y[-1] == 1.0


def test_histogram_counts_every_request_and_e2e_has_no_slo(run):
    fig = charts.latency_histogram(run, "e2e")
    assert sum(fig.data[0].y) == int((run.requests.status == "finished").sum())
    assert not fig.layout.shapes


# ---- requests ----

def test_slowest_is_sorted_descending(run):
    for by in ("ttft", "e2e"):
        table = charts.slowest_requests(run, by=by, n=15)
        assert len(table) == 15
        assert table[f"{by}_s"].is_monotonic_decreasing
        assert table[f"{by}_s"].iloc[0] == run.requests[f"{by}_s"].max()


def test_gantt_segments_follow_the_request(run):
    rid = int(charts.slowest_requests(run, n=1)["request_id"].iloc[0])
    row = run.requests.set_index("request_id").loc[rid]
    fig = charts.request_gantt(run, [rid])
    queued, prefill, decode = (_trace(fig, n) for n in ("queued", "prefill", "decode"))
    assert queued.base[0] == row.arrival_s
    assert queued.base[0] + queued.x[0] == pytest.approx(row.first_scheduled_s)
    assert prefill.base[0] + prefill.x[0] == pytest.approx(row.first_token_s)
    assert decode.base[0] + decode.x[0] == pytest.approx(row.finish_s)
    assert charts.request_span(run, rid) == (row.arrival_s, row.finish_s)


def test_requests_in_window_are_alive_in_it(run):
    t0, t1 = 1.0, 1.2
    ids = charts.requests_in_window(run, t0, t1, limit=1000)
    req = run.requests.set_index("request_id").loc[ids]
    assert ids and (req.arrival_s <= t1).all() and (req.finish_s >= t0).all()
    fig = charts.request_gantt(run, ids[:5])
    assert list(_trace(fig, "queued").y) == [f"req {i}" for i in ids[:5]]


# ---- compare ----

def test_compare_table_differences_by_hand(run, run_fast):
    table = charts.compare_table({"base": run, "fast": run_fast},
                                 ["ttft_p99_s", "output_tokens_per_s"])
    assert list(table.columns) == ["base", "fast", "Δ fast", "Δ% fast"]
    a = run.summary()["ttft_p99_s"]
    b = run_fast.summary()["ttft_p99_s"]
    assert table.loc["ttft_p99_s", "Δ fast"] == pytest.approx(b - a)
    assert table.loc["ttft_p99_s", "Δ% fast"] == pytest.approx(100 * (b - a) / a)


def test_compare_table_zero_baseline_gives_nan_percent(run):
    table = charts.compare_table({"a": run, "b": run}, ["num_rejected"])
    assert table.loc["num_rejected", "Δ b"] == 0
    assert math.isnan(table.loc["num_rejected", "Δ% b"])


def test_delta_colour_knows_which_way_is_better():
    assert "0, 160, 0" in charts.delta_colour("ttft_p99_s", -0.1)
    assert "220, 0, 0" in charts.delta_colour("ttft_p99_s", 0.1)
    assert "0, 160, 0" in charts.delta_colour("output_tokens_per_s", 5.0)
    assert charts.delta_colour("mfu_frac", float("nan")) == ""


def test_compare_cdfs_one_trace_per_run(run, run_fast):
    fig = charts.compare_cdfs({"base": run, "fast": run_fast}, "ttft")
    assert [t.name for t in fig.data] == ["base", "fast"]
    assert all(t.y[-1] == 1.0 for t in fig.data)


# ---- pages ----

def _caption_values(at):
    return [c.value for c in at.caption]


def test_explore_without_a_run_points_to_the_run_page():
    at = AppTest.from_file(EXPLORE).run()
    assert not at.exception
    assert "Run" in at.info[0].value


def test_explore_slider_and_slow_request_change_the_page(run):
    at = AppTest.from_file(EXPLORE, default_timeout=30)
    at.session_state[LAST_KEY] = run
    at.run()
    assert not at.exception
    before = _caption_values(at)[0]
    assert f"{len(run.iterations)} iterations" in before

    at.slider[0].set_value((0.0, run.info.end_s / 2)).run()
    after = _caption_values(at)[0]
    half = int(run.iterations.start_s.between(0.0, run.info.end_s / 2).sum())
    assert f"{half} iterations" in after and after != before

    slowest = at.dataframe[0].value
    assert isinstance(slowest, pd.DataFrame) and slowest["ttft_s"].is_monotonic_decreasing
    rid = int(slowest["request_id"].iloc[0])
    at.selectbox(key="explore_request").set_value(rid).run()
    assert not at.exception
    assert any(c.startswith(f"Request {rid}:") for c in _caption_values(at))


def test_compare_needs_two_runs(run):
    at = AppTest.from_file(COMPARE)
    at.session_state[SAVED_KEY] = {"only": run}
    at.run()
    assert "at least two" in at.info[0].value


def test_compare_shows_both_names(run, run_fast):
    at = AppTest.from_file(COMPARE, default_timeout=30)
    at.session_state[SAVED_KEY] = {"base": run, "fast": run_fast}
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert {"base", "fast", "Δ fast", "Δ% fast"} <= set(table.columns)
    assert "ttft_p99_s" in table.index
