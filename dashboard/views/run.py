"""Run page: simulate the edited scenario, show its summary, save it, download it."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import charts
from dashboard.state import get_scenario, last_run, run, save_run, saved_runs, scenario_key
from simulator import Results

EXPORTS = "servesim.run_page.exports"  # (scenario key, {file name: bytes})


def _fmt(value: float, unit: str = "", digits: int = 3) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}g}{unit}"


def _latency_card(column: DeltaGenerator, label: str, value_s: float,
                  slo_s: float | None) -> None:
    """A latency metric in ms; its delta is the margin to the SLO (green when under)."""
    delta = None
    if slo_s is not None and not math.isnan(value_s):
        delta = f"{(value_s - slo_s) * 1e3:+.1f} ms vs SLO {slo_s * 1e3:g} ms"
    column.metric(label, _fmt(value_s * 1e3, " ms"), delta, delta_color="inverse")


def _exports(results: Results, key: str) -> dict[str, bytes]:
    """Requests/iterations as Parquet and CSV, and the Chrome trace, written once per run."""
    cached = st.session_state.get(EXPORTS)
    if cached is not None and cached[0] == key:
        files: dict[str, bytes] = cached[1]
        return files
    with tempfile.TemporaryDirectory(prefix="servesim-export-") as tmp:
        out = Path(tmp)
        paths = [*results.to_parquet(out), *results.to_csv(out),
                 results.to_chrome_trace(out / "trace.json")]
        files = {path.name: path.read_bytes() for path in paths}
    st.session_state[EXPORTS] = (key, files)
    return files


st.title("Run")
scenario = get_scenario()
st.caption(f"Scenario **{scenario.name}**: edit it on the Scenario page.")

if st.button("Run", type="primary"):
    with st.status(f"Simulating {scenario.name} …", expanded=False) as status:
        run(scenario)
        status.update(label=f"Simulated {scenario.name}", state="complete")

results = last_run()
if results is None:
    st.info("No run yet: press Run.")
    st.stop()
if results.scenario != scenario:
    st.warning("These results are of an earlier scenario; press Run for the current one.")

summary = results.summary()
slo = results.info
st.subheader("Latency")
cols = st.columns(4)
_latency_card(cols[0], "TTFT p50", summary["ttft_p50_s"], slo.slo_ttft_s)
_latency_card(cols[1], "TTFT p99", summary["ttft_p99_s"], slo.slo_ttft_s)
_latency_card(cols[2], "TPOT p50", summary["tpot_p50_s"], slo.slo_tpot_s)
_latency_card(cols[3], "TPOT p99", summary["tpot_p99_s"], slo.slo_tpot_s)

st.subheader("Throughput and cost")
cols = st.columns(4)
cols[0].metric("Throughput", _fmt(summary["output_tokens_per_s"], " tok/s", 4),
               help="Output tokens of finished requests per second")
cols[1].metric("Requests", _fmt(summary["request_throughput_per_s"], " req/s"))
cols[2].metric("Goodput", _fmt(summary["goodput_requests_per_s"], " req/s"),
               f"{summary['slo_attainment_frac']:.1%} meet the SLO", delta_color="off")
cols[3].metric("Cost", _fmt(summary["cost_per_million_output_tokens_usd"], " $/M tok"),
               help="USD per million output tokens")
cols = st.columns(4)
cols[0].metric("MFU", _fmt(summary["mfu_frac"] * 100, " %"))
cols[1].metric("MBU", _fmt(summary["mbu_frac"] * 100, " %"))
cols[2].metric("Preemptions", f"{summary['num_preemptions']:.0f}")
cols[3].metric("Finished", f"{summary['num_finished']:.0f} / {summary['num_requests']:.0f}")

# Layouts and decoding strategies that have numbers of their own.
extras = {
    "Tokens per decode step": (_fmt(summary["tokens_per_step_mean"]),
                               summary["tokens_per_step_mean"] != 1.0),
    "Proposals accepted": (_fmt(summary["acceptance_rate_frac"] * 100, " %"),
                           not math.isnan(summary["acceptance_rate_frac"])),
    "KV hand-over p99": (_fmt(summary["kv_transfer_p99_s"] * 1e3, " ms"),
                         not math.isnan(summary["kv_transfer_p99_s"])),
    "Pipeline waits": (_fmt(summary["pipeline_wait_frac"] * 100, " %"),
                       summary["pipeline_wait_frac"] > 0),
    "Devices (mean)": (_fmt(summary["num_devices_mean"]), not results.scaling.empty),
}
shown = {label: value for label, (value, active) in extras.items() if active}
groups = results.info.all_groups
if shown or len(groups) > 1 or not results.scaling.empty:
    st.subheader("Cluster and decoding")
    if shown:
        for column, (label, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
            column.metric(label, value)
    if len(groups) > 1:
        st.dataframe(charts.group_table(results), width="stretch", hide_index=True)
    if not results.scaling.empty:
        st.plotly_chart(charts.replicas_over_time(results), width="stretch",
                        key="run.replicas")

with st.expander("All metrics"):
    st.dataframe(pd.DataFrame({"value": summary}), width="stretch")

st.subheader("Save for Compare")
name_col, button_col = st.columns([3, 1])
name = name_col.text_input("Run name", value=scenario.name, key="run.save_name")
if button_col.button("Save run", key="run.save"):
    if not name.strip():
        st.error("Give the run a name.")
    else:
        replaced = name.strip() in saved_runs()
        save_run(name.strip(), results)
        st.success(f"{'Replaced' if replaced else 'Saved'} run {name.strip()!r} "
                   f"({len(saved_runs())} saved).")

st.subheader("Downloads")
files = _exports(results, scenario_key(results.scenario))
download_cols = st.columns(len(files))
mimes = {".parquet": "application/octet-stream", ".csv": "text/csv",
         ".json": "application/json"}
for column, (file_name, data) in zip(download_cols, files.items(), strict=True):
    column.download_button(file_name, data, file_name=file_name,
                           mime=mimes[Path(file_name).suffix], key=f"run.download.{file_name}")
st.caption("trace.json opens in ui.perfetto.dev or chrome://tracing.")
