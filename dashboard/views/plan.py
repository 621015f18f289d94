"""Plan: the capacity planner on the current scenario.

Two questions, both answered by ``simulator.planner`` (the page only collects inputs and
draws the answer): the highest arrival rate the scenario sustains under its SLO, and the
cheapest deployment that serves a given rate.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.state import get_scenario
from hardware.catalog import load_catalog
from simulator import SearchSpace, Target, cheapest_deployment, max_sustainable_rate

MODES = ("max sustainable rate", "cheapest deployment")
QUICK_NUM_REQUESTS = 1000  # per simulated point: enough for a p99, quick enough to click


def _targets(ttft_s: float, tpot_s: float) -> list[Target]:
    targets = []
    if ttft_s > 0:
        targets.append(Target("ttft_p99_s", ttft_s))
    if tpot_s > 0:
        targets.append(Target("tpot_p99_s", tpot_s))
    return targets


def _pareto_figure(ranked: pd.DataFrame, pareto: pd.DataFrame, axes: list[str]) -> go.Figure:
    """Feasible deployments, cost vs p99 TTFT with its confidence interval; the front
    joined by a line."""
    fig = go.Figure()
    for name, rows, mode in (("feasible", ranked, "markers"), ("Pareto front", pareto,
                                                                "lines+markers")):
        mean = rows["ttft_p99_s_mean"]
        fig.add_trace(go.Scatter(
            x=rows["cost_per_hour_usd"], y=mean, mode=mode, name=name,
            error_y={"type": "data", "symmetric": False,
                     "array": rows["ttft_p99_s_ci_high"] - mean,
                     "arrayminus": mean - rows["ttft_p99_s_ci_low"]},
            text=[", ".join(f"{a.split('.')[-1]}={r[a]}" for a in axes)
                  for _, r in rows.iterrows()],
            hovertemplate="%{text}<br>%{x:.2f} USD/h, p99 TTFT %{y:.3g} s<extra></extra>",
        ))
    fig.update_layout(xaxis_title="cost, USD/h", yaxis_title="p99 TTFT, s",
                      margin={"t": 30}, height=420)
    return fig


st.title("Plan")
scenario = get_scenario()
st.caption(f"Scenario **{scenario.name}**: the planner varies the arrival rate or the "
           "deployment, nothing else.")

mode = st.radio("Question", MODES, horizontal=True, key="plan.mode")
left, right = st.columns(2)
ttft_s = left.number_input("p99 TTFT target, s (0: none)", min_value=0.0,
                           value=float(scenario.slo.ttft_s or 0.0), format="%.3f",
                           key="plan.ttft_s")
tpot_s = right.number_input("p99 TPOT target, s (0: none)", min_value=0.0,
                            value=float(scenario.slo.tpot_s or 0.0), format="%.4f",
                            key="plan.tpot_s")
left, right = st.columns(2)
num_requests = left.number_input("requests per simulated point", min_value=50,
                                 value=QUICK_NUM_REQUESTS, step=100, key="plan.num_requests")
replications = right.number_input("replications (seeds per point)", min_value=2, max_value=20,
                                  value=3 if mode == MODES[0] else 2, key="plan.replications")

if mode == MODES[1]:
    catalog = sorted(load_catalog())
    current = scenario.hardware.accelerator
    default_acc = [current] if isinstance(current, str) and current in catalog else catalog[:1]
    rate_per_s = st.number_input("target rate, req/s", min_value=0.01, value=float(
        getattr(getattr(scenario.workload, "arrival", None), "rate_per_s", 10.0) or 10.0),
        key="plan.rate_per_s")
    accelerators = st.multiselect("accelerators", catalog, default=default_acc,
                                  key="plan.accelerators")
    left, right = st.columns(2)
    tensor_parallel = left.multiselect("TP degrees", [1, 2, 4, 8], default=[1, 2],
                                       key="plan.tp")
    replicas = right.multiselect("replica counts", [1, 2, 4, 8], default=[1, 2],
                                 key="plan.replicas")

if st.button("Run", type="primary", key="plan.run"):
    targets = _targets(ttft_s, tpot_s)
    if not targets:
        st.error("Set at least one target (p99 TTFT or p99 TPOT).")
        st.stop()
    base = scenario.with_overrides([f"stop.num_requests={int(num_requests)}"])
    try:
        with st.spinner("Planning..."):
            if mode == MODES[0]:
                load = max_sustainable_rate(base, targets=targets,
                                            replications=int(replications),
                                            executor="inprocess")
            else:
                space = SearchSpace(accelerators=tuple(accelerators),
                                    tensor_parallel=tuple(tensor_parallel),
                                    replicas=tuple(replicas))
                plan = cheapest_deployment(base, space, rate_per_s=float(rate_per_s),
                                           targets=targets, replications=int(replications),
                                           executor="inprocess")
    except ValueError as exc:  # a non-rate workload, an empty search space
        st.error(str(exc))
        st.stop()
    if mode == MODES[0]:
        st.success(load.describe().splitlines()[0])
        st.code(load.describe(), language=None)
        st.caption(f"{len(load.probes)} probes in {load.wall_s:.1f} s")
        st.subheader("Probes")
        st.dataframe(load.probes, hide_index=True)
    else:
        (st.success if plan.best is not None else st.warning)(plan.describe().splitlines()[0])
        axes = [c for c in plan.candidates.columns if "." in c]
        st.caption(f"{len(plan.candidates)} candidates in {plan.wall_s:.1f} s; "
                   f"pruned before simulation: {plan.num_pruned} of {len(plan.candidates)}")
        st.subheader("Feasible, ranked by cost then p99 TTFT")
        st.dataframe(plan.ranked, hide_index=True)
        if len(plan.ranked) and "ttft_p99_s_mean" in plan.ranked:
            st.subheader("Pareto front: cost vs p99 TTFT")
            st.plotly_chart(_pareto_figure(plan.ranked, plan.pareto, axes))
        st.subheader("Rejected")
        st.dataframe(plan.rejected()[[*axes, "status", "reason"]], hide_index=True)
        with st.expander("As text"):
            st.code(plan.describe(), language=None)
