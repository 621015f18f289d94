"""Plotly figures and tables from one or several ``Results``: no streamlit, no simulation.

Every function reads the frames and returns a new figure or DataFrame; none mutates its
input. Times are simulated seconds. Big runs are binned with numpy before plotting (at
most ``MAX_POINTS`` points per trace), so a million-iteration run stays responsive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator import Results

MAX_POINTS = 2000
"""The most points (time bins, CDF samples) one trace carries."""

LatencyMetric = Literal["ttft", "tpot", "e2e"]
LATENCY_LABELS: dict[str, str] = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E"}

TIMELINE_ROWS = ("Batch (tokens / iteration)", "Iteration duration (s)", "KV cache (frac)",
                 "Queue depth (requests)", "Preemptions", "Arrivals")

COMPARE_METRICS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s",
                   "output_tokens_per_s", "goodput_requests_per_s", "slo_attainment_frac",
                   "mfu_frac", "cost_per_million_output_tokens_usd")
"""Summary metrics the Compare page shows by default."""

_HIGHLIGHT = "rgba(255, 165, 0, 0.25)"


# ---- binning ----

def _bin_edges(t0: float, t1: float, num_bins: int) -> np.ndarray:
    return np.linspace(t0, t1 if t1 > t0 else t0 + 1e-9, num_bins + 1)


def _binned(times: np.ndarray, values: np.ndarray, edges: np.ndarray,
            how: Literal["mean", "sum"]) -> np.ndarray:
    """``values`` reduced per time bin (``edges`` from :func:`_bin_edges`); NaN for an empty
    bin under ``mean``, zero under ``sum``."""
    sums, _ = np.histogram(times, bins=edges, weights=values)
    if how == "sum":
        return sums
    counts, _ = np.histogram(times, bins=edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def window_iterations(results: Results, t0: float, t1: float) -> pd.DataFrame:
    """Iteration rows that start within ``[t0, t1]`` (all replicas), in time order."""
    it = results.iterations
    start = it["start_s"].to_numpy(dtype=np.float64)
    out = it[(start >= t0) & (start <= t1)]
    return out.sort_values("start_s", kind="stable")


def queue_depth(results: Results, times_s: np.ndarray) -> np.ndarray:
    """Requests waiting for their first schedule at each of ``times_s``: arrived at or before
    t, not yet first scheduled. A request never scheduled waits until it finished (was
    rejected at arrival: never counted) or, still in flight, until the run's end. Re-queueing
    after a preemption is not counted (the frame keeps only the first schedule)."""
    req = results.requests
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    leave = req["first_scheduled_s"].to_numpy(dtype=np.float64).copy()
    status = req["status"].astype(str).to_numpy()
    never = np.isnan(leave)
    leave[never & (status == "in_flight")] = np.inf
    waiting = ~(never & (status != "in_flight"))  # rejected: never waited in a queue
    arrived = np.searchsorted(np.sort(arrival[waiting]), times_s, side="right")
    left = np.searchsorted(np.sort(leave[waiting]), times_s, side="right")
    return (arrived - left).astype(np.int64)


# ---- timelines ----

def timeline_figure(results: Results, t0: float, t1: float,
                    highlight: tuple[float, float] | None = None,
                    max_points: int = MAX_POINTS) -> go.Figure:
    """Six stacked timelines over ``[t0, t1]`` sharing the time axis: batch composition
    (prefill vs decode tokens per iteration, stacked), iteration duration, KV occupancy
    (blocks used / capacity) and fragmentation (1 − tokens / (blocks × block size)), queue
    depth, preemptions and arrivals. With more than ``max_points`` iterations in the window
    the series are bin means (counts: bin sums) over ``max_points`` equal time bins.
    ``highlight`` shades that interval on every row (e.g. one request's life)."""
    info = results.info
    it = window_iterations(results, t0, t1)
    start = it["start_s"].to_numpy(dtype=np.float64)
    prefill = it["num_prefill_tokens"].to_numpy(dtype=np.float64)
    decode = it["num_decode_seqs"].to_numpy(dtype=np.float64)  # one token per decode seq
    duration = it["duration_s"].to_numpy(dtype=np.float64)
    blocks = it["kv_blocks_used"].to_numpy(dtype=np.float64)
    kv_tokens = it["kv_tokens"].to_numpy(dtype=np.float64)
    preempted = it["num_preempted"].to_numpy(dtype=np.float64)
    occupancy = blocks / float(info.kv_capacity_blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        fragmentation = np.where(blocks > 0, 1.0 - kv_tokens / (blocks * info.block_size_tokens),
                                 np.nan)

    num_bins = max(1, min(max_points, len(start)))
    edges = _bin_edges(t0, t1, num_bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    if len(start) > max_points:
        x = centres
        series = {name: _binned(start, values, edges, "mean") for name, values in
                  [("prefill", prefill), ("decode", decode), ("duration", duration),
                   ("occupancy", occupancy), ("fragmentation", fragmentation)]}
        series["preempted"] = _binned(start, preempted, edges, "sum")
    else:
        x = start
        series = {"prefill": prefill, "decode": decode, "duration": duration,
                  "occupancy": occupancy, "fragmentation": fragmentation,
                  "preempted": preempted}

    fig = make_subplots(rows=len(TIMELINE_ROWS), cols=1, shared_xaxes=True,
                        vertical_spacing=0.03, subplot_titles=TIMELINE_ROWS)
    fig.add_trace(go.Bar(x=x, y=series["prefill"], name="prefill tokens"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=series["decode"], name="decode tokens"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=series["duration"], name="iteration duration",
                             mode="lines"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=series["occupancy"], name="KV occupancy",
                             mode="lines"), row=3, col=1)
    fig.add_trace(go.Scatter(x=x, y=series["fragmentation"], name="KV fragmentation",
                             mode="lines"), row=3, col=1)
    depth_t = np.linspace(t0, t1, max(2, min(max_points, 2 * len(results.requests) + 2)))
    fig.add_trace(go.Scatter(x=depth_t, y=queue_depth(results, depth_t), name="queue depth",
                             mode="lines", line_shape="hv"), row=4, col=1)
    fig.add_trace(go.Bar(x=x, y=series["preempted"], name="preemptions"), row=5, col=1)
    arrival = results.requests["arrival_s"].to_numpy(dtype=np.float64)
    arrival = arrival[(arrival >= t0) & (arrival <= t1)]
    arrival_edges = _bin_edges(t0, t1, min(max_points, 200))
    counts, _ = np.histogram(arrival, bins=arrival_edges)
    fig.add_trace(go.Bar(x=0.5 * (arrival_edges[:-1] + arrival_edges[1:]), y=counts,
                         name="arrivals"), row=6, col=1)

    fig.update_layout(barmode="stack", height=1100, bargap=0,
                      legend={"orientation": "h", "y": 1.03})
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    fig.update_xaxes(range=[t0, t1], title_text="simulated time (s)", row=6, col=1)
    if highlight is not None:
        for row in range(1, len(TIMELINE_ROWS) + 1):
            fig.add_vrect(x0=highlight[0], x1=highlight[1], fillcolor=_HIGHLIGHT,
                          line_width=0, row=row, col=1)
    return fig


# ---- latency distributions ----

def latency_values(results: Results, metric: LatencyMetric) -> np.ndarray:
    """Per-request seconds of ``metric``: TTFT over requests with a first token, TPOT and
    E2E over finished requests (as in ``Results.summary``); NaNs dropped."""
    req = results.requests
    values = req[f"{metric}_s"].to_numpy(dtype=np.float64)
    if metric != "ttft":
        values = values[(req["status"] == "finished").to_numpy(dtype=bool)]
    return values[~np.isnan(values)]


def slo_s(results: Results, metric: LatencyMetric) -> float | None:
    """The scenario's target for ``metric`` in seconds, or None (E2E has none)."""
    return {"ttft": results.info.slo_ttft_s, "tpot": results.info.slo_tpot_s}.get(metric)


def _cdf_xy(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF points (sorted values, i/n), thinned to ``max_points`` keeping the
    last point, so the curve always ends at 1."""
    x = np.sort(values)
    y = np.arange(1, x.size + 1, dtype=np.float64) / max(x.size, 1)
    if x.size > max_points:
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return x, y


def _add_slo(fig: go.Figure, slo: float | None) -> None:
    if slo is not None:
        fig.add_vline(x=slo, line_dash="dash", line_color="red",
                      annotation_text=f"SLO {slo:g} s")


def latency_cdf(results: Results, metric: LatencyMetric,
                max_points: int = MAX_POINTS) -> go.Figure:
    """Empirical CDF of ``metric`` with the SLO (if any) as a dashed vertical line."""
    x, y = _cdf_xy(latency_values(results, metric), max_points)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name=LATENCY_LABELS[metric],
                               line_shape="hv"))
    _add_slo(fig, slo_s(results, metric))
    fig.update_layout(title=f"{LATENCY_LABELS[metric]} CDF", xaxis_title="seconds",
                      yaxis_title="fraction of requests", yaxis_range=[0, 1.02])
    return fig


def latency_histogram(results: Results, metric: LatencyMetric, num_bins: int = 60) -> go.Figure:
    """Histogram of ``metric`` (counted with numpy, so the figure is ``num_bins`` bars
    whatever the run's size) with the SLO line."""
    values = latency_values(results, metric)
    counts, edges = np.histogram(values, bins=num_bins) if values.size else (np.zeros(0), [0])
    fig = go.Figure(go.Bar(x=0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:])), y=counts,
                           width=np.diff(edges), name=LATENCY_LABELS[metric]))
    _add_slo(fig, slo_s(results, metric))
    fig.update_layout(title=f"{LATENCY_LABELS[metric]} histogram", xaxis_title="seconds",
                      yaxis_title="requests", bargap=0)
    return fig


# ---- requests ----

SLOWEST_COLUMNS = ("request_id", "replica", "arrival_s", "queue_s", "ttft_s", "tpot_s",
                   "e2e_s", "prompt_tokens", "output_tokens", "num_preemptions", "status")


def slowest_requests(results: Results, by: Literal["ttft", "e2e"] = "ttft",
                     n: int = 20) -> pd.DataFrame:
    """The ``n`` requests with the largest ``by`` latency, slowest first (requests without
    one are left out)."""
    req = results.requests
    col = f"{by}_s"
    rows = req[req[col].notna()].nlargest(n, col, keep="first")
    return rows.loc[:, list(SLOWEST_COLUMNS)].reset_index(drop=True)


def request_span(results: Results, request_id: int) -> tuple[float, float]:
    """From ``request_id``'s arrival to its finish (the run's end if it has none)."""
    row = results.requests.set_index("request_id").loc[request_id]
    end = row["finish_s"]
    return float(row["arrival_s"]), float(results.info.end_s if math.isnan(end) else end)


def requests_in_window(results: Results, t0: float, t1: float, limit: int = 50) -> list[int]:
    """Ids of up to ``limit`` requests alive in ``[t0, t1]`` (arrived by t1, not finished
    before t0), earliest arrival first."""
    req = results.requests
    finish = req["finish_s"].fillna(results.info.end_s)
    alive = (req["arrival_s"] <= t1) & (finish >= t0)
    return req.loc[alive].nsmallest(limit, "arrival_s")["request_id"].astype(int).tolist()


def request_gantt(results: Results, request_ids: Sequence[int]) -> go.Figure:
    """One row per request: queued (arrival → first scheduled), prefill (→ first token) and
    decode (→ finish) as horizontal bars. A phase that did not happen is left out; one
    still running at the stop is drawn to the run's end."""
    req = results.requests.set_index("request_id").loc[list(request_ids)]
    end = results.info.end_s
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    scheduled = req["first_scheduled_s"].to_numpy(dtype=np.float64)
    first_token = req["first_token_s"].to_numpy(dtype=np.float64)
    finish = req["finish_s"].to_numpy(dtype=np.float64)
    labels = [f"req {i}" for i in req.index]
    phases = [
        ("queued", arrival, np.where(np.isnan(scheduled), end, scheduled), "#bbbbbb"),
        ("prefill", scheduled, np.where(np.isnan(first_token), end, first_token), "#ef553b"),
        ("decode", first_token, np.where(np.isnan(finish), end, finish), "#636efa"),
    ]
    fig = go.Figure()
    for name, begin, stop, colour in phases:
        ok = ~np.isnan(begin)
        fig.add_trace(go.Bar(
            name=name, orientation="h", base=begin[ok], x=(stop - begin)[ok],
            y=[label for label, keep in zip(labels, ok, strict=True) if keep],
            marker_color=colour))
    fig.update_layout(barmode="overlay", title="Request timeline", xaxis_title="simulated time (s)",
                      height=max(200, 28 * len(labels) + 120),
                      yaxis={"autorange": "reversed", "type": "category"})
    return fig


# ---- compare ----

def compare_cdfs(runs: Mapping[str, Results], metric: LatencyMetric,
                 max_points: int = MAX_POINTS) -> go.Figure:
    """One CDF trace per named run (in ``runs`` order), with the first run's SLO line."""
    fig = go.Figure()
    for name, results in runs.items():
        x, y = _cdf_xy(latency_values(results, metric), max_points)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line_shape="hv"))
    if runs:
        _add_slo(fig, slo_s(next(iter(runs.values())), metric))
    fig.update_layout(title=f"{LATENCY_LABELS[metric]} CDF", xaxis_title="seconds",
                      yaxis_title="fraction of requests", yaxis_range=[0, 1.02])
    return fig


def compare_table(runs: Mapping[str, Results],
                  metrics: Sequence[str] = COMPARE_METRICS) -> pd.DataFrame:
    """Summary ``metrics`` (rows) of each run (a column per name), then for every run after
    the first, ``Δ <name>`` (run − first) and ``Δ% <name>`` (100 × Δ / |first|, NaN where
    the first is zero). The first run is the baseline."""
    names = list(runs)
    table = pd.DataFrame({name: runs[name].summary().reindex(list(metrics)) for name in names})
    table.index.name = "metric"
    if not names:
        return table
    base = table[names[0]]
    for name in names[1:]:
        delta = table[name] - base
        table[f"Δ {name}"] = delta
        table[f"Δ% {name}"] = 100.0 * delta / base.abs().replace(0.0, np.nan)
    return table


_HIGHER_IS_BETTER_SUFFIXES = ("_per_s", "_per_s_per_device", "_frac")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of summary ``metric`` is an improvement (throughput, goodput,
    fractions); latencies, costs and energy are better smaller."""
    return metric.endswith(_HIGHER_IS_BETTER_SUFFIXES)


def delta_colour(metric: str, delta: float) -> str:
    """CSS background for a difference: green where it improves ``metric``, red where it
    worsens it, none for zero or NaN."""
    if delta == 0 or math.isnan(delta):
        return ""
    better = (delta > 0) == higher_is_better(metric)
    return "background-color: rgba(0, 160, 0, 0.25)" if better else \
        "background-color: rgba(220, 0, 0, 0.25)"


def style_compare_table(table: pd.DataFrame) -> pd.io.formats.style.Styler:
    """``table`` from :func:`compare_table` with its Δ columns coloured by
    :func:`delta_colour` and numbers to four significant digits."""
    delta_cols = [c for c in table.columns if str(c).startswith("Δ")]

    def colour(column: pd.Series) -> list[str]:
        return [delta_colour(str(metric), float(v)) for metric, v in column.items()]

    return table.style.apply(colour, subset=delta_cols, axis=0).format("{:.4g}", na_rep="—")


# ---- the cluster: groups and autoscaling ----

def group_table(results: Results) -> pd.DataFrame:
    """One row per replica group: its role, accelerator, layout and the requests its
    replicas finished (a disaggregated request counts on its decode replica)."""
    req = results.requests
    finished = req[req["status"] == "finished"]
    rows = []
    for group in results.info.all_groups:
        mine = finished["replica"].between(group.first_replica,
                                           group.first_replica + group.num_replicas - 1)
        rows.append({
            "group": group.name, "role": group.role, "accelerator": group.accelerator.name,
            "replicas": group.num_replicas, "devices per replica": group.devices_per_replica,
            "pipeline stages": group.num_stages, "requests finished": int(mine.sum()),
        })
    return pd.DataFrame(rows)


def replicas_over_time(results: Results) -> go.Figure:
    """Replicas serving and replicas provisioned (paid for, starting ones included) over
    the run, from the autoscalers' events; a flat line without autoscaling."""
    events = results.scaling.sort_values("time_s", kind="stable")
    end = results.info.end_s
    serving = provisioned = 0
    times, serving_y, provisioned_y = [0.0], [0], [0]
    for t, event in zip(events["time_s"].tolist(), events["event"].tolist(), strict=True):
        if event == "start":
            provisioned += 1
        elif event == "ready":
            serving += 1
            provisioned += 1 if t == 0 else 0  # those running from the outset
        elif event == "drain":
            serving -= 1
        elif event == "stop":
            provisioned -= 1
        times.append(t)
        serving_y.append(serving)
        provisioned_y.append(provisioned)
    if events.empty:
        serving = provisioned = results.info.num_replicas
        serving_y, provisioned_y = [serving], [provisioned]
    times.append(end)
    serving_y.append(serving)
    provisioned_y.append(provisioned)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=times, y=provisioned_y, name="provisioned", line_shape="hv"))
    fig.add_trace(go.Scatter(x=times, y=serving_y, name="serving", line_shape="hv"))
    fig.update_layout(xaxis_title="time (s)", yaxis_title="replicas", height=300,
                      margin={"t": 30, "b": 40})
    return fig
