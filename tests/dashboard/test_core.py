"""Dashboard core: state, Scenario and Run pages (streamlit AppTest), the CLI command."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from dashboard import forms
from simulator.cli import main

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "views"
SCENARIO_KEY = "servesim.scenario"


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_scenario_page_edit_updates_state() -> None:
    at = _page("scenario.py")
    assert at.number_input(key="sc.engine.max_num_seqs").value == 256
    at.number_input(key="sc.engine.max_num_seqs").set_value(128).run()
    assert not at.exception and not at.error
    assert at.session_state[SCENARIO_KEY].engine.max_num_seqs == 128


def test_scenario_page_invalid_value_shows_error_beside_field() -> None:
    at = _page("scenario.py")
    at.number_input(key="sc.engine.gpu_memory_utilization_frac").set_value(1.5).run()
    assert not at.exception
    assert any("gpu_memory_utilization_frac" in e.value for e in at.error)
    # The scenario keeps its last valid value.
    assert at.session_state[SCENARIO_KEY].engine.gpu_memory_utilization_frac == 0.9
    # A cross-field (model validator) error names the fields too.
    at.number_input(key="sc.engine.gpu_memory_utilization_frac").set_value(0.9).run()
    at.number_input(key="sc.engine.max_num_seqs").set_value(100_000).run()
    assert not at.exception
    assert any("max_num_seqs" in e.value for e in at.error)


def test_scenario_page_bad_yaml_field_is_an_error_not_a_traceback() -> None:
    at = _page("scenario.py")
    at.text_area(key="sc.workload").set_value("kind: [unclosed").run()
    assert not at.exception
    assert any("workload" in e.value for e in at.error)


def test_scenario_page_preset_sets_engine_fields() -> None:
    at = _page("scenario.py")
    at.selectbox(key="sc.preset").set_value("sglang").run()
    assert not at.exception
    engine = at.session_state[SCENARIO_KEY].engine
    assert engine.preset == "sglang"
    assert engine.block_size_tokens == 1 and engine.prefix_cache == "radix"
    assert at.number_input(key="sc.engine.block_size_tokens").value == 1
    assert at.selectbox(key="sc.engine.prefix_cache").value == "radix"
    at.selectbox(key="sc.preset").set_value("none").run()
    assert at.session_state[SCENARIO_KEY].engine.block_size_tokens == 16


def test_scenario_page_lists_only_scenario_examples() -> None:
    at = _page("scenario.py")
    options = at.selectbox(key="sc.example").options
    assert "llama3-8b-h100" in options
    assert "plan" not in options and "sweep" not in options
    at.selectbox(key="sc.example").set_value("llama3-8b-h100").run()
    assert not at.exception
    assert at.session_state[SCENARIO_KEY].name == "llama3-8b-h100"


def test_form_covers_every_schema_field() -> None:
    paths = {spec.path for section in forms.form_sections() for spec in section.fields}
    assert {"engine.max_num_seqs", "engine.preset", "deployment.weight_dtype",
            "workload", "model", "seed", "stop.num_requests"} <= paths


def test_run_page_shows_metric_cards_and_saves() -> None:
    at = _page("run.py")
    at.button[0].click().run()
    assert not at.exception
    cards = {m.label: m.value for m in at.metric}
    assert cards["TTFT p50"].endswith(" ms") and cards["TTFT p99"] != "—"
    assert "TPOT p99" in cards and "Preemptions" in cards
    at.text_input(key="run.save_name").set_value("baseline").run()
    at.button(key="run.save").click().run()
    assert list(at.session_state["servesim.saved_runs"]) == ["baseline"]
    assert at.session_state["servesim.last_run"] is not None


# AppTest cannot drive st.file_uploader, so the upload handlers are tested directly.
def test_trace_upload_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a usable trace"):
        forms.save_trace_upload("trace.parquet", b"\x00\xffgarbage", tmp_path)
    with pytest.raises(ValueError, match=r"prompt_tokens|column"):
        forms.save_trace_upload("trace.csv", b"a,b\n1,2\n", tmp_path)
    with pytest.raises(ValueError, match="limit"):
        forms.save_trace_upload("trace.csv", b"x" * 100, tmp_path, max_bytes=10)
    assert not list(tmp_path.iterdir())


def test_trace_upload_accepts_a_trace(tmp_path: Path) -> None:
    data = b"arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,20,8\n"
    path = forms.save_trace_upload("t.csv", data, tmp_path)
    assert path.read_bytes() == data


def test_scenario_upload_parses_and_rejects() -> None:
    assert forms.scenario_from_upload(b"engine: {max_num_seqs: 64}").engine.max_num_seqs == 64
    with pytest.raises(ValueError):
        forms.scenario_from_upload(b"\xff\xfe")
    with pytest.raises(ValueError):
        forms.scenario_from_upload(b"- a list")


def test_cli_dashboard_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--host" in out


def test_run_page_shows_the_cluster_of_a_disaggregated_autoscaled_run() -> None:
    from simulator import Scenario

    at = AppTest.from_file(str(PAGES / "run.py"), default_timeout=60)
    data = Scenario().model_dump(mode="json")
    data["deployment"] = {"groups": [
        {"name": "P", "role": "prefill"},
        {"name": "D", "role": "decode", "autoscale": {
            "metric": "queue_length", "target": 1, "max_replicas": 3, "interval_s": 1,
            "startup_s": 2, "cooldown_s": 2}}]}
    data["engine"]["decoding"] = {"kind": "speculative", "proposer": "eagle"}
    at.session_state[SCENARIO_KEY] = Scenario.from_dict(
        data, ["workload.arrival.rate_per_s=30", "stop.num_requests=300"])
    at.run()
    at.button[0].click().run()
    assert not at.exception
    cards = {m.label: m.value for m in at.metric}
    assert float(cards["Tokens per decode step"]) > 1
    assert cards["KV hand-over p99"].endswith(" ms")
    table = at.dataframe[0].value
    assert list(table["role"]) == ["prefill", "decode"]
    assert table["requests finished"].sum() == 300
    assert len(at.get("plotly_chart")) >= 1


def test_scenario_page_offers_the_layout_examples() -> None:
    at = _page("scenario.py")
    options = at.selectbox(key="sc.example").options
    assert "layouts/disaggregated" in options and "layouts/jamba-hybrid" in options
