"""Explore page: scrub through one run's timelines and find why its tail latency grew.

Reads a run from ``dashboard.state`` (the last one, or a saved one) and plots it with
``dashboard.charts``; it simulates nothing.
"""

from __future__ import annotations

import streamlit as st

from dashboard import charts, state

LAST = "Last run"
NO_REQUEST = "(none)"

st.title("Explore")

saved = state.saved_runs()
last = state.last_run()
choices = ([LAST] if last is not None else []) + list(saved)
if not choices:
    st.info("No run yet: simulate a scenario on the **Run** page (sidebar), then come back.")
    st.stop()

chosen = st.selectbox("Run", choices, key="explore_run")
results = last if chosen == LAST else saved[chosen]
assert results is not None
info = results.info
end_s = float(info.end_s)

t0, t1 = st.slider("Time window (simulated s)", min_value=0.0, max_value=end_s,
                   value=(0.0, end_s), step=max(end_s / 1000.0, 1e-6), format="%.3f",
                   key=f"explore_window:{chosen}:{end_s}")  # a new run resets it
window = charts.window_iterations(results, t0, t1)
num_arrivals = int(results.requests["arrival_s"].between(t0, t1).sum())
st.caption(f"Window {t0:.3f}–{t1:.3f} s: {len(window)} iterations, "
           f"{num_arrivals} arrivals, {int(window['num_preempted'].sum())} preemptions")

# Slowest requests first: picking one highlights its life on the timelines below.
left, right = st.columns([1, 3])
by = left.radio("Slowest by", ["ttft", "e2e"], format_func=str.upper, key="explore_by")
num_slowest = left.number_input("How many", min_value=5, max_value=500, value=20, step=5,
                                key="explore_n")
slowest = charts.slowest_requests(results, by=by, n=int(num_slowest))
right.dataframe(slowest, hide_index=True, width="stretch",
                column_config={c: st.column_config.NumberColumn(format="%.4f")
                               for c in ("arrival_s", "queue_s", "ttft_s", "tpot_s", "e2e_s")})
picked = st.selectbox("Inspect a slow request", [NO_REQUEST, *slowest["request_id"].tolist()],
                      key="explore_request")

highlight = None
if picked != NO_REQUEST:
    highlight = charts.request_span(results, int(picked))
    row = slowest.set_index("request_id").loc[picked]
    st.caption(f"Request {picked}: arrived {highlight[0]:.3f} s, done {highlight[1]:.3f} s; "
               f"queued {row['queue_s']:.4f} s, TTFT {row['ttft_s']:.4f} s, "
               f"{int(row['num_preemptions'])} preemptions (highlighted below)")
    gantt_ids = [int(picked)]
else:
    gantt_ids = charts.requests_in_window(results, t0, t1, limit=30)

st.plotly_chart(charts.request_gantt(results, gantt_ids), width="stretch",
                key="explore_gantt")
st.plotly_chart(charts.timeline_figure(results, t0, t1, highlight=highlight),
                width="stretch", key="explore_timeline")

st.subheader("Latency distributions")
for column, metric in zip(st.columns(3), ("ttft", "tpot", "e2e"), strict=True):
    column.plotly_chart(charts.latency_cdf(results, metric), width="stretch",
                        key=f"explore_cdf_{metric}")
    column.plotly_chart(charts.latency_histogram(results, metric), width="stretch",
                        key=f"explore_hist_{metric}")
