"""Precision and quantization as what-if knobs: weight-only int4/int8 with group scales,
W8A8, quantised KV caches and per-layer mixed precision (docs/optimizations.md).

Expected numbers come from the formats' layouts (AutoGPTQ/AutoAWQ tensors, LMDeploy's
int4 KV), the roofline written out by hand from the efficiency profile's inputs, or the
measurements in shared/FACTS.md; never from the code's own output."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_fast_paths_equal_price, scenario_with
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY, EfficiencyProfile, WeightOnlyGemmEfficiency
from hardware.spec import GIB
from simulator.cost import BatchShape, CostModel
from simulator.deployment import resolve
from simulator.engine import simulate
from simulator.errors import ScenarioError
from simulator.memory import weight_bytes_per_device
from simulator.model_catalog import get_model, list_models
from simulator.optimizations import LayerWeightDType
from simulator.precision import resolve_layer_weight_dtypes, weight_bytes_per_element

H100 = get_accelerator("h100-sxm")
A100 = get_accelerator("a100-80gb-sxm")
EFF = DEFAULT_EFFICIENCY
INT4_G128 = 0.5 + (2 + 0.5) / 128  # bytes per weight: nibble + fp16 scale + 4-bit zero / 128
LINEAR_OPS = ("qkv_proj", "o_proj", "mlp")


def cost_for(model: str = "llama-3.1-8b", accelerator=H100, eff: EfficiencyProfile = EFF,
             **kw) -> CostModel:
    return CostModel(get_model(model), accelerator, eff, **kw)


def linear_params(model: str) -> int:
    """Weights of the transformer's linear layers: everything but embeddings and norms."""
    m = get_model(model)
    return m.layer_params() - m.norm_params()


# ---- formats ----


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_group_bytes_match_the_gptq_awq_checkpoint_tensors(group):
    # AutoAWQ WQLinear_GEMM / AutoGPTQ QuantLinear for a K x N layer: qweight int32
    # (K, N/8), qzeros int32 (K/g, N/8), scales fp16 (K/g, N).
    k, n = 4096, 14336
    qweight = k * (n // 8) * 4
    qzeros = (k // group) * (n // 8) * 4
    scales = (k // group) * n * 2
    per_weight = (qweight + qzeros + scales) / (k * n)
    assert weight_bytes_per_element("int4", group) == pytest.approx(per_weight, rel=1e-12)


def test_group_scales_only_widen_quantised_formats():
    # int8 keeps an 8-bit zero point per group (GPTQ's qzeros at 8 bits); fp8 is
    # symmetric (scale only); 16-bit weights and per-channel scales add nothing.
    assert weight_bytes_per_element("int8", 128) == pytest.approx(1 + 3 / 128)
    assert weight_bytes_per_element("fp8", 128) == pytest.approx(1 + 2 / 128)
    assert weight_bytes_per_element("int4", None) == 0.5
    assert weight_bytes_per_element("bf16", 128) == 2.0


def test_int4_weights_shrink_memory_and_grow_the_kv_cache_by_what_they_free():
    # Linear weights at 4.16 bits, embedding and LM head still bf16 (as engines keep
    # them); the bytes freed go to KV, in whole blocks.
    m = get_model("llama-3.1-8b")
    bf16 = weight_bytes_per_device(m, cost_for())
    int4 = weight_bytes_per_device(m, cost_for(weight_dtype="int4", weight_group_size=128))
    freed = linear_params("llama-3.1-8b") * (2 - INT4_G128)
    assert bf16 - int4 == pytest.approx(freed, rel=1e-9)
    a = resolve(scenario_with(num_requests=1))
    b = resolve(scenario_with(deployment={"weight_dtype": "int4", "weight_group_size": 128},
                              num_requests=1))
    block_bytes = 32 * 8 * 128 * 2 * 2 * 16  # layers x kv heads x dim x (K, V) x bf16 x 16
    extra_blocks = b.memory.num_kv_blocks - a.memory.num_kv_blocks
    assert abs(extra_blocks - freed / block_bytes) <= 1


# ---- weight-only int4: memory-bound decode, compute-bound prefill ----


@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-3.1-70b"])
def test_int4_batch1_decode_saves_the_weight_bytes_of_the_gemms_only(model):
    # At M = 1 every GEMM streams its weights: the iteration gets shorter by exactly the
    # linear weights' bytes saved over the achieved bandwidth. Attention, the bf16 LM
    # head, norms and floors stay, so the iteration speeds up by less than the GEMMs do,
    # and the GEMMs (each with its kernel floor) by less than their byte ratio.
    bf16 = cost_for(model)
    int4 = cost_for(model, weight_dtype="int4", weight_group_size=128)
    shape = BatchShape(num_decode_seqs=1, decode_context_tokens=512)
    a, b = bf16.price(shape), int4.price(shape)
    saved = linear_params(model) * (2 - INT4_G128)
    bandwidth = H100.hbm_bytes_per_s * EFF.gemm["bf16"].memory_frac
    assert float(a.seconds - b.seconds) == pytest.approx(saved / bandwidth, rel=1e-9)
    gemm_a = sum(float(a.ops[op].seconds) for op in LINEAR_OPS)
    gemm_b = sum(float(b.ops[op].seconds) for op in LINEAR_OPS)
    floors = get_model(model).num_layers * 4 * EFF.gemm["bf16"].floor_s  # qkv, o, up, down
    weights = linear_params(model)
    assert gemm_a / gemm_b == pytest.approx(
        (weights * 2 / bandwidth + floors) / (weights * INT4_G128 / bandwidth + floors),
        rel=0.01)  # + activations read and written
    byte_ratio = 2 / INT4_G128
    assert 1 < float(a.seconds / b.seconds) < gemm_a / gemm_b < byte_ratio
    assert b.flops == a.flops  # the same useful work


def test_int4_large_prefill_stays_at_bf16_speed_plus_the_dequantisation():
    # 8192 tokens: every GEMM is compute-bound at the bf16 tensor-core rate, plus each
    # weight dequantised once per 64-row tile: 1 + 16 / (2 x 64) = 1.125 of the bf16
    # compute time (floors aside).
    bf16 = cost_for()
    int4 = cost_for(weight_dtype="int4", weight_group_size=128)
    shape = BatchShape((8192,), (0,))
    a, b = bf16.price(shape), int4.price(shape)
    w = EFF.weight_only
    overhead = 1 + w.dequant_flops_per_weight / (2 * w.tile_rows)
    floor = EFF.gemm["bf16"].floor_s * 32
    for op, gemms in (("qkv_proj", 1), ("o_proj", 1), ("mlp", 2)):
        ratio = (float(b.ops[op].seconds) - gemms * floor) / (float(a.ops[op].seconds)
                                                               - gemms * floor)
        assert ratio == pytest.approx(overhead, rel=1e-9)
    assert a.seconds < b.seconds < overhead * a.seconds
    # Without the dequantisation cost the prefill is exactly the bf16 one: weight bytes
    # do not matter where compute-bound.
    free = EFF.model_copy(update={"weight_only": WeightOnlyGemmEfficiency(
        dequant_flops_per_weight=0.0)})
    c = cost_for(eff=free, weight_dtype="int4", weight_group_size=128).price(shape)
    for op in LINEAR_OPS:
        assert float(c.ops[op].seconds) == pytest.approx(float(a.ops[op].seconds), rel=1e-12)


def test_dequantisation_is_paid_once_per_row_tile():
    # M = 65 rows take two 64-row tiles: twice M = 64's dequantisation work. Written out
    # from the roofline for a 4096 x 4096 int4 weight where compute-bound (prefill-like).
    c = cost_for(weight_dtype="int4")
    peak = H100.peak_flops_per_s("bf16") * EFF.gemm["bf16"].compute_frac
    k = n = 4096
    for m, tiles in ((64, 1), (65, 2), (640, 10), (641, 11)):
        compute_s = (2 * m * k * n + 16.0 * k * n * tiles) / peak
        memory_s = (k * n * 0.5 + (m * k + m * n) * 2) / (H100.hbm_bytes_per_s * 0.86)
        expected = EFF.gemm["bf16"].floor_s + max(compute_s, memory_s)
        assert float(c._gemm(m, k, n, "int4").seconds) == pytest.approx(expected, rel=1e-12)


# ---- W8A8 ----


def test_fp8_w8a8_at_batch_one_pays_activation_quantisation_as_measured():
    # shared/FACTS.md: fp8 GEMM efficiency at M = 1 is ~0.25 for a 4096 x 4096 weight
    # (activation quantisation), i.e. 16.8 MB / 3.35 TB/s / 0.25 = 20 us; bf16's 16 us.
    fp8 = cost_for(weight_dtype="fp8", activation_dtype="fp8")
    assert fp8.compute_dtype == "fp8"
    roofline_s = 4096 * 4096 * 1 / 3.35e12
    assert float(fp8._gemm(1, 4096, 4096, "fp8").seconds) == pytest.approx(
        roofline_s / 0.25, rel=0.15)


def test_int8_w8a8_runs_at_the_int8_rate_where_the_part_has_one():
    # SmoothQuant on an A100 (624 int8 TOP/s): a compute-bound MLP takes
    # (312 x 0.77) / (624 x 0.60) of the bf16 time (profile efficiencies), floors aside.
    bf16 = cost_for(accelerator=A100)
    int8 = cost_for(accelerator=A100, weight_dtype="int8", activation_dtype="int8")
    assert int8.compute_dtype == "int8"
    shape = BatchShape((8192,), (0,))
    a = float(bf16.price(shape).ops["mlp"].seconds) - 64 * EFF.gemm["bf16"].floor_s
    b = float(int8.price(shape).ops["mlp"].seconds) - 64 * EFF.gemm["int8"].floor_s
    expected = (312 * EFF.gemm["bf16"].compute_frac) / (624 * EFF.gemm["int8"].compute_frac)
    assert b / a == pytest.approx(expected, rel=1e-9)


def test_fp8_on_a_part_without_an_fp8_rate_runs_weight_only():
    # A100 has no fp8 tensor cores: fp8 weights are widened and computed in bf16 (vLLM's
    # FP8 Marlin): half the weight bytes at batch 1, bf16 speed plus dequantisation at
    # large M, and MFU measured against the bf16 peak.
    bf16 = cost_for(accelerator=A100)
    fp8 = cost_for(accelerator=A100, weight_dtype="fp8", activation_dtype="fp8")
    assert fp8.compute_dtype == "bf16"
    decode = BatchShape(num_decode_seqs=1, decode_context_tokens=512)
    saved = linear_params("llama-3.1-8b") * (2 - 1)
    bandwidth = A100.hbm_bytes_per_s * EFF.gemm["bf16"].memory_frac
    assert float(bf16.price(decode).seconds - fp8.price(decode).seconds) == pytest.approx(
        saved / bandwidth, rel=1e-9)
    prefill = BatchShape((8192,), (0,))
    floor = 64 * EFF.gemm["bf16"].floor_s
    ratio = (float(fp8.price(prefill).ops["mlp"].seconds) - floor) / (
        float(bf16.price(prefill).ops["mlp"].seconds) - floor)
    assert ratio == pytest.approx(1 + 16 / 128, rel=1e-9)


# ---- KV cache ----


def test_kv_bytes_per_token_by_format():
    # Llama-3.1-8B: 32 layers x 8 KV heads x (K, V) x 128 elements; int4 adds LMDeploy's
    # per-token, per-head fp16 scale and zero point (4 bytes) to each 64-byte vector.
    vectors = 32 * 8 * 2
    assert cost_for(kv_cache_dtype="bf16").kv_bytes_per_token == vectors * 256
    assert cost_for(kv_cache_dtype="fp8").kv_bytes_per_token == vectors * 128
    assert cost_for(kv_cache_dtype="int8").kv_bytes_per_token == vectors * 128
    assert cost_for(kv_cache_dtype="int4").kv_bytes_per_token == vectors * (64 + 4)
    # MLA keeps one latent of 576 elements per token and layer (DeepSeek-V3, 61 layers).
    assert cost_for("deepseek-v3", kv_cache_dtype="int4").kv_bytes_per_token == 61 * (288 + 4)


def test_quantised_kv_multiplies_the_blocks_of_the_same_deployment():
    plans = {
        kv: resolve(scenario_with(deployment={"kv_cache_dtype": kv}, num_requests=1)).memory
        for kv in ("bf16", "fp8", "int4")
    }
    b16, b8, b4 = (plans[k].num_kv_blocks for k in ("bf16", "fp8", "int4"))
    assert 2 * b16 <= b8 <= 2 * b16 + 1  # twice the blocks, up to block rounding
    p = plans["int4"]
    free = p.usable_bytes - p.weight_bytes - p.activation_bytes - p.reserved_bytes
    assert b4 == math.floor(free / (16 * 32 * 8 * 2 * 68))
    assert 3.7 < b4 / b16 < 3.8  # four times, less the scales (256 / 68 = 3.76)


def _offline(kv: str, num_requests: int, reserved_gib: float):
    # Offline batch of identical requests: each ends holding 768 tokens = 48 blocks.
    return scenario_with(
        deployment={"kv_cache_dtype": kv},
        engine={"runtime_reserved_gib": reserved_gib, "max_num_seqs": 64},
        workload={"kind": "synthetic", "arrival": {"kind": "offline"},
                  "prompt_tokens": {"kind": "fixed", "tokens": 256},
                  "output_tokens": {"kind": "fixed", "tokens": 512}},
        num_requests=num_requests)


def _preemptions(kv: str, num_requests: int, reserved_gib: float) -> int:
    return int(simulate(_offline(kv, num_requests, reserved_gib)).summary()["num_preemptions"])


def test_fp8_kv_raises_the_batch_at_which_preemptions_start():
    # Leave room for 1 GiB of bf16 KV (512 blocks of 2 MiB): 10 such requests fit at once
    # in bf16, 21 in fp8. Preemptions start when the batch's final KV exceeds the cache.
    base = resolve(_offline("bf16", 1, 0.0)).memory
    free = base.usable_bytes - base.weight_bytes - base.activation_bytes
    reserved_gib = (free - 512.5 * 2 * 2**20) / GIB
    blocks = {kv: resolve(_offline(kv, 1, reserved_gib)).memory.num_kv_blocks
              for kv in ("bf16", "fp8")}
    assert blocks == {"bf16": 512, "fp8": 1025}
    for kv, n in blocks.items():
        most = n // 48  # 10 and 21 requests
        assert _preemptions(kv, most, reserved_gib) == 0
        assert _preemptions(kv, most + 1, reserved_gib) > 0
    # The same load: bf16 preempts, fp8 does not.
    assert _preemptions("bf16", 16, reserved_gib) > 0 == _preemptions("fp8", 16, reserved_gib)


# ---- per-layer mixed precision ----


def test_layer_weight_dtypes_resolve_negative_indices_from_the_end():
    m = get_model("llama-3.1-8b")
    dtypes = resolve_layer_weight_dtypes(
        m, "int4", [LayerWeightDType(layers=(0, -1), weight_dtype="bf16")])
    assert dtypes == ("bf16",) + ("int4",) * 30 + ("bf16",)
    assert resolve_layer_weight_dtypes(m, "int4", []) is None


@pytest.mark.parametrize(("layers", "words"), [
    ((40,), ["deployment.layer_weight_dtypes[0].layers", "40", "num_layers=32"]),
    ((-33,), ["deployment.layer_weight_dtypes[0].layers", "-33", "num_layers=32"]),
])
def test_layer_indices_outside_the_model_are_refused_at_resolve_time(layers, words):
    s = scenario_with(deployment={"weight_dtype": "int4", "layer_weight_dtypes": [
        {"layers": list(layers), "weight_dtype": "bf16"}]}, num_requests=1)
    with pytest.raises(ScenarioError) as err:
        resolve(s)
    for word in words:
        assert word in str(err.value)


def test_a_layer_given_two_formats_is_refused():
    m = get_model("llama-3.1-8b")
    with pytest.raises(ScenarioError, match=r"layer_weight_dtypes\[1\].*layer -32"):
        resolve_layer_weight_dtypes(m, "int4", [
            LayerWeightDType(layers=(0,), weight_dtype="bf16"),
            LayerWeightDType(layers=(-32,), weight_dtype="int8")])


def test_mixed_precision_prices_and_stores_each_layer_in_its_own_format():
    # 2 bf16 layers + 30 int4 ones: Llama's layers are identical, so each linear op is
    # 2/32 of the all-bf16 one plus 30/32 of the all-int4 one, and so are the weights.
    per_layer = ("bf16",) + ("int4",) * 30 + ("bf16",)
    mixed = cost_for(weight_dtype="int4", weight_group_size=128, layer_weight_dtypes=per_layer)
    bf16 = cost_for(weight_group_size=128)
    int4 = cost_for(weight_dtype="int4", weight_group_size=128)
    for shape in (BatchShape(num_decode_seqs=8, decode_context_tokens=8000),
                  BatchShape((4096,), (0,))):
        m, a, b = mixed.price(shape), bf16.price(shape), int4.price(shape)
        for op in LINEAR_OPS:
            for part in ("seconds", "flops", "hbm_bytes"):
                expected = (2 * getattr(a.ops[op], part) + 30 * getattr(b.ops[op], part)) / 32
                assert float(getattr(m.ops[op], part)) == pytest.approx(float(expected),
                                                                        rel=1e-12)
    model = get_model("llama-3.1-8b")
    linear = linear_params("llama-3.1-8b")
    expected = (weight_bytes_per_device(model, bf16)
                - linear * 30 / 32 * (2 - INT4_G128))
    assert weight_bytes_per_device(model, mixed) == pytest.approx(expected, rel=1e-12)


def test_mixed_precision_layers_keep_their_own_compute_rate():
    # W8A8 fp8 with layer 0 in bf16: that layer computes at the bf16 rate, the others at
    # fp8; a large prefill's MLP time is the per-layer sum.
    per_layer = ("bf16",) + ("fp8",) * 31
    kw = {"activation_dtype": "fp8"}
    mixed = cost_for(weight_dtype="fp8", layer_weight_dtypes=per_layer, **kw)
    fp8 = cost_for(weight_dtype="fp8", **kw)
    bf16 = cost_for(weight_dtype="bf16", **kw)
    shape = BatchShape((8192,), (0,))
    expected = (float(bf16.price(shape).ops["mlp"].seconds)
                + 31 * float(fp8.price(shape).ops["mlp"].seconds)) / 32
    assert float(mixed.price(shape).ops["mlp"].seconds) == pytest.approx(expected, rel=1e-12)


def test_pipeline_stages_each_hold_their_own_layers_formats():
    # Stages [0, 16) and [16, 32) each hold one bf16 layer; their weights and their linear
    # costs add up to the whole model's.
    per_layer = ("bf16",) + ("int4",) * 30 + ("bf16",)
    kw = {"weight_dtype": "int4", "weight_group_size": 128, "layer_weight_dtypes": per_layer}
    model = get_model("llama-3.1-8b")
    whole = cost_for(**kw)
    stages = [cost_for(layer_range=r, **kw) for r in ((0, 16), (16, 32))]
    assert [s.layers_by_weight_dtype[0][0] for s in stages] == ["bf16", "int4"]
    assert sum(weight_bytes_per_device(model, s) for s in stages) == pytest.approx(
        weight_bytes_per_device(model, whole), rel=1e-12)
    shape = BatchShape(num_decode_seqs=4, decode_context_tokens=4000)
    for op in LINEAR_OPS:
        total = sum(float(s.price(shape).ops[op].seconds) for s in stages)
        assert total == pytest.approx(float(whole.price(shape).ops[op].seconds), rel=1e-12)


def test_cost_model_refuses_a_per_layer_list_of_the_wrong_length():
    with pytest.raises(ValueError, match="num_layers=32"):
        cost_for(layer_weight_dtypes=("int4",) * 31)


@pytest.mark.parametrize("name", list_models())
def test_fast_paths_equal_breakdown_with_quantisation_and_mixed_layers(name):
    # iteration() and decode_run() price what price() does with int4 group-quantised
    # weights, the first and last layers in bf16, an fp8 KV cache, whole model or stage.
    m = get_model(name)
    layers = m.num_layers
    per_layer = resolve_layer_weight_dtypes(
        m, "int4", [LayerWeightDType(layers=(0, -1), weight_dtype="bf16")])
    tp = 8 if name in ("deepseek-v3", "llama-3.1-405b", "qwen3-235b-a22b") else 2
    for layer_range in (None, (0, layers // 2), (layers // 2, layers)):
        c = cost_for(name, tensor_parallel=tp, iteration_overhead_s=1e-4,
                     layer_range=layer_range, weight_dtype="int4", weight_group_size=128,
                     layer_weight_dtypes=per_layer, kv_cache_dtype="fp8")
        assert_fast_paths_equal_price(c)


@settings(max_examples=40, deadline=None)
@given(
    formats=st.lists(st.sampled_from(["bf16", "fp8", "int8", "int4"]), min_size=32,
                     max_size=32),
    activation=st.sampled_from(["bf16", "fp8"]),
    group=st.sampled_from([None, 32, 128]),
    prefills=st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 6000)), max_size=4),
    num_decode=st.integers(0, 200),
    stage=st.sampled_from([None, (0, 11), (11, 32)]),
    accelerator=st.sampled_from([H100, A100]),
)
def test_fast_paths_equal_breakdown_for_any_per_layer_formats(formats, activation, group,
                                                              prefills, num_decode, stage,
                                                              accelerator):
    if not prefills and num_decode == 0:
        num_decode = 1
    weight = "fp8" if activation == "fp8" else "int4"
    c = cost_for(accelerator=accelerator, tensor_parallel=2, iteration_overhead_s=2e-4,
                 weight_dtype=weight, activation_dtype=activation, weight_group_size=group,
                 layer_weight_dtypes=tuple(formats), layer_range=stage, kv_cache_dtype="int4")
    q, ctx = [p for p, _ in prefills], [x for _, x in prefills]
    decode_ctx = float(num_decode * 1500)
    fast = c.iteration(q, ctx, num_decode, decode_ctx)
    full = c.price(BatchShape(q, ctx, num_decode, decode_ctx))
    assert fast == pytest.approx((float(full.seconds), float(full.flops), float(full.hbm_bytes)),
                                 rel=1e-12)
    if num_decode:
        seconds, _, hbm = c.decode_run(num_decode, np.array([decode_ctx]))
        single = c.price(BatchShape(num_decode_seqs=num_decode, decode_context_tokens=decode_ctx))
        assert seconds[0] == pytest.approx(float(single.seconds), rel=1e-12)
        assert hbm[0] == pytest.approx(float(single.hbm_bytes), rel=1e-12)


def test_an_efficiency_profile_without_the_weight_only_entry_still_loads():
    # Calibration profiles written before the field existed keep working, at the defaults.
    data = EFF.model_dump()
    del data["weight_only"]
    assert EfficiencyProfile.model_validate(data).weight_only == WeightOnlyGemmEfficiency()
