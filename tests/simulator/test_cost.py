"""Cost model: published kernel measurements, closed forms, and agreement of fast paths."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_fast_paths_equal_price
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY
from hardware.roofline import all_reduce_s
from simulator.cost import BatchShape, CostModel
from simulator.model_catalog import get_model, list_models

H100 = get_accelerator("h100-sxm")


def cost_for(model: str, tp: int = 1, **kw) -> CostModel:
    return CostModel(get_model(model), H100, DEFAULT_EFFICIENCY, tensor_parallel=tp, **kw)


# Measured TensorRT-LLM kernels on an H100 SXM (shared/FACTS.md, from the kernel tables of
# NVIDIA aiconfigurator-core 0.12). The defaults must land within 15% of each.
def test_gemm_matches_measured_weight_streaming():
    c = cost_for("llama-3.1-8b")
    assert c._gemm(1, 4096, 4096, "bf16").seconds == pytest.approx(16e-6, rel=0.15)
    assert c._gemm(1, 8192, 65536, "bf16").seconds == pytest.approx(0.38e-3, rel=0.15)


def test_large_gemm_sits_at_measured_compute_efficiency():
    c = cost_for("llama-3.1-8b")
    op = c._gemm(8192, 4096, 14336, "bf16")
    efficiency = op.flops / 989.4e12 / op.seconds
    assert 0.73 <= efficiency <= 0.83  # measured bf16 range at M=8192


@pytest.mark.parametrize(
    ("batch", "kv_len", "measured_s"),
    [(1, 8192, 24e-6), (8, 8192, 106e-6), (64, 2048, 193e-6), (64, 8192, 715e-6),
     (256, 512, 191e-6)],
)
def test_decode_attention_matches_measured(batch, kv_len, measured_s):
    c = cost_for("llama-3.1-8b")  # 32 query / 8 KV heads, head dim 128: the measured shape
    per_layer = c._decode_attention(batch, batch * kv_len).seconds / 32
    assert per_layer == pytest.approx(measured_s, rel=0.15)


@pytest.mark.parametrize(("tokens", "measured_s"), [(2048, 125e-6), (8192, 1.08e-3),
                                                    (16384, 4.34e-3)])
def test_prefill_attention_matches_measured(tokens, measured_s):
    c = cost_for("llama-3.1-8b")
    per_layer = c._prefill_attention([tokens], [0]).seconds / 32
    assert per_layer == pytest.approx(measured_s, rel=0.15)


def test_small_all_reduce_costs_a_few_microseconds():
    for n, measured in [(2, 2.8e-6), (4, 3.1e-6), (8, 3.5e-6)]:
        t = all_reduce_s(8192, num_devices=n, link_bytes_per_s=450e9,
                         eff=DEFAULT_EFFICIENCY.collective)
        assert t == pytest.approx(measured, rel=0.25)
    big = all_reduce_s(512 * 2**20, num_devices=2, link_bytes_per_s=450e9,
                       eff=DEFAULT_EFFICIENCY.collective)
    assert big == pytest.approx(1.68e-3, rel=0.15)


def test_breakdown_adds_up_and_names_every_op():
    c = cost_for("llama-3.1-8b", iteration_overhead_s=1e-4)
    r = c.price(BatchShape((300, 50), (0, 200), num_decode_seqs=10, decode_context_tokens=5000))
    assert sum(float(op.seconds) for op in r.ops.values()) == pytest.approx(float(r.seconds))
    assert {"qkv_proj", "o_proj", "mlp", "attention_prefill", "attention_decode", "lm_head",
            "engine_overhead", "tp_all_reduce"} <= set(r.ops)


@settings(max_examples=60, deadline=None)
@given(
    prefills=st.lists(st.tuples(st.integers(1, 4000), st.integers(0, 8000)), max_size=6),
    num_decode=st.integers(0, 300),
    ctx_per_seq=st.integers(1, 5000),
    tp=st.sampled_from([1, 2, 4, 8]),
)
def test_fast_path_equals_breakdown(prefills, num_decode, ctx_per_seq, tp):
    if not prefills and num_decode == 0:
        num_decode = 1
    c = cost_for("llama-3.1-70b", tp=tp, iteration_overhead_s=3e-4)
    q = [p for p, _ in prefills]
    ctx = [x for _, x in prefills]
    decode_ctx = float(num_decode * ctx_per_seq)
    fast = c.iteration(q, ctx, num_decode, decode_ctx)
    full = c.price(BatchShape(q, ctx, num_decode, decode_ctx))
    assert fast == pytest.approx((float(full.seconds), float(full.flops), float(full.hbm_bytes)),
                                 rel=1e-12)


def test_decode_run_prices_each_iteration_like_a_single_one():
    c = cost_for("llama-3.1-8b", iteration_overhead_s=2e-4)
    contexts = np.array([1000.0, 1032.0, 1064.0])
    seconds, _flops, hbm = c.decode_run(32, contexts)
    for i, ctx in enumerate(contexts):
        single = c.price(BatchShape(num_decode_seqs=32, decode_context_tokens=float(ctx)))
        assert seconds[i] == pytest.approx(float(single.seconds), rel=1e-12)
        assert hbm[i] == pytest.approx(float(single.hbm_bytes), rel=1e-12)


def test_gqa_shrinks_kv_bytes():
    # KV bytes per token, bf16: layers x kv_heads x head_dim x (K, V) x 2 bytes.
    assert cost_for("llama-3.1-8b").kv_bytes_per_token == 32 * 8 * 128 * 2 * 2
    assert cost_for("llama-2-7b").kv_bytes_per_token == 32 * 32 * 128 * 2 * 2
    assert cost_for("llama-3.1-8b", kv_cache_dtype="fp8").kv_bytes_per_token == 32 * 8 * 128 * 2


def test_moe_reads_only_the_experts_its_tokens_activate():
    c = cost_for("mixtral-8x7b")
    m = c.model
    expert_bytes = m.expert_params * 2 * m.num_layers  # one expert, every layer, bf16
    one = c.price(BatchShape(num_decode_seqs=1, decode_context_tokens=100)).ops["moe"]
    many = c.price(BatchShape(num_decode_seqs=256, decode_context_tokens=25600)).ops["moe"]
    # One token reads its top-2 experts; 256 tokens touch all 8 (1 - (6/8)^256 ~ 1).
    assert one.hbm_bytes == pytest.approx(2 * expert_bytes, rel=0.01)
    assert many.hbm_bytes == pytest.approx(8 * expert_bytes, rel=0.03)  # + activations
    # Measured fused-MoE layer (shared/FACTS.md): 1 token 0.26 ms, 16 tokens 0.96 ms.
    per_layer_1 = one.seconds / m.num_layers
    assert per_layer_1 == pytest.approx(0.26e-3, rel=0.15)
    sixteen = c.price(BatchShape(num_decode_seqs=16, decode_context_tokens=1600)).ops["moe"]
    assert sixteen.seconds / m.num_layers == pytest.approx(0.96e-3, rel=0.15)


def test_tensor_parallel_splits_weights_and_adds_all_reduces():
    one, two = cost_for("llama-3.1-70b"), cost_for("llama-3.1-70b", tp=2)
    shape = BatchShape(num_decode_seqs=8, decode_context_tokens=8000)
    a, b = one.price(shape), two.price(shape)
    assert b.ops["mlp"].hbm_bytes == pytest.approx(a.ops["mlp"].hbm_bytes / 2, rel=0.01)
    assert float(a.ops["tp_all_reduce"].seconds) == 0.0
    assert float(b.ops["tp_all_reduce"].seconds) > 2 * 80 * 2e-6  # two per layer, 80 layers


def test_w8a8_uses_the_fp8_rate_and_halves_weight_bytes():
    bf16 = cost_for("llama-3.1-8b")
    fp8 = cost_for("llama-3.1-8b", weight_dtype="fp8", activation_dtype="fp8")
    assert fp8.compute_dtype == "fp8"
    big = BatchShape((8192,), (0,))
    fp8_s, bf16_s = fp8.price(big).ops["mlp"].seconds, bf16.price(big).ops["mlp"].seconds
    assert float(fp8_s) < 0.8 * float(bf16_s)
    small = BatchShape(num_decode_seqs=1, decode_context_tokens=10)
    ratio = fp8.price(small).ops["mlp"].hbm_bytes / bf16.price(small).ops["mlp"].hbm_bytes
    assert ratio == pytest.approx(0.5, rel=0.01)


def test_sliding_window_caps_prefill_attention():
    c = cost_for("mistral-7b")  # window 4096
    near = c._prefill_attention([512], [20_000])
    far = c._prefill_attention([512], [40_000])
    assert near.flops == far.flops and near.hbm_bytes == far.hbm_bytes


def test_batch1_decode_is_near_weight_bytes_over_bandwidth():
    c = cost_for("llama-3.1-8b")
    seconds = float(c.price(BatchShape(num_decode_seqs=1, decode_context_tokens=512)).seconds)
    weight_bytes = 8.03e9 * 2
    assert weight_bytes / (3.35e12 * 0.86) < seconds < 1.35 * weight_bytes / (3.35e12 * 0.86)


def test_per_sequence_attention_costs_and_elementwise_kernel_count():
    # An engine that loops over sequences (eager PyTorch) pays a fixed cost per sequence
    # and layer; one that does not fuse pays more elementwise floors. Both are profile
    # fields: 32 layers x 8 sequences x 5 us = 1.28 ms more for 8 decodes; 32 layers x 6
    # more kernels x 2 us = 0.384 ms more for any batch. Fast paths agree with price().
    eff = DEFAULT_EFFICIENCY.model_copy(update={
        "decode_attention": DEFAULT_EFFICIENCY.decode_attention.model_copy(
            update={"per_sequence_s": 5e-6}),
        "prefill_attention": DEFAULT_EFFICIENCY.prefill_attention.model_copy(
            update={"per_sequence_s": 7e-6}),
        "elementwise": DEFAULT_EFFICIENCY.elementwise.model_copy(
            update={"kernels_per_layer": 10}),
    })
    base = cost_for("llama-3.1-8b")
    looped = CostModel(get_model("llama-3.1-8b"), H100, eff)
    decode = BatchShape(num_decode_seqs=8, decode_context_tokens=8000.0)
    extra = float(looped.price(decode).seconds) - float(base.price(decode).seconds)
    assert extra == pytest.approx(32 * 8 * 5e-6 + 32 * 6 * 2e-6, rel=1e-9)
    prefill = BatchShape((100, 200, 300), (0, 0, 0))
    extra = float(looped.price(prefill).seconds) - float(base.price(prefill).seconds)
    assert extra == pytest.approx(32 * 3 * 7e-6 + 32 * 6 * 2e-6, rel=1e-9)
    seconds, _, _ = looped.decode_run(8, np.array([8000.0]))
    assert seconds[0] == pytest.approx(float(looped.price(decode).seconds), rel=1e-12)
    assert looped.iteration([100, 200, 300], [0, 0, 0], 0, 0.0)[0] == pytest.approx(
        float(looped.price(prefill).seconds), rel=1e-12)


def test_gemm_efficiency_may_ramp_with_rows_and_differ_for_matrix_vector():
    # CPU BLAS: compute efficiency compute_frac x M / (M + half_m), and M = 1 products run
    # as matrix-vector kernels with their own bandwidth share. Checked against the
    # roofline written out by hand for a 4096 x 4096 bf16 weight on the H100 figures.
    gemm = DEFAULT_EFFICIENCY.gemm["bf16"].model_copy(
        update={"half_m": 16.0, "gemv_memory_frac": 0.5})
    eff = DEFAULT_EFFICIENCY.model_copy(update={"gemm": {"bf16": gemm}})
    c = CostModel(get_model("llama-3.1-8b"), H100, eff)
    peak, bw = H100.peak_flops_per_s("bf16"), H100.hbm_bytes_per_s
    for m in (1, 2, 64, 4096):
        flops = 2.0 * m * 4096 * 4096
        hbm = (4096 * 4096 + 2 * m * 4096) * 2.0
        mf = 0.5 if m == 1 else gemm.memory_frac
        expected = gemm.floor_s + max(flops * (m + 16) / (peak * gemm.compute_frac * m),
                                      hbm / (bw * mf))
        assert float(c._gemm(m, 4096, 4096, "bf16").seconds) == pytest.approx(expected, rel=1e-12)


def test_small_m_factors_scale_gemms_by_rows_interpolating_between_measured_ones():
    # Measured multipliers at M = 1, 3, 4: M = 2 interpolates (1.1 + 1.3) / 2, M = 5 is
    # past the table and gets none.
    gemm = DEFAULT_EFFICIENCY.gemm["bf16"].model_copy(
        update={"small_m_factors": {1: 1.1, 3: 1.3, 4: 1.0}})
    eff = DEFAULT_EFFICIENCY.model_copy(update={"gemm": {"bf16": gemm}})
    plain, corrected = cost_for("llama-3.1-8b"), CostModel(get_model("llama-3.1-8b"), H100, eff)
    for m, factor in ((1, 1.1), (2, 1.2), (3, 1.3), (4, 1.0), (5, 1.0)):
        base = float(plain._gemm(m, 4096, 4096, "bf16").seconds)
        assert float(corrected._gemm(m, 4096, 4096, "bf16").seconds) == pytest.approx(base * factor)


@pytest.mark.parametrize("name", list_models())
def test_fast_paths_equal_breakdown_for_every_catalog_model_and_stage(name):
    # MLA, MoE layer patterns, recurrent and hybrid models (issue 8) take the same fast
    # paths: iteration() and decode_run() must price what price() does, whole model or a
    # pipeline stage (tests/simulator/test_model_families.py draws more shapes).
    layers = get_model(name).num_layers
    tp = 8 if name in ("deepseek-v3", "llama-3.1-405b", "qwen3-235b-a22b") else 2
    for layer_range in (None, (0, layers // 2), (layers // 2, layers)):
        c = cost_for(name, tp=tp, iteration_overhead_s=1e-4, layer_range=layer_range)
        assert_fast_paths_equal_price(c)
