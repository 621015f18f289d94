"""Compare page: saved runs side by side, against the first one picked.

Reads saved runs from ``dashboard.state`` and plots them with ``dashboard.charts``.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, state

st.title("Compare")

saved = state.saved_runs()
if len(saved) < 2:
    st.info(f"Save at least two runs on the Run page to compare them ({len(saved)} saved).")
    st.stop()

names = st.multiselect("Runs (the first is the baseline)", list(saved),
                       default=list(saved)[:2], key="compare_runs")
if len(names) < 2:
    st.warning("Pick at least two runs.")
    st.stop()
runs = {name: saved[name] for name in names}

all_metrics = list(next(iter(runs.values())).summary().index)
metrics = st.multiselect("Metrics", all_metrics,
                         default=[m for m in charts.COMPARE_METRICS if m in all_metrics],
                         key="compare_metrics")
table = charts.compare_table(runs, metrics)
st.subheader(f"Summary against {names[0]}")
st.caption("Δ = run − baseline; green is better, red worse.")
st.dataframe(charts.style_compare_table(table), width="stretch")

st.subheader("Latency CDFs")
for column, metric in zip(st.columns(3), ("ttft", "tpot", "e2e"), strict=True):
    column.plotly_chart(charts.compare_cdfs(runs, metric), width="stretch",
                        key=f"compare_cdf_{metric}")
