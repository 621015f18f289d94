"""open_loop_requests: bounds, reproducibility, independent streams, traces, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
