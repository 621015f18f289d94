"""The Plan and Calibration pages, driven through Streamlit's AppTest with real clicks."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from calibration.calibrate import build_profile
from hardware.profile import MeasuredPoint
from simulator.conformance import tiny_scenario

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "views"
CPU = {"device_type": "cpu", "device_name": "synthetic cpu", "torch_version": "0",
       "num_threads": 1, "platform": "test"}


def _point(op: str, name: str, shape: dict[str, int], seconds: float) -> MeasuredPoint:
    return MeasuredPoint(op=op, name=name, dtype="float32", shape=shape, seconds=seconds,
                         seconds_p10=seconds, seconds_p90=seconds, repeats=3)


def _synthetic_profile(path: Path) -> Path:
    """A CPU profile fitted from points on a made-up roofline (1 TFLOP/s, 50 GB/s)."""
    points = []
    for m in (1, 4, 16, 64, 256, 1024):
        for k, n in ((256, 256), (1024, 1024), (1024, 4096)):
            flops, moved = 2.0 * m * k * n, 4.0 * (k * n + m * k + m * n)
            points.append(_point("gemm", "matmul", {"m": m, "k": k, "n": n},
                                 5e-6 + max(flops / 0.7e12, moved / 40e9)))
    for size in (1 << 16, 1 << 20, 1 << 24):
        points.append(_point("copy", "copy", {"bytes": size}, 2 * size / 50e9))
    for elements in (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20):
        points.append(_point("elementwise", "add", {"elements": elements, "tensors_read": 2,
                                                     "tensors_written": 1},
                             3e-6 + 12.0 * elements / 30e9))
    build_profile(points, CPU, quick=True, memory_gib=16.0).to_json(path)
    return path


def test_plan_max_rate_answers_in_requests_per_second():
    at = AppTest.from_file(str(PAGES / "plan.py"), default_timeout=120)
    at.session_state["servesim.scenario"] = tiny_scenario()
    at.run()
    assert not at.exception
    at.radio(key="plan.mode").set_value("max sustainable rate")
    at.number_input(key="plan.num_requests").set_value(200)
    at.number_input(key="plan.replications").set_value(2)
    at.button(key="plan.run").click().run()
    assert not at.exception, at.exception
    assert "req/s" in at.success[0].value
    assert any("max sustainable rate" in c.value for c in at.code)
    assert len(at.dataframe[0].value) >= 2  # the probes


def test_plan_cheapest_ranks_and_explains_rejections():
    at = AppTest.from_file(str(PAGES / "plan.py"), default_timeout=120)
    at.session_state["servesim.scenario"] = tiny_scenario()
    at.run()
    at.radio(key="plan.mode").set_value("cheapest deployment").run()
    at.number_input(key="plan.num_requests").set_value(200)
    at.number_input(key="plan.rate_per_s").set_value(5.0)
    at.multiselect(key="plan.accelerators").set_value(["h100-sxm"])
    at.multiselect(key="plan.tp").set_value([1])
    at.multiselect(key="plan.replicas").set_value([1, 2])
    at.button(key="plan.run").click().run()
    assert not at.exception, at.exception
    assert at.success and "cheapest at 5 req/s" in at.success[0].value
    assert "replicas=1" in at.success[0].value  # one replica suffices and is cheaper
    ranked, rejected = at.dataframe[0].value, at.dataframe[-1].value
    assert len(ranked) == 2 and rejected.empty  # both meet; one is the cheaper
    assert len(at.get("plotly_chart")) == 1  # the Pareto front


def test_calibration_shows_fit_per_op_class(tmp_path):
    profile = _synthetic_profile(tmp_path / "profile.json")
    at = AppTest.from_file(str(PAGES / "calibration.py"), default_timeout=60)
    at.run()
    assert not at.exception
    at.text_input(key="calibration.path").set_value(str(profile)).run()
    assert not at.exception, at.exception
    assert not at.error
    fit = at.dataframe[1].value
    assert {"gemm", "elementwise"} <= set(fit["op"])
    device = at.dataframe[0].value
    assert device["rate"].str.startswith("GEMM float32").any()
    assert len(at.get("plotly_chart")) == 1


def test_calibration_bad_file_is_a_message_not_an_exception(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "accelerator": 3}')
    at = AppTest.from_file(str(PAGES / "calibration.py"), default_timeout=60)
    at.run()
    at.text_input(key="calibration.path").set_value(str(bad)).run()
    assert not at.exception
    assert "not a valid calibration profile" in at.error[0].value
    (tmp_path / "nojson.json").write_text("not json")
    at.text_input(key="calibration.path").set_value(str(tmp_path / "nojson.json")).run()
    assert not at.exception
    assert "is not JSON" in at.error[0].value
