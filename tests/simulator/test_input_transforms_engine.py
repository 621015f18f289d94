"""Input transforms through the engine: delays before the engine, and Skeleton-of-Thought's
point expansions waiting for their skeleton."""

from __future__ import annotations

import pytest
from conftest import scenario_with

from simulator import simulate


def _one(prompt: int, output: int, transforms: list[dict] | None = None) -> dict:
    workload = {"kind": "synthetic", "arrival": {"kind": "offline"},
                "prompt_tokens": {"kind": "fixed", "tokens": prompt},
                "output_tokens": {"kind": "fixed", "tokens": output}}
    return {**workload, "transforms": transforms} if transforms else workload


def test_compression_shortens_the_prefill_and_adds_its_own_time_to_ttft():
    compress = [{"kind": "prompt_compression", "ratio": 4, "compressor_s_per_token": 2e-5,
                 "compressor_fixed_s": 0.005}]
    squeezed = simulate(scenario_with(workload=_one(8000, 20, compress), num_requests=1))
    direct = simulate(scenario_with(workload=_one(2000, 20), num_requests=1))
    req = squeezed.requests.iloc[0]
    assert req["prompt_tokens"] == 2000
    assert req["preprocess_s"] == pytest.approx(0.005 + 8000 * 2e-5, abs=1e-9)
    # Latencies count from the client's send: the compressor's time, then the same
    # prefill as a 2000-token prompt sent directly.
    assert req["ttft_s"] == pytest.approx(req["preprocess_s"] + direct.requests["ttft_s"][0],
                                          abs=1e-8)


def test_retrieval_adds_context_and_its_latency():
    rag = [{"kind": "retrieval", "retrieved_tokens": {"kind": "fixed", "tokens": 3000},
            "latency_s": 0.05}]
    results = simulate(scenario_with(workload=_one(500, 20, rag), num_requests=1))
    direct = simulate(scenario_with(workload=_one(3500, 20), num_requests=1))
    req = results.requests.iloc[0]
    assert req["prompt_tokens"] == 3500
    assert req["ttft_s"] == pytest.approx(0.05 + direct.requests["ttft_s"][0], abs=1e-8)


def test_skeleton_of_thought_expands_points_after_the_skeleton_finishes():
    sot = [{"kind": "skeleton_of_thought", "num_points": 4, "skeleton_tokens": 40}]
    results = simulate(scenario_with(workload=_one(300, 400, sot), num_requests=3))
    req = results.requests
    assert len(req) == 3 * 5 and (req["status"] == "finished").all()
    for _, parts in req.groupby("group_id"):
        skeleton = parts.iloc[0]
        points = parts.iloc[1:]
        assert skeleton["output_tokens"] == 40 and len(points) == 4
        assert (points["output_tokens"] == 100).all()  # ceil(400 / 4)
        assert (points["first_scheduled_s"] >= skeleton["finish_s"]).all()
        assert (points["arrival_s"] == skeleton["arrival_s"]).all()  # the client's send
    # A client request is done when its last part is.
    summary = results.summary()
    ends = req.groupby("group_id")["finish_s"].max() - req.groupby("group_id")["arrival_s"].min()
    assert summary["client_e2e_p50_s"] == pytest.approx(ends.median())
    assert summary["client_e2e_mean_s"] > summary["e2e_mean_s"]  # skeletons end early
