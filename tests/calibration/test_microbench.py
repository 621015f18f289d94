"""Microbenchmarks: the timing harness and each suite on tiny shapes (seconds, CPU)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

torch = pytest.importorskip("torch")

from calibration import microbench as mb  # noqa: E402
from calibration.timing import (  # noqa: E402
    MAX_ROTATION_SETS,
    _parse_size,
    cache_bytes,
    rotated,
    rotation_count,
    time_op,
)
from hardware.profile import HostInfo, MeasuredPoint  # noqa: E402

SHAPE_KEYS = {
    "gemm": {"m", "k", "n"},
    "prefill_attention": {"seqs", "new_tokens", "cached_tokens", "heads", "kv_heads",
                          "head_dim"},
    "decode_attention": {"seqs", "context_tokens", "heads", "kv_heads", "head_dim"},
    "elementwise": {"elements", "tensors_read", "tensors_written"},
    "copy": {"bytes"},
}

TINY_MODE = mb.Mode(warmup=1, repeats=7, min_time_s=0.01, max_time_s=0.05, max_call_s=0.05,
                    max_tensor_bytes=64 * 2**20)


def tiny_bench(device: str = "cpu") -> mb.Bench:
    return mb.Bench(device, TINY_MODE)


def check_points(points: list[MeasuredPoint], op: str) -> None:
    assert points
    for p in points:
        MeasuredPoint.model_validate(p.model_dump())  # round-trips through the schema
        assert p.op == op
        assert set(p.shape) == SHAPE_KEYS[op]
        assert 0 < p.seconds_p10 <= p.seconds <= p.seconds_p90
        assert p.repeats >= 1


# ---- timing ----


def test_time_op_orders_percentiles_and_rotates_inputs() -> None:
    seen: list[int] = []
    t = time_op(lambda i: seen.append(i), [(0,), (1,), (2,)], device="cpu", warmup=2,
                repeats=5, min_time_s=0.0, max_time_s=0.5)
    assert 0 < t.p10_s <= t.median_s <= t.p90_s
    assert t.num_threads == torch.get_num_threads()
    assert len(seen) == t.repeats + 2  # warm-up calls, then the timed ones
    assert seen[:6] == [0, 1, 2, 0, 1, 2]


def test_time_op_stops_at_max_time() -> None:
    start = time.perf_counter()
    t = time_op(lambda: time.sleep(0.01), device="cpu", warmup=1, repeats=1000,
                min_time_s=0.0, max_time_s=0.1)
    assert time.perf_counter() - start < 1.0
    assert 1 <= t.repeats < 20
    assert 0.009 < t.median_s < 0.1


def test_rotation_outsizes_the_cache_within_caps() -> None:
    llc = cache_bytes("cpu")
    assert llc >= 2**20
    assert rotation_count(llc * 4, "cpu") == 1
    assert rotation_count(2**20, "cpu") * 2**20 >= min(2 * llc, MAX_ROTATION_SETS * 2**20)
    assert rotation_count(1, "cpu") == MAX_ROTATION_SETS
    x = torch.ones(2**16)
    sets = rotated((x, 3), "cpu")
    assert len(sets) == rotation_count(x.numel() * 4, "cpu")
    assert all(s[1] == 3 for s in sets)
    copies = [s[0] for s in sets if isinstance(s[0], torch.Tensor)]
    assert len({c.data_ptr() for c in copies}) == len(sets)  # distinct copies


def test_parse_size() -> None:
    assert _parse_size("32768K\n") == 32 * 2**20
    assert _parse_size("32 MiB (1 instance)") == 32 * 2**20
    assert _parse_size("n/a") is None


# ---- suites ----


def test_gemm_points_and_a_bigger_gemm_takes_longer() -> None:
    shapes = [mb.GemmShape(1, 256, 256), mb.GemmShape(512, 2048, 2048)]
    points = mb.gemm(tiny_bench(), ["float32"], shapes)
    check_points(points, "gemm")
    by_m = {p.shape["m"]: p for p in points}
    # 4 GFLOP against 130 kFLOP. Slowest-decile against fastest-decile times, so that a
    # busy host (pytest -n beside other work) slowing one sample cannot flip it, while a
    # benchmark that timed the wrong shape still fails.
    assert by_m[512].seconds_p90 > 10 * by_m[1].seconds_p10


def test_gemm_bfloat16_runs() -> None:
    points = mb.gemm(tiny_bench(), ["bfloat16"], [mb.GemmShape(4, 256, 512)])
    check_points(points, "gemm")
    assert points[0].dtype == "bfloat16"


def test_prefix_mask_matches_causal_attention_over_the_whole_sequence() -> None:
    cached, new = 5, 3
    q = torch.randn(1, 4, cached + new, 16)
    k = torch.randn(1, 4, cached + new, 16)
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True)
    mask = mb.prefix_causal_mask(new, cached, "cpu")
    tail = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, cached:], k, k, attn_mask=mask)
    assert torch.allclose(whole[:, :, cached:], tail, atol=1e-5)


def test_prefill_attention_points() -> None:
    shapes = [mb.PrefillShape(16, 0, 4, 2, 64), mb.PrefillShape(8, 24, 4, 2, 64)]
    points = mb.prefill_attention(tiny_bench(), ["float32"], shapes)
    check_points(points, "prefill_attention")
    assert {p.name for p in points} == {"sdpa_causal", "sdpa_prefix_masked"}
    assert all(p.shape["seqs"] == 1 for p in points)


def test_decode_attention_loop_and_padded() -> None:
    shapes = [mb.DecodeShape(1, 32, 4, 2, 64), mb.DecodeShape(8, 32, 4, 2, 64)]
    points = mb.decode_attention(tiny_bench(), ["float32"], shapes)
    check_points(points, "decode_attention")
    loop = {p.shape["seqs"]: p for p in points if p.name == "sdpa_decode_loop"}
    assert {p.name for p in points} == {"sdpa_decode_loop", "sdpa_decode_padded"}
    # Eight SDPA calls against one (deciles: robust to a busy host, as above).
    assert loop[8].seconds_p90 > 2 * loop[1].seconds_p10


def test_elementwise_points() -> None:
    points = mb.elementwise(tiny_bench(), ["float32"], [256, 4096])
    check_points(points, "elementwise")
    assert {p.name for p in points} == set(mb.ELEMENTWISE_OPS)
    for p in points:
        read, written, _ = mb.ELEMENTWISE_OPS[p.name]
        assert (p.shape["tensors_read"], p.shape["tensors_written"]) == (read, written)


@pytest.mark.parametrize("op", list(mb.ELEMENTWISE_OPS))
def test_elementwise_ops_keep_the_element_count(op: str) -> None:
    fn, inputs = mb._elementwise_op(op, 2**12, "float32", "cpu")
    out = fn(*inputs)
    assert isinstance(out, torch.Tensor)
    assert out.numel() == 2**12


def test_copy_bandwidth_is_sane() -> None:
    points = mb.copy(tiny_bench(), [2**24])
    check_points(points, "copy")
    bytes_per_s = points[0].shape["bytes"] / points[0].seconds
    assert 0.5e9 < bytes_per_s < 500e9


# ---- budget, slow dtypes, host ----


def test_spread_prefixes_cover_the_range() -> None:
    items = list(range(9))
    order = mb._spread(items)
    assert sorted(order) == items
    assert order[:3] == [0, 8, 4]


def test_a_slow_dtype_keeps_its_three_cheapest_shapes() -> None:
    bench = tiny_bench()
    bench.flops_per_s.update({"float32": 1e11, "bfloat16": 1e5})  # as if bf16 crawled
    shapes = [mb.GemmShape(m, 256, 256) for m in (1, 2, 4, 8, 64)]
    points = mb.gemm(bench, ["float32", "bfloat16"], shapes)
    assert sum(p.dtype == "float32" for p in points) == 5
    assert sorted(p.shape["m"] for p in points if p.dtype == "bfloat16") == [1, 2, 4]
    assert any("2 bfloat16 shapes skipped" in note for note in bench.notes)


def test_past_the_deadline_a_suite_measures_nothing_and_says_so() -> None:
    bench = tiny_bench()
    bench.deadline_s = time.perf_counter() - 1
    assert mb.gemm(bench, ["float32"], [mb.GemmShape(1, 256, 256)]) == []
    assert any("cut short by the time budget" in note for note in bench.notes)


@pytest.mark.slow
def test_quick_run_respects_its_time_budget() -> None:
    budget_s = 2.0
    calls: list[tuple[str, int, int]] = []
    start = time.perf_counter()
    report = mb.measure("cpu", quick=True, time_budget_s=budget_s,
                        progress=lambda *a: calls.append(a))
    wall_s = time.perf_counter() - start
    assert wall_s < 3 * budget_s
    assert report.points
    assert any("cut short" in note for note in report.notes)
    assert {suite for suite, _, _ in calls} == set(mb.SUITES)
    for suite in mb.SUITES:  # each suite reports its end
        assert any(s == suite and done == total for s, done, total in calls)


def test_measure_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown suites"):
        mb.measure("cpu", suites=["gemm", "allreduce"])
    with pytest.raises(ValueError, match="unknown torch dtype"):
        mb.measure("cpu", ["float33"], suites=[])


def test_device_info_fills_host_info() -> None:
    info = mb.device_info("cpu")
    host = HostInfo(**info, created=datetime.now(timezone.utc).isoformat(), quick=True)
    assert host.device_type == "cpu"
    assert host.num_threads == torch.get_num_threads()
    assert host.device_name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_suites_run() -> None:
    bench = tiny_bench("cuda")
    check_points(mb.gemm(bench, ["float16", "tfloat32"], [mb.GemmShape(64, 256, 256)]), "gemm")
    check_points(mb.decode_attention(bench, ["bfloat16"], [mb.DecodeShape(4, 64, 4, 2, 64)]),
                 "decode_attention")
    check_points(mb.copy(bench, [2**24]), "copy")
    assert mb.device_info("cuda")["device_type"] == "cuda"
