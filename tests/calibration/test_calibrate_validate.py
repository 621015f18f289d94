"""End to end on this machine's CPU: calibrate (a short budget), simulate with the
profile, validate against a real served model; and bad profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration import microbench, reference
from calibration.calibrate import (
    REFERENCE_ELEMENTWISE_MIX,
    REFERENCE_ELEMENTWISE_OPS,
    REFERENCE_KV_WRITES,
)
from calibration.validate import validate_size
from hardware.profile import load_profile
from simulator.cli import main
from simulator.deployment import ScenarioError
from simulator.engine import simulate
from simulator.scenario import Scenario


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "profile.json"
    # Through the command, as a user runs it: quick shapes, 8 s of measuring, 1 thread.
    assert main(["calibrate", "--quick", "--time-budget", "8", "--threads", "1",
                 "--out", str(path)]) == 0
    return path


def test_the_profile_round_trips_and_describes_this_machine(profile_path: Path):
    profile = load_profile(profile_path)
    assert profile.host.device_type == "cpu" and profile.host.num_threads == 1
    assert profile.accelerator.name.startswith("cpu:")
    assert profile.points and profile.fit
    # A CPU core does between 1 GFLOP/s and 10 TFLOP/s, and memory moves 1-1000 GB/s.
    assert 1e-3 < profile.accelerator.peak_tflops["fp32"] < 10
    assert 1e-3 < profile.accelerator.hbm_tb_per_s < 1
    again = json.loads(profile.model_dump_json())
    assert load_profile(profile_path).model_dump(mode="json") == again
    assert {q.op for q in profile.fit} >= {"gemm", "decode_attention", "elementwise"}


def test_a_scenario_runs_on_the_profile(profile_path: Path):
    s = Scenario.from_dict({
        "model": dict(reference.REFERENCE_SPECS["small"]),
        "hardware": {"profile": str(profile_path)},
        "deployment": {"weight_dtype": "fp32", "activation_dtype": "fp32",
                       "kv_cache_dtype": "fp32"},
        "engine": {"max_model_len": 512, "runtime_reserved_gib": 0.0},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 5.0},
                     "prompt_tokens": {"kind": "fixed", "tokens": 100},
                     "output_tokens": {"kind": "fixed", "tokens": 20}},
        "stop": {"num_requests": 20},
    })
    r = simulate(s)
    assert r.info.accelerator.name == load_profile(profile_path).accelerator.name
    assert (r.requests.status == "finished").all()


def test_validation_against_a_real_served_model_is_sane(profile_path: Path):
    # A short run of the 'small' reference model (weights beyond the CPU's caches), on a
    # CI machine that may run other tests at the same time (pytest -n): the figures the
    # closing note reports (errors of 10-15%) need a quiet machine. Here the check is that
    # nothing is broken: a wrong unit or a missing op class lands off by far more than 2x,
    # and the median prediction must sit within 2x of the measurement, iteration by
    # iteration and for TTFT and TPOT.
    profile = load_profile(profile_path)
    report = validate_size(profile, profile_path, "small", num_requests=16, rate_per_s=6.0,
                           num_threads=1)
    assert report.num_iterations > 16
    ratio = (report.iterations.predicted_s / report.iterations.measured_s).median()
    assert 0.5 < ratio < 2.0
    assert 0.5 < report.ttft_p50_simulated_s / report.ttft_p50_measured_s < 2.0
    assert 0.5 < report.tpot_p50_simulated_s / report.tpot_p50_measured_s < 2.0


def test_the_reference_engine_constants_agree_with_its_code():
    assert REFERENCE_ELEMENTWISE_OPS == reference.ELEMENTWISE_OPS_PER_LAYER
    assert REFERENCE_KV_WRITES == reference.KV_WRITES_PER_SEQUENCE_LAYER
    kernels = sum(calls * microbench.ELEMENTWISE_OPS[name][2]
                  for name, calls in REFERENCE_ELEMENTWISE_MIX.items())
    assert kernels == reference.ELEMENTWISE_OPS_PER_LAYER


def test_bad_profiles_fail_with_the_file_and_the_problem(tmp_path: Path):
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\x01not json")
    with pytest.raises(ValueError, match=r"garbage\.json is not JSON"):
        load_profile(garbage)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"schema_version": 1, "host": {}}))
    with pytest.raises(ValueError, match=r"wrong\.json is not a valid calibration profile: "
                                         r"accelerator: Field required"):
        load_profile(wrong)
    with pytest.raises(ScenarioError, match=r"hardware\.profile: cannot read calibration "
                                            r"profile .*missing\.json"):
        simulate(Scenario.from_dict({"hardware": {"profile": str(tmp_path / "missing.json")}}))
