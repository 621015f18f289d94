"""Results: derived columns, summary metrics and exports, against hand computations.

The fixture world: one replica of 2 devices on a device with 100 TFLOP/s bf16, 1 TB/s,
300 W TDP, 60 W idle, $1/h; KV capacity 20 blocks; the run stops at 8 s.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.spec import AcceleratorSpec
from simulator.results import Results, RunInfo, weighted_percentiles

NAN = math.nan
STATUSES = ["finished", "rejected", "in_flight"]

ACCEL = AcceleratorSpec(
    name="hand-gpu",
    memory_gib=80.0,
    hbm_tb_per_s=1.0,
    peak_tflops={"bf16": 100.0},
    intra_node_gb_per_s=100.0,
    pcie_gb_per_s=32.0,
    network_gb_per_s=25.0,
    tdp_w=300.0,
    idle_w=60.0,
    price_per_hour_usd=1.0,
)


def make_info(**changes: Any) -> RunInfo:
    fields: dict[str, Any] = dict(
        accelerator=ACCEL, compute_dtype="bf16", num_replicas=1, devices_per_replica=2,
        kv_capacity_blocks=20, block_size_tokens=16, slo_ttft_s=1.0, slo_tpot_s=0.5,
        end_s=8.0, wall_s=0.1,
    )
    fields.update(changes)
    return RunInfo(**fields)


def make_requests(rows: list[tuple]) -> pd.DataFrame:
    """rows: (replica, arrival, scheduled, first_token, finish, prompt, output, generated,
    preemptions, status, reason)."""
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(11)]
    return pd.DataFrame({
        "request_id": np.arange(len(rows), dtype=np.int64),
        "replica": np.asarray(cols[0], dtype=np.int64),
        "arrival_s": np.asarray(cols[1], dtype=np.float64),
        "first_scheduled_s": np.asarray(cols[2], dtype=np.float64),
        "first_token_s": np.asarray(cols[3], dtype=np.float64),
        "finish_s": np.asarray(cols[4], dtype=np.float64),
        "prompt_tokens": np.asarray(cols[5], dtype=np.int64),
        "output_tokens": np.asarray(cols[6], dtype=np.int64),
        "generated_tokens": np.asarray(cols[7], dtype=np.int64),
        "num_preemptions": np.asarray(cols[8], dtype=np.int64),
        "recomputed_tokens": 7 * np.asarray(cols[8], dtype=np.int64),  # 7 per preemption
        "priority": np.zeros(len(rows), dtype=np.int64),
        "ttft_slo_s": np.full(len(rows), np.nan),
        "prefix_id": np.full(len(rows), -1, dtype=np.int64),
        "prefix_hit_tokens": np.zeros(len(rows), dtype=np.int64),
        "status": pd.Categorical(list(cols[9]), categories=STATUSES),
        "reject_reason": pd.Series(list(cols[10]), dtype=object),
    })


def make_iterations(rows: list[tuple]) -> pd.DataFrame:
    """rows: (replica, start, duration, prefill_tokens, prefill_seqs, decode_seqs,
    kv_blocks, preempted, flops, hbm_bytes); iteration numbers are assigned per replica."""
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(10)]
    df = pd.DataFrame({
        "replica": np.asarray(cols[0], dtype=np.int64),
        "iteration": np.zeros(len(rows), dtype=np.int64),
        "start_s": np.asarray(cols[1], dtype=np.float64),
        "duration_s": np.asarray(cols[2], dtype=np.float64),
        "num_prefill_tokens": np.asarray(cols[3], dtype=np.int64),
        "num_prefill_seqs": np.asarray(cols[4], dtype=np.int64),
        "num_decode_seqs": np.asarray(cols[5], dtype=np.int64),
        "kv_blocks_used": np.asarray(cols[6], dtype=np.int64),
        "num_preempted": np.asarray(cols[7], dtype=np.int64),
        "flops": np.asarray(cols[8], dtype=np.float64),
        "hbm_bytes": np.asarray(cols[9], dtype=np.float64),
    })
    # No paused decodes here: every decode's gap is its iteration's duration.
    df["decode_gap_s"] = df["duration_s"]
    df["num_decode_continuing"] = df["num_decode_seqs"]
    df["swap_bytes"] = 0.0
    df["kv_tokens"] = df["kv_blocks_used"] * 16  # full blocks unless a test says otherwise
    df["kv_blocks_cached"] = 0
    df["iteration"] = df.groupby("replica").cumcount().astype(np.int64)
    return df


# ttft, e2e, tpot per request are written beside each row.
REQUESTS = [
    # r0: ttft 1.0, e2e 3.0, tpot (3-1)/4 = 0.5, queue 0.5
    (0, 0.0, 0.5, 1.0, 3.0, 10, 5, 5, 0, "finished", None),
    # r1: ttft 0.5, e2e 2.5, tpot (3.5-1.5)/2 = 1.0, queue 0
    (0, 1.0, 1.0, 1.5, 3.5, 20, 3, 3, 1, "finished", None),
    # r2: ttft 2.0, e2e 2.0, one output token: tpot NaN, queue 0.5
    (0, 2.0, 2.5, 4.0, 4.0, 30, 1, 1, 0, "finished", None),
    # r3: rejected before routing
    (-1, 3.0, NAN, NAN, NAN, 5000, 10, 0, 0, "rejected", "prompt too long"),
    # r4: in flight at the stop: ttft 0.5, no e2e/tpot
    (0, 4.0, 4.2, 4.5, NAN, 40, 100, 3, 0, "in_flight", None),
]

ITERATIONS = [
    # start, dur, prefill tok/seqs, decode, kv, preempted, flops/dev, hbm bytes/dev
    # mfu_i 0.5, mbu_i 0.2 -> 60 + 240*0.5 = 180 W for 1 s
    (0, 0.0, 1.0, 10, 1, 1, 4, 0, 5e13, 2e11),
    # mfu_i 1.0, mbu_i 0.5 -> 300 W for 2 s
    (0, 1.0, 2.0, 20, 1, 0, 8, 1, 2e14, 1e12),
    # mfu_i 0.1, mbu_i 0.8 -> 60 + 240*0.8 = 252 W for 3 s
    (0, 3.0, 3.0, 0, 0, 3, 10, 0, 3e13, 2.4e12),
]


def make_results(
    requests: list[tuple] = REQUESTS,
    iterations: list[tuple] = ITERATIONS,
    stalls: list[float] | None = None,
    **info: Any,
) -> Results:
    return Results(
        scenario=None,
        requests=make_requests(requests),
        iterations=make_iterations(iterations),
        info=make_info(**info),
        itl_extra_s=np.asarray(stalls or [], dtype=np.float64),
    )


# ---- derived request columns ----


def test_derived_request_columns():
    req = make_results().requests
    np.testing.assert_allclose(req["ttft_s"], [1.0, 0.5, 2.0, NAN, 0.5])
    np.testing.assert_allclose(req["e2e_s"], [3.0, 2.5, 2.0, NAN, NAN])
    np.testing.assert_allclose(req["tpot_s"], [0.5, 1.0, NAN, NAN, NAN])
    np.testing.assert_allclose(req["queue_s"], [0.5, 0.0, 0.5, NAN, 0.2], atol=1e-12)
    for column in ("ttft_s", "e2e_s", "tpot_s", "queue_s"):
        assert req[column].dtype == np.float64


def test_derived_columns_do_not_touch_the_engine_frame():
    frame = make_requests(REQUESTS)
    results = Results(None, frame, make_iterations(ITERATIONS), make_info(), np.array([]))
    assert "ttft_s" in results.requests.columns
    assert "ttft_s" not in frame.columns


# ---- summary: counts and latency ----


def test_counts_and_duration():
    s = make_results().summary()
    assert (s["num_requests"], s["num_finished"], s["num_rejected"], s["num_in_flight"]) == (
        5, 3, 1, 1)
    assert s["duration_s"] == 8.0  # end 8 − first arrival 0
    assert s.dtype == np.float64


def test_latency_means_and_linear_percentiles():
    s = make_results().summary()
    # TTFT over requests with a first token: [1, 0.5, 2, 0.5] -> sorted [0.5, 0.5, 1, 2]
    # linear: p50 at rank 1.5 -> 0.75; p90 at 2.7 -> 1 + 0.7 = 1.7; p99 at 2.97 -> 1.97
    assert s["ttft_mean_s"] == pytest.approx(1.0)
    assert s["ttft_p50_s"] == pytest.approx(0.75)
    assert s["ttft_p90_s"] == pytest.approx(1.7)
    assert s["ttft_p99_s"] == pytest.approx(1.97)
    # TPOT over finished with >= 2 tokens: [0.5, 1.0]
    assert s["tpot_mean_s"] == pytest.approx(0.75)
    assert s["tpot_p50_s"] == pytest.approx(0.75)
    assert s["tpot_p90_s"] == pytest.approx(0.95)
    assert s["tpot_p99_s"] == pytest.approx(0.995)
    # E2E over finished: [3, 2.5, 2] -> p50 2.5, p90 at rank 1.8 -> 2.9, p99 -> 2.99
    assert s["e2e_mean_s"] == pytest.approx(2.5)
    assert s["e2e_p50_s"] == pytest.approx(2.5)
    assert s["e2e_p90_s"] == pytest.approx(2.9)
    assert s["e2e_p99_s"] == pytest.approx(2.99)


def test_itl_weighted_by_decode_sequences():
    # durations [1, 2, 3] with decode seqs [1, 0, 3] -> samples {1, 3, 3, 3}
    s = make_results().summary()
    assert s["itl_mean_s"] == pytest.approx(2.5)
    assert s["itl_p50_s"] == 3.0  # inverted CDF: smallest x with F(x) >= 0.5; F(1) = 0.25
    assert s["itl_p90_s"] == 3.0
    assert s["itl_p99_s"] == 3.0


def test_itl_includes_preemption_stalls():
    # samples {1, 3, 3, 3, 10}: mean 4; p50 -> 3 (F(3) = 0.8); p90, p99 -> 10
    s = make_results(stalls=[10.0]).summary()
    assert s["itl_mean_s"] == pytest.approx(4.0)
    assert (s["itl_p50_s"], s["itl_p90_s"], s["itl_p99_s"]) == (3.0, 10.0, 10.0)


def test_weighted_percentiles_by_hand():
    values = np.array([3.0, 1.0, 2.0])
    weights = np.array([3, 1, 0])  # samples {1, 3, 3, 3}
    got = weighted_percentiles(values, weights, [0, 25, 26, 50, 100])
    np.testing.assert_array_equal(got, [1.0, 1.0, 3.0, 3.0, 3.0])
    assert np.isnan(weighted_percentiles(values, np.zeros(3, dtype=np.int64), [50])).all()


@given(
    st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=40
    ).filter(lambda pairs: any(w > 0 for _, w in pairs)),
    st.lists(st.floats(0, 100), min_size=1, max_size=5),
)
def test_weighted_percentiles_match_numpy_inverted_cdf_on_the_repetition(pairs, percents):
    values = np.array([v for v, _ in pairs])
    weights = np.array([w for _, w in pairs], dtype=np.int64)
    expected = np.percentile(np.repeat(values, weights), percents, method="inverted_cdf")
    np.testing.assert_array_equal(weighted_percentiles(values, weights, percents), expected)


# ---- throughput and SLO ----


def test_throughput_over_duration_of_finished_requests():
    s = make_results().summary()
    # finished: 3 requests, 60 prompt tokens, 9 generated tokens, over 8 s, 2 devices
    assert s["request_throughput_per_s"] == pytest.approx(3 / 8)
    assert s["input_tokens_per_s"] == pytest.approx(60 / 8)
    assert s["output_tokens_per_s"] == pytest.approx(9 / 8)
    assert s["total_tokens_per_s"] == pytest.approx(69 / 8)
    assert s["output_tokens_per_s_per_device"] == pytest.approx(9 / 16)
    assert s["total_tokens_per_s_per_device"] == pytest.approx(69 / 16)


@pytest.mark.parametrize(
    ("slo_ttft_s", "slo_tpot_s", "num_good"),
    [
        (1.0, 0.5, 1),  # r0 meets both exactly (boundary counts); r1 TPOT 1.0; r2 TTFT 2.0
        (2.0, 0.5, 2),  # r2 now meets TTFT at the boundary and has no TPOT
        (0.999, 0.5, 0),  # r0 misses TTFT just below its 1.0
        (None, 0.5, 2),  # no TTFT target: r0, r2
        (1.0, None, 2),  # no TPOT target: r0, r1
        (None, None, 3),  # every finished request
    ],
)
def test_goodput_and_slo_attainment(slo_ttft_s, slo_tpot_s, num_good):
    s = make_results(slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s).summary()
    assert s["goodput_requests_per_s"] == pytest.approx(num_good / 8)
    # denominator: 5 requests − 1 in flight; the rejected one is a failure
    assert s["slo_attainment_frac"] == pytest.approx(num_good / 4)


# ---- utilisation, energy, cost ----


def test_mfu_mbu_busy_and_kv_utilisation():
    s = make_results().summary()
    assert s["mfu_frac"] == pytest.approx((5e13 + 2e14 + 3e13) / (6.0 * 1e14))
    assert s["mbu_frac"] == pytest.approx((2e11 + 1e12 + 2.4e12) / (6.0 * 1e12))
    assert s["busy_frac"] == pytest.approx(6.0 / 8.0)
    assert s["kv_utilization_mean_frac"] == pytest.approx((4 * 1 + 8 * 2 + 10 * 3) / (6 * 20))
    assert s["kv_utilization_max_frac"] == pytest.approx(10 / 20)
    assert s["num_preemptions"] == 1.0


def test_energy_by_hand_with_idle_time():
    s = make_results().summary()
    busy_j = 180 * 1 + 300 * 2 + 252 * 3  # per device, see ITERATIONS
    idle_j = 60 * (8 - 6)
    assert s["energy_j"] == pytest.approx(2 * (busy_j + idle_j))  # 2 devices: 3312 J
    assert s["energy_per_output_token_j"] == pytest.approx(3312 / 9)


def test_energy_clips_load_and_counts_an_idle_replica():
    # flops above peak clip to TDP; replica 1 never runs and idles for the whole 8 s
    iterations = [(0, 0.0, 2.0, 10, 1, 0, 1, 0, 4e14, 0.0)]
    s = make_results(iterations=iterations, num_replicas=2, devices_per_replica=1).summary()
    assert s["energy_j"] == pytest.approx(300 * 2 + 60 * 6 + 60 * 8)
    assert s["busy_frac"] == pytest.approx(2.0 / (2 * 8.0))


def test_cost_by_hand():
    s = make_results().summary()
    cost = 2 * 1.0 * 8.0 / 3600  # devices × $/h × hours
    assert s["cost_usd"] == pytest.approx(cost)
    assert s["cost_per_million_output_tokens_usd"] == pytest.approx(cost / 9 * 1e6)
    assert s["cost_per_million_total_tokens_usd"] == pytest.approx(cost / 69 * 1e6)


# ---- empty and degenerate runs ----


def test_empty_results_give_nan_not_exceptions():
    s = make_results(requests=[], iterations=[], end_s=10.0).summary()
    assert s["num_requests"] == 0
    for name in ("ttft", "tpot", "itl", "e2e"):
        for stat in ("mean", "p50", "p90", "p99"):
            assert math.isnan(s[f"{name}_{stat}_s"]), name
    for metric in ("duration_s", "request_throughput_per_s", "mfu_frac", "mbu_frac",
                   "kv_utilization_mean_frac", "kv_utilization_max_frac",
                   "slo_attainment_frac", "cost_per_million_output_tokens_usd",
                   "energy_per_output_token_j"):
        assert math.isnan(s[metric]), metric
    assert s["energy_j"] == pytest.approx(60 * 10 * 2)  # idle the whole time
    assert s["cost_usd"] == pytest.approx(2 * 10 / 3600)


def test_nothing_finished_gives_nan_latency_and_zero_attainment():
    rejected = [r for r in REQUESTS if r[9] == "rejected"]
    s = make_results(requests=rejected).summary()
    assert math.isnan(s["e2e_p99_s"]) and math.isnan(s["tpot_mean_s"])
    assert s["slo_attainment_frac"] == 0.0
    assert s["request_throughput_per_s"] == 0.0


def test_summary_is_cached_and_returns_copies():
    results = make_results()
    first = results.summary()
    first["ttft_mean_s"] = -1.0
    assert results.summary()["ttft_mean_s"] == pytest.approx(1.0)
    assert results._summary is not None


@pytest.mark.slow
def test_summary_scales_to_a_million_requests():
    n, m = 1_000_000, 2_000_000
    rng = np.random.default_rng(0)
    arrival = np.sort(rng.uniform(0, 1000, n))
    req = pd.DataFrame({
        "request_id": np.arange(n), "replica": np.zeros(n, dtype=np.int64),
        "arrival_s": arrival, "first_scheduled_s": arrival + 0.1,
        "first_token_s": arrival + 0.2, "finish_s": arrival + 1.0,
        "prompt_tokens": np.full(n, 100), "output_tokens": np.full(n, 50),
        "generated_tokens": np.full(n, 50), "num_preemptions": np.zeros(n, dtype=np.int64),
        "recomputed_tokens": np.zeros(n, dtype=np.int64),
        "priority": np.zeros(n, dtype=np.int64), "ttft_slo_s": np.full(n, np.nan),
        "prefix_id": np.full(n, -1, dtype=np.int64),
        "prefix_hit_tokens": np.zeros(n, dtype=np.int64),
        "status": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), STATUSES),
        "reject_reason": pd.Series([None] * n, dtype=object),
    })
    it = make_iterations([])
    it = pd.DataFrame({c: np.zeros(m, dtype=it[c].dtype) for c in it.columns})
    it["duration_s"] = rng.uniform(0.01, 0.05, m)
    it["num_decode_seqs"] = rng.integers(0, 64, m)
    results = Results(None, req, it, make_info(end_s=1001.0), np.array([]))
    s = results.summary()
    assert s["e2e_p99_s"] == pytest.approx(1.0)
    assert s["tpot_mean_s"] == pytest.approx(0.8 / 49)


# ---- exports ----


def _normalised(df: pd.DataFrame) -> pd.DataFrame:
    """Strings read back as pandas' str dtype; compare them as objects with None."""
    df = df.copy()
    reason = df["reject_reason"].astype(object)
    df["reject_reason"] = reason.where(reason.notna(), None)
    return df


def test_parquet_round_trip(tmp_path):
    results = make_results()
    paths = results.to_parquet(tmp_path / "new" / "dir")
    assert [p.name for p in paths] == ["requests.parquet", "iterations.parquet"]
    requests = pd.read_parquet(paths[0])
    assert list(requests["status"].cat.categories) == STATUSES
    pd.testing.assert_frame_equal(_normalised(requests), _normalised(results.requests))
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), results.iterations)


def test_csv_round_trip(tmp_path):
    results = make_results()
    paths = results.to_csv(tmp_path / "csv")
    assert [p.name for p in paths] == ["requests.csv", "iterations.csv"]
    requests = pd.read_csv(paths[0])
    expected = results.requests.copy()
    expected["status"] = expected["status"].astype(str)
    pd.testing.assert_frame_equal(
        _normalised(requests), _normalised(expected), check_dtype=False
    )
    pd.testing.assert_frame_equal(pd.read_csv(paths[1]), results.iterations)


def test_summary_json(tmp_path):
    path = make_results(requests=[], iterations=[]).summary_to_json(tmp_path / "a" / "s.json")
    data = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert data["num_requests"] == 0
    assert data["ttft_p99_s"] is None


def _trace(path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    assert data["displayTimeUnit"] == "ms"
    return data["traceEvents"]


def test_chrome_trace_events(tmp_path):
    events = _trace(make_results().to_chrome_trace(tmp_path / "t" / "trace.json"))
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_phase.setdefault(event["ph"], []).append(event)
    assert by_phase["M"] == [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
                              "args": {"name": "replica 0"}}]
    complete = by_phase["X"]
    assert [e["name"] for e in complete] == ["prefill+decode", "prefill", "decode"]
    assert [(e["ts"], e["dur"]) for e in complete] == [(0.0, 1e6), (1e6, 2e6), (3e6, 3e6)]
    assert complete[2]["args"] == {"prefill_tokens": 0, "decode_seqs": 3, "kv_blocks_used": 10}
    counters = by_phase["C"]
    assert [e["args"] for e in counters if e["name"] == "kv_blocks_used"] == [
        {"blocks": 4}, {"blocks": 8}, {"blocks": 10}]
    assert [e["args"] for e in counters if e["name"] == "decode_seqs"] == [
        {"seqs": 1}, {"seqs": 0}, {"seqs": 3}]
    (preempt,) = by_phase["i"]
    assert (preempt["ts"], preempt["args"]) == (1e6, {"num_preempted": 1})


def test_chrome_trace_one_process_per_replica_and_counters_only_on_change(tmp_path):
    iterations = [
        (0, 0.0, 0.5, 0, 0, 2, 4, 0, 0.0, 0.0),
        (1, 0.0, 0.5, 8, 1, 0, 4, 0, 0.0, 0.0),
        (0, 0.5, 0.5, 0, 0, 2, 4, 0, 0.0, 0.0),
        (0, 1.0, 0.5, 0, 0, 2, 6, 0, 0.0, 0.0),
    ]
    results = make_results(iterations=iterations, num_replicas=3)
    events = _trace(results.to_chrome_trace(tmp_path / "trace.json"))
    names = [e["args"]["name"] for e in events if e["ph"] == "M"]
    assert names == ["replica 0", "replica 1", "replica 2"]
    assert sum(e["ph"] == "X" for e in events) == 4
    kv = [(e["pid"], e["args"]["blocks"]) for e in events if e["name"] == "kv_blocks_used"]
    assert sorted(kv) == [(0, 4), (0, 6), (1, 4)]
    decode = [e for e in events if e["name"] == "decode_seqs"]
    assert len(decode) == 2  # replica 0 stays at 2, replica 1 at 0


def test_chrome_trace_truncation_warns(tmp_path, caplog):
    iterations = [(0, float(t), 1.0, 0, 0, 1, 1, 0, 0.0, 0.0) for t in range(5)]
    results = make_results(iterations=iterations)
    with caplog.at_level(logging.WARNING, logger="simulator.results"):
        path = results.to_chrome_trace(tmp_path / "trace.json", max_iterations=3)
    complete = [e for e in _trace(path) if e["ph"] == "X"]
    assert [e["ts"] for e in complete] == [0.0, 1e6, 2e6]  # the earliest three
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "left out 2" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simulator.results"):
        path = results.to_chrome_trace(tmp_path / "all.json", max_iterations=None)
    assert sum(e["ph"] == "X" for e in _trace(path)) == 5
    assert not caplog.records


def test_save_writes_everything(tmp_path):
    paths = make_results().save(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted([
        "requests.parquet", "iterations.parquet", "requests.csv", "iterations.csv",
        "summary.json", "trace.json"])
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths)


def test_constructor_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_results()
    assert list(tmp_path.iterdir()) == []


def test_queueing_delay_starvation_and_recomputed_tokens():
    # queue_s = first scheduled - arrival: r0 0.5, r1 0, r2 0.5, r4 (in flight) 0.2;
    # r3 was rejected, never queued. Mean 0.3, max 0.5; r1's one preemption cost 7 tokens.
    s = make_results().summary()
    assert s["queue_mean_s"] == pytest.approx(0.3)
    assert s["queue_max_s"] == pytest.approx(0.5)
    assert s["recomputed_tokens"] == 7
    # A request still waiting at the stop counts with its wait so far (end_s - arrival).
    waiting = (0, 1.0, NAN, NAN, NAN, 40, 100, 0, 0, "in_flight", None)
    s = make_results([*REQUESTS, waiting], end_s=10.0).summary()
    assert s["queue_max_s"] == pytest.approx(9.0)


def test_per_request_ttft_targets_override_the_scenario_slo():
    # r1 (TTFT 0.5) gets its own target 0.4 and misses; r2 (TTFT 2.0) gets 3.0 and meets
    # it; r0 keeps the scenario's 1.0 and meets it. TPOT target off.
    results = make_results(slo_tpot_s=None)
    results.requests["ttft_slo_s"] = [np.nan, 0.4, 3.0, np.nan, np.nan]
    s = results.summary()
    assert s["goodput_requests_per_s"] == pytest.approx(2 / 8)


def test_prefix_hit_rate_and_tokens_saved():
    # Admitted requests r0, r1, r2, r4 have 10 + 20 + 30 + 40 = 100 prompt tokens; hits
    # 0 + 16 + 16 + 32 = 64 of them. The rejected request never queried the cache.
    results = make_results()
    results.requests["prefix_hit_tokens"] = [0, 16, 16, 0, 32]
    s = results.summary()
    assert s["prefix_hit_rate_frac"] == pytest.approx(64 / 100)
    assert s["prefill_tokens_saved"] == 64


def test_kv_fragmentation_is_the_time_weighted_unused_share_of_blocks_in_use():
    # Blocks of 16 tokens: 4 blocks hold 40 tokens for 1 s, 8 hold 128 (full) for 2 s,
    # 10 hold 100 for 3 s: unused token slots 24*1 + 0*2 + 60*3 over 64*1 + 128*2 + 160*3.
    results = make_results()
    results.iterations["kv_tokens"] = [40, 128, 100]
    s = results.summary()
    assert s["kv_fragmentation_frac"] == pytest.approx((24 + 180) / (64 + 256 + 480))
