"""open_loop_requests: bounds, reproducibility, independent streams, traces, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import simulate
from simulator.conformance import tiny_scenario
from workloads.config import (
    ClosedLoopArrivals,
    ConstantArrivals,
    FixedLength,
    GammaArrivals,
    LogNormalLength,
    OfflineArrivals,
    PoissonArrivals,
    SyntheticWorkload,
    TraceWorkload,
    UniformLength,
    ZipfLength,
)
from workloads.generate import RequestArrays, open_loop_requests


def synthetic(**changes: object) -> SyntheticWorkload:
    base: dict[str, object] = {
        "arrival": PoissonArrivals(rate_per_s=10.0),
        "prompt_tokens": LogNormalLength(median_tokens=500, sigma=1.0, max_tokens=8192),
        "output_tokens": UniformLength(min_tokens=1, max_tokens=1000),
    }
    return SyntheticWorkload.model_validate({**base, **changes})


def generate(
    workload: SyntheticWorkload | TraceWorkload,
    seed: int = 0,
    num_requests: int | None = None,
    duration_s: float | None = None,
) -> RequestArrays:
    return open_loop_requests(
        workload,
        num_requests=num_requests,
        duration_s=duration_s,
        rng=np.random.default_rng(seed),
    )


def assert_same(a: RequestArrays, b: RequestArrays) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x is None and y is None) or np.array_equal(x, y)


def test_shapes_and_dtypes() -> None:
    r = generate(synthetic(), num_requests=1000)
    assert isinstance(r, RequestArrays)
    assert r.arrival_s.dtype == np.float64
    assert r.prompt_tokens.dtype == np.int64 and r.output_tokens.dtype == np.int64
    assert len(r.arrival_s) == len(r.prompt_tokens) == len(r.output_tokens) == 1000
    assert r.arrival_s[0] > 0 and (np.diff(r.arrival_s) >= 0).all()


def test_same_seed_identical_other_seed_different() -> None:
    assert_same(
        generate(synthetic(), 1, num_requests=500), generate(synthetic(), 1, num_requests=500)
    )
    a, b = generate(synthetic(), 1, num_requests=500), generate(synthetic(), 2, num_requests=500)
    assert not np.array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.output_tokens, b.output_tokens)


def test_changing_a_length_distribution_leaves_the_other_streams_alone() -> None:
    base = generate(synthetic(), 5, num_requests=2000)
    new_output = generate(
        synthetic(output_tokens=ZipfLength(exponent=1.2, max_tokens=4096)), 5, num_requests=2000
    )
    assert np.array_equal(base.arrival_s, new_output.arrival_s)
    assert np.array_equal(base.prompt_tokens, new_output.prompt_tokens)
    assert not np.array_equal(base.output_tokens, new_output.output_tokens)
    new_prompt = generate(synthetic(prompt_tokens=FixedLength(tokens=64)), 5, num_requests=2000)
    assert np.array_equal(base.arrival_s, new_prompt.arrival_s)
    assert np.array_equal(base.output_tokens, new_prompt.output_tokens)


def test_changing_the_arrival_process_leaves_lengths_alone() -> None:
    a = generate(synthetic(), 5, num_requests=300)
    b = generate(synthetic(arrival=GammaArrivals(rate_per_s=3, cv=4)), 5, num_requests=300)
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert np.array_equal(a.output_tokens, b.output_tokens)


def test_duration_truncation_and_longer_runs_extend_shorter_ones() -> None:
    short = generate(synthetic(), 9, duration_s=30.0)
    long = generate(synthetic(), 9, duration_s=300.0)
    n = len(short.arrival_s)
    assert (short.arrival_s < 30.0).all() and long.arrival_s[n] >= 30.0
    assert n == pytest.approx(300, abs=5 * np.sqrt(300))
    for s, lg in zip(short, long, strict=True):
        assert (s is None and lg is None) or np.array_equal(s, lg[:n])
    by_count = generate(synthetic(), 9, num_requests=n)
    assert_same(short, by_count)


def test_both_bounds_apply() -> None:
    assert len(generate(synthetic(), num_requests=10, duration_s=1000.0).arrival_s) == 10
    few = generate(synthetic(), num_requests=10_000, duration_s=2.0)
    assert 0 < len(few.arrival_s) < 100 and (few.arrival_s < 2.0).all()


def test_constant_and_offline() -> None:
    r = generate(synthetic(arrival=ConstantArrivals(rate_per_s=4)), duration_s=10.0)
    assert np.array_equal(r.arrival_s, np.arange(1, 40) / 4.0)
    r = generate(synthetic(arrival=OfflineArrivals()), num_requests=50)
    assert (r.arrival_s == 0).all() and len(r.prompt_tokens) == 50
    with pytest.raises(ValueError, match="num_requests"):
        generate(synthetic(arrival=OfflineArrivals()), duration_s=10.0)


def test_zero_requests() -> None:
    r = generate(synthetic(), num_requests=0)
    assert all(len(column) == 0 for column in r[:3])
    assert all(column is None for column in r[3:])


def test_a_bound_is_required_for_synthetic() -> None:
    with pytest.raises(ValueError, match="num_requests, duration_s or both"):
        generate(synthetic())


def test_closed_loop_is_the_engines_job() -> None:
    with pytest.raises(TypeError, match="closed-loop"):
        generate(synthetic(arrival=ClosedLoopArrivals(concurrency=4)), num_requests=10)


def test_trace_whole_or_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n100,1,2\n101,3,4\n101.5,5,6\n103,7,8\n")
    trace = TraceWorkload(path=path)
    whole = generate(trace)
    assert np.array_equal(whole.arrival_s, [0.0, 1.0, 1.5, 3.0])
    assert np.array_equal(whole.prompt_tokens, [1, 3, 5, 7])
    assert np.array_equal(generate(trace, duration_s=1.5).output_tokens, [2, 4])
    assert np.array_equal(generate(trace, num_requests=3).output_tokens, [2, 4, 6])
    assert np.array_equal(generate(trace, num_requests=3, duration_s=1.0).output_tokens, [2])
    assert_same(generate(trace, seed=1), generate(trace, seed=2))  # traces use no randomness


def test_a_million_requests_is_fast() -> None:
    workload = synthetic(output_tokens=ZipfLength(exponent=1.1, max_tokens=32_768))
    generate(workload, num_requests=1000)  # warm imports and the Zipf table
    start = time.perf_counter()
    r = generate(workload, num_requests=1_000_000)
    elapsed_s = time.perf_counter() - start
    assert len(r.arrival_s) == 1_000_000
    assert elapsed_s < 3.0  # typically ~0.2 s; a Python loop per request would take far longer


length_dists = st.sampled_from(
    [
        FixedLength(tokens=3),
        UniformLength(min_tokens=2, max_tokens=9),
        LogNormalLength(median_tokens=100, sigma=2, max_tokens=1000),
        ZipfLength(exponent=1.7, min_tokens=4, max_tokens=40),
    ]
)
arrivals = st.one_of(
    st.builds(PoissonArrivals, rate_per_s=st.floats(0.01, 1000)),
    st.builds(GammaArrivals, rate_per_s=st.floats(0.01, 1000), cv=st.floats(0.1, 8)),
    st.builds(ConstantArrivals, rate_per_s=st.floats(0.01, 1000)),
)


@settings(max_examples=80, deadline=None)
@given(
    arrival=arrivals,
    prompt=length_dists,
    output=length_dists,
    seed=st.integers(0, 2**32 - 1),
    num_requests=st.none() | st.integers(0, 3000),
    duration_s=st.none() | st.floats(0.001, 100),
)
def test_requests_satisfy_the_contract(
    arrival: PoissonArrivals | GammaArrivals | ConstantArrivals,
    prompt: FixedLength | UniformLength | LogNormalLength | ZipfLength,
    output: FixedLength | UniformLength | LogNormalLength | ZipfLength,
    seed: int,
    num_requests: int | None,
    duration_s: float | None,
) -> None:
    if num_requests is None and duration_s is None:
        num_requests = 100
    workload = SyntheticWorkload(arrival=arrival, prompt_tokens=prompt, output_tokens=output)
    r = generate(workload, seed, num_requests=num_requests, duration_s=duration_s)
    n = len(r.arrival_s)
    assert len(r.prompt_tokens) == len(r.output_tokens) == n
    if num_requests is not None:
        assert n <= num_requests
    if duration_s is not None:
        assert (r.arrival_s < duration_s).all()
    assert (r.arrival_s >= 0).all() and (np.diff(r.arrival_s) >= 0).all()
    assert (r.prompt_tokens >= 1).all() and (r.output_tokens >= 1).all()


# ---------------------------------------------------------------- classes and shared prefixes

TWO_CLASSES = [
    {"weight": 1.0, "priority": 0, "ttft_slo_s": 0.5},
    {"weight": 3.0, "priority": 5},
]


def test_without_classes_or_prefixes_the_streams_are_the_first_three_children() -> None:
    # The layout before classes existed, rebuilt by hand: arrivals, prompts and outputs
    # come from the first three children spawned from the workload generator. Results of
    # existing scenarios therefore cannot have moved.
    workload = synthetic()
    r = generate(workload, 4, num_requests=500)
    arrival_rng, prompt_rng, output_rng = np.random.default_rng(4).spawn(3)
    gaps = workload.arrival.inter_arrivals(arrival_rng, 500)  # type: ignore[union-attr]
    assert np.array_equal(r.arrival_s, np.cumsum(gaps))
    assert np.array_equal(r.prompt_tokens, workload.prompt_tokens.sample(prompt_rng, 500))
    assert np.array_equal(r.output_tokens, workload.output_tokens.sample(output_rng, 500))
    assert r.priority is None and r.ttft_slo_s is None
    assert r.prefix_id is None and r.prefix_tokens is None


def test_classes_without_lengths_leave_the_other_streams_alone() -> None:
    base = generate(synthetic(), 3, num_requests=2000)
    with_classes = generate(synthetic(classes=TWO_CLASSES), 3, num_requests=2000)
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(base, column), getattr(with_classes, column))
    assert with_classes.prefix_id is None


def test_classes_are_drawn_in_proportion_to_their_weights() -> None:
    # Weights 1:3, so a quarter of the requests are class 0; with 40,000 draws the
    # standard error of the share is 0.002, and 0.01 is five of them.
    r = generate(synthetic(classes=TWO_CLASSES), 8, num_requests=40_000)
    assert r.priority is not None and r.ttft_slo_s is not None
    high = r.priority == 0
    assert set(np.unique(r.priority).tolist()) == {0, 5}
    assert high.mean() == pytest.approx(0.25, abs=0.01)
    # The TTFT target travels with the class; NaN means "the scenario's".
    assert (r.ttft_slo_s[high] == 0.5).all() and np.isnan(r.ttft_slo_s[~high]).all()


def test_a_class_with_its_own_lengths_overrides_only_its_requests() -> None:
    classes = [
        {"weight": 1.0},
        {"weight": 1.0, "priority": 1, "prompt_tokens": {"kind": "fixed", "tokens": 7},
         "output_tokens": {"kind": "uniform", "min_tokens": 5000, "max_tokens": 6000}},
    ]
    base = generate(synthetic(), 2, num_requests=3000)
    r = generate(synthetic(classes=classes), 2, num_requests=3000)
    assert r.priority is not None
    own = r.priority == 1
    assert 0.45 < own.mean() < 0.55
    assert (r.prompt_tokens[own] == 7).all()
    assert ((r.output_tokens[own] >= 5000) & (r.output_tokens[own] <= 6000)).all()
    assert np.array_equal(r.prompt_tokens[~own], base.prompt_tokens[~own])
    assert np.array_equal(r.output_tokens[~own], base.output_tokens[~own])


def test_shared_prefixes_are_prepended_and_fixed_per_prefix() -> None:
    shared = {"num_prefixes": 4, "request_frac": 0.6,
              "tokens": {"kind": "uniform", "min_tokens": 100, "max_tokens": 900}}
    base = generate(synthetic(), 6, num_requests=20_000)
    r = generate(synthetic(shared_prefix=shared), 6, num_requests=20_000)
    assert r.prefix_id is not None and r.prefix_tokens is not None
    carries = r.prefix_id >= 0
    assert carries.mean() == pytest.approx(0.6, abs=0.02)  # standard error ~0.0035
    assert set(np.unique(r.prefix_id[carries]).tolist()) == {0, 1, 2, 3}
    counts = np.bincount(r.prefix_id[carries], minlength=4) / carries.sum()
    assert np.allclose(counts, 0.25, atol=0.02)  # uniform choice among prefixes
    assert (r.prefix_tokens[~carries] == 0).all()
    lengths = {k: set(r.prefix_tokens[r.prefix_id == k].tolist()) for k in range(4)}
    assert all(len(v) == 1 and 100 <= min(v) <= 900 for v in lengths.values())
    # prompt = prefix + the user part the workload samples (unchanged by the prefix)
    assert np.array_equal(r.prompt_tokens, base.prompt_tokens + r.prefix_tokens)
    assert np.array_equal(r.arrival_s, base.arrival_s)
    assert np.array_equal(r.output_tokens, base.output_tokens)


def test_a_fixed_prefix_length_may_be_a_number() -> None:
    r = generate(synthetic(shared_prefix={"num_prefixes": 1, "tokens": 64}), num_requests=50)
    assert r.prefix_id is not None and r.prefix_tokens is not None
    assert (r.prefix_id == 0).all() and (r.prefix_tokens == 64).all()


def test_longer_runs_extend_shorter_ones_with_classes_and_prefixes() -> None:
    workload = synthetic(
        classes=[*TWO_CLASSES, {"weight": 2.0, "output_tokens": {"kind": "fixed", "tokens": 3}}],
        shared_prefix={"num_prefixes": 3, "tokens": {"kind": "uniform", "max_tokens": 50},
                       "request_frac": 0.5},
    )
    short = generate(workload, 1, num_requests=300)
    long = generate(workload, 1, num_requests=3000)
    for s, lg in zip(short, long, strict=True):
        assert (s is None and lg is None) or np.array_equal(s, lg[:300], equal_nan=True)


@pytest.mark.parametrize("extra", [{"classes": TWO_CLASSES},
                                   {"shared_prefix": {"num_prefixes": 2, "tokens": 10}}])
def test_classes_and_prefixes_are_refused_with_a_closed_loop(extra: dict[str, object]) -> None:
    # The closed loop lives in the engine and draws plain requests: refuse, don't ignore.
    with pytest.raises(ValueError, match="closed_loop"):
        synthetic(arrival=ClosedLoopArrivals(concurrency=4), **extra)


def test_classes_reach_the_results_frame() -> None:
    results = simulate(tiny_scenario(workload={
        "kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 50.0},
        "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 100},
        "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 50},
        "classes": TWO_CLASSES, "shared_prefix": {"num_prefixes": 2, "tokens": 32}},
        stop={"num_requests": 100}))
    frame = results.requests
    assert set(frame.priority.unique()) == {0, 5}
    assert (frame.ttft_slo_s[frame.priority == 0] == 0.5).all()
    assert set(frame.prefix_id.unique()) == {0, 1}
