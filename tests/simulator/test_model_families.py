"""Issue-8 model families in the cost model and the memory plan: multi-head latent attention
(DeepSeek), MoE layer patterns, state-space / RWKV / linear-attention layers and hybrids of
them with attention, and pipeline stages (``CostModel.layer_range``).

Expected numbers are closed forms from the architectures (widths in the configs), or
relations that must hold whatever the efficiencies: costs that add up over stages, decode
costs that do not depend on the context, fast paths equal to the breakdown.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY
from simulator.conformance import TINY_DEVICE
from simulator.cost import BatchShape, CostModel
from simulator.engine import simulate
from simulator.errors import ScenarioError
from simulator.memory import plan_memory, weight_bytes_per_device
from simulator.model import ModelSpec
from simulator.model_catalog import get_model, list_models
from simulator.scenario import Scenario

H100 = get_accelerator("h100-sxm")
GIB = 2**30


def cost_for(model: str | ModelSpec, tp: int = 1, **kw: Any) -> CostModel:
    spec = get_model(model) if isinstance(model, str) else model
    return CostModel(spec, H100, DEFAULT_EFFICIENCY, tensor_parallel=tp, **kw)


def as_transformer(spec: ModelSpec) -> ModelSpec:
    """The same model with every layer attention: the 'equivalent transformer'."""
    fields = spec.model_dump() | {"recurrent": None, "layer_types": None,
                                  "attn_layer_period": None, "attn_layer_offset": 0}
    return ModelSpec(**fields)


def decode(n: int, ctx_per_seq: float) -> BatchShape:
    return BatchShape(num_decode_seqs=n, decode_context_tokens=n * ctx_per_seq)


# ---- multi-head latent attention ----


def test_deepseek_v3_kv_cache_is_one_latent_per_layer_whatever_the_tp() -> None:
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes (bf16). Every
    # tensor-parallel device keeps the whole latent (vLLM does: hence DP attention).
    for tp in (1, 2, 8):
        assert cost_for("deepseek-v3", tp).kv_bytes_per_token == 61 * 576 * 2
    assert cost_for("deepseek-v3", 8, kv_cache_dtype="fp8").kv_bytes_per_token == 61 * 576


def test_mla_decode_reads_the_latent_once_for_all_its_heads() -> None:
    # Absorbed decode: each cached token's latent (576 x 2 bytes) is read once per layer,
    # and each of the device's 128/t query heads attends over it: QK over 512 + 64, PV over
    # 512, so 2 x 1088 FLOPs per head and key.
    for tp in (1, 8):
        c = cost_for("deepseek-v3", tp)
        a = c.price(decode(4, 1000)).ops["attention_decode"]
        b = c.price(decode(4, 2000)).ops["attention_decode"]
        keys = 4 * 1000 * 61
        assert (b.hbm_bytes - a.hbm_bytes) / keys == pytest.approx(576 * 2)
        assert (b.flops - a.flops) / keys == pytest.approx(2 * (128 // tp) * (576 + 512))


def test_mla_prefill_is_multi_head_attention_over_expanded_keys_and_values() -> None:
    # Prefill runs 128/8 = 16 heads per device with q/k width 128 + 64 = 192 and v width
    # 128: 2 x (192 + 128) FLOPs per head per (query, key) pair, (n + 1)/2 keys per query
    # under the causal mask. A chunk after cached tokens first expands their latents to K
    # and V again: kv_b_proj, 2 x 512 x 16 x (128 + 128) FLOPs per cached token.
    c = cost_for("deepseek-v3", 8)
    pair = 2 * (192 + 128) * 16
    assert c._prefill_attention([1000], [0]).flops == pytest.approx(61 * pair * 1000 * 500.5)
    expand = 2 * 512 * 16 * (128 + 128)
    after = c._prefill_attention([1000], [3000]).flops
    assert after == pytest.approx(61 * (pair * 1000 * (3000 + 500.5) + expand * 3000))


def test_mla_down_projections_are_replicated_on_every_device() -> None:
    # Split 8 ways, DeepSeek-V3 keeps 1/8 of its weights per device, except q_a_proj and
    # kv_a_proj_with_mqa (61 x 7168 x (1536 + 576)) and the norms, which vLLM replicates.
    m = get_model("deepseek-v3")
    extra = weight_bytes_per_device(m, cost_for(m, 8)) - 2 * m.num_params / 8
    replicated = 61 * 7168 * (1536 + 576) + m.norm_params() + 7168
    assert extra == pytest.approx(2 * replicated * (1 - 1 / 8), rel=1e-9)


# ---- MoE layer patterns ----


def test_dense_and_moe_layers_are_priced_by_their_counts() -> None:
    # One token through DeepSeek-V3 at TP 8 reads the weights of its 3 dense MLPs
    # (3 x 7168 x 18432 each) and, in each of 58 MoE layers, of 8 routed + 1 shared experts
    # (3 x 7168 x 2048 each), all split 8 ways, plus the bf16 router (7168 x 256): bf16.
    ops = cost_for("deepseek-v3", 8).price(decode(1, 100)).ops
    assert ops["mlp"].hbm_bytes == pytest.approx(3 * 3 * 7168 * 18432 / 8 * 2, rel=0.01)
    moe = 58 * ((8 + 1) * 3 * 7168 * 2048 / 8 * 2 + 7168 * 256 * 2)
    assert ops["moe"].hbm_bytes == pytest.approx(moe, rel=0.01)
    # Jamba: experts on the 16 odd layers, a dense 14336-wide MLP on the 16 even ones.
    jamba = cost_for("jamba-1.5-mini").price(decode(1, 100)).ops
    assert jamba["mlp"].hbm_bytes == pytest.approx(16 * 3 * 4096 * 14336 * 2, rel=0.01)


# ---- recurrent layers ----


def test_recurrent_decode_cost_does_not_grow_with_context() -> None:
    # A Mamba-2 model at context 100 and 100k per sequence: the same seconds, FLOPs, bytes.
    c = cost_for("mamba2-2.7b")
    short, long = c.price(decode(8, 100)), c.price(decode(8, 100_000))
    assert (short.seconds, short.flops, short.hbm_bytes) == (long.seconds, long.flops,
                                                             long.hbm_bytes)
    seconds, _, _ = c.decode_run(8, np.array([800.0, 800_000.0]))
    assert seconds[0] == seconds[1]
    # In a hybrid only the attention layers' part grows; its Mamba layers' does not.
    j = cost_for("jamba-1.5-mini")
    a, b = j.price(decode(8, 100)).ops, j.price(decode(8, 100_000)).ops
    assert a["recurrent_decode"] == b["recurrent_decode"]
    assert float(b["attention_decode"].seconds) > 10 * float(a["attention_decode"].seconds)


def test_mamba2_decode_reads_and_writes_each_state_once() -> None:
    # mamba2-2.7b, per layer and sequence: conv state (5120 + 2 x 128) x (4 - 1) and SSM
    # state 80 heads x 64 x 128, 671,488 elements, read and written back in bf16; plus the
    # step's inputs z, x, B, C, dt (2 x 5120 + 2 x 128 + 80) and output y (5120), bf16.
    # Tensor parallelism splits both; an fp32 state doubles the state part.
    for tp, state_dtype, state_scale in ((1, "bf16", 1), (2, "bf16", 1), (1, "fp32", 2)):
        c = cost_for("mamba2-2.7b", tp, state_dtype=state_dtype)
        one = c.price(decode(1, 10)).ops["recurrent_decode"]
        three = c.price(decode(3, 10)).ops["recurrent_decode"]
        expected = (2 * 671_488 * 2 * state_scale + (3 * 5120 + 2 * 128 + 80) * 2) / tp
        assert (three.hbm_bytes - one.hbm_bytes) / (2 * 64) == pytest.approx(expected)
    assert cost_for("mamba2-2.7b").state_bytes_per_seq == 64 * 671_488 * 2


def test_a_recurrent_only_model_has_no_attention_and_one_all_reduce_per_layer() -> None:
    c = cost_for("rwkv6-finch-7b")
    assert c.kv_bytes_per_token == 0
    ops = c.price(BatchShape((512,), (0,))).ops
    assert "qkv_proj" not in ops and float(ops["attention_prefill"].seconds) == 0.0
    assert float(ops["recurrent_prefill"].seconds) > 0 and float(ops["recurrent_proj"].seconds) > 0
    # Mamba-2 layers have no MLP: TP all-reduces after the mixer only, 64 of them.
    tp2 = cost_for("mamba2-2.7b", 2)
    one = tp2._all_reduce(1 * 2560 * 2)
    assert tp2.price(decode(1, 10)).ops["tp_all_reduce"].seconds == pytest.approx(
        64 * float(one.seconds))


def test_hybrid_kv_is_the_attention_share_of_the_equivalent_transformer() -> None:
    # Jamba: 4 attention layers of 32; Qwen3-Next: 12 of 48. Same widths, same TP.
    for name, attention, layers in (("jamba-1.5-mini", 4, 32), ("qwen3-next-80b-a3b", 12, 48)):
        hybrid = get_model(name)
        for tp in (1, 2):
            kv = cost_for(hybrid, tp).kv_bytes_per_token
            full = cost_for(as_transformer(hybrid), tp).kv_bytes_per_token
            assert kv * layers == full * attention


# ---- layer counts and pipeline stages ----


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(list_models()), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_layer_counts_over_a_split_add_up_to_the_whole(name: str, cuts: list[int]) -> None:
    m = get_model(name)
    bounds = sorted({0, m.num_layers, *(c % (m.num_layers + 1) for c in cuts)})
    parts = [m.layer_counts(a, b) for a, b in pairwise(bounds)]
    assert tuple(sum(column) for column in zip(*parts, strict=True)) == m.layer_counts()
    for p in parts:
        assert p.num_attention + p.num_recurrent == p.num_layers
        assert p.num_moe + p.num_dense_mlp <= p.num_layers
    with pytest.raises(ValueError, match="not a range"):
        m.layer_counts(0, m.num_layers + 1)


STAGED = [("llama-3.1-8b", 1), ("deepseek-v3", 8), ("jamba-1.5-mini", 2),
          ("qwen3-next-80b-a3b", 4), ("mamba2-2.7b", 1), ("gpt-oss-20b", 2)]


@pytest.mark.parametrize(("name", "tp"), STAGED)
def test_stage_costs_add_up_to_the_whole_model(name: str, tp: int) -> None:
    # Every per-layer cost is a count of layers in range times a per-layer cost, so three
    # stages price what the whole model prices, op by op, with the embedding on the first
    # stage only and the LM head, logits gather and sampling on the last only.
    m = get_model(name)
    bounds = (0, m.num_layers // 3, m.num_layers // 2 + 1, m.num_layers)
    whole = cost_for(name, tp)
    stages = [cost_for(name, tp, layer_range=r) for r in pairwise(bounds)]
    shape = BatchShape((700, 60), (0, 2000), num_decode_seqs=24, decode_context_tokens=24 * 3000.0)
    total, parts = whole.price(shape), [s.price(shape) for s in stages]
    for field in ("seconds", "flops", "hbm_bytes"):
        assert sum(float(getattr(p, field)) for p in parts) == pytest.approx(
            float(getattr(total, field)), rel=1e-9)
    for op, cost in total.ops.items():
        assert sum(float(p.ops[op].seconds) for p in parts if op in p.ops) == pytest.approx(
            float(cost.seconds), rel=1e-9, abs=1e-15), op
    assert [("embedding" in p.ops) for p in parts] == [True, False, False]
    for op in ("lm_head", "logits_gather", "sampling"):
        assert [(op in p.ops) for p in parts] == [False, False, True]
    # KV and state per token / sequence split the same way.
    assert sum(s.kv_bytes_per_token for s in stages) == whole.kv_bytes_per_token
    assert sum(s.state_bytes_per_seq for s in stages) == pytest.approx(whole.state_bytes_per_seq)


def test_layer_range_must_be_a_range_of_the_model() -> None:
    with pytest.raises(ValueError, match="layer_range"):
        _ = cost_for("llama-3.1-8b", layer_range=(10, 10)).kv_bytes_per_token
    with pytest.raises(ValueError, match="layer_range"):
        _ = cost_for("llama-3.1-8b", layer_range=(0, 33)).kv_bytes_per_token


FAMILIES = [("deepseek-v3", 8), ("jamba-1.5-mini", 2), ("mamba2-2.7b", 1),
            ("qwen3-next-80b-a3b", 4), ("rwkv6-finch-7b", 2), ("gpt-oss-20b", 1),
            ("qwen3-30b-a3b", 2)]


@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from(FAMILIES),
    stage=st.sampled_from(["whole", "first", "last"]),
    prefills=st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 6000)), max_size=4),
    num_decode=st.integers(0, 200),
    ctx_per_seq=st.integers(1, 5000),
)
def test_fast_paths_equal_the_breakdown(
    case: tuple[str, int], stage: str, prefills: list[tuple[int, int]], num_decode: int,
    ctx_per_seq: int,
) -> None:
    name, tp = case
    m = get_model(name)
    half = m.num_layers // 2
    layer_range = {"whole": None, "first": (0, half), "last": (half, m.num_layers)}[stage]
    c = cost_for(name, tp, iteration_overhead_s=3e-4, layer_range=layer_range)
    if not prefills and num_decode == 0:
        num_decode = 1
    q, ctx = [p for p, _ in prefills], [x for _, x in prefills]
    decode_ctx = float(num_decode * ctx_per_seq)
    fast = c.iteration(q, ctx, num_decode, decode_ctx)
    full = c.price(BatchShape(q, ctx, num_decode, decode_ctx))
    assert fast == pytest.approx((float(full.seconds), float(full.flops), float(full.hbm_bytes)),
                                 rel=1e-12)
    if num_decode:
        contexts = np.array([decode_ctx, 2 * decode_ctx + 7])
        seconds, flops, hbm = c.decode_run(num_decode, contexts)
        for i, total_ctx in enumerate(contexts):
            single = c.price(BatchShape(num_decode_seqs=num_decode,
                                        decode_context_tokens=float(total_ctx)))
            assert seconds[i] == pytest.approx(float(single.seconds), rel=1e-12)
            assert flops[i] == pytest.approx(float(single.flops), rel=1e-12)
            assert hbm[i] == pytest.approx(float(single.hbm_bytes), rel=1e-12)


# ---- memory ----


@pytest.mark.parametrize("name", list_models())
def test_bf16_weights_on_one_device_are_two_bytes_per_parameter(name: str) -> None:
    # Unsplit and unquantised, every stored parameter (linear weights, embeddings, norms)
    # takes two bytes: the memory plan and ModelSpec's count must agree, for every family.
    m = get_model(name)
    assert weight_bytes_per_device(m, cost_for(m)) == pytest.approx(2 * m.num_params, rel=1e-12)


@pytest.mark.parametrize(("name", "tp"), STAGED)
def test_stage_weights_add_up_to_the_whole_model(name: str, tp: int) -> None:
    # A tied LM head (mamba2-2.7b) needs its own copy of the embedding on the last stage.
    m = get_model(name)
    bounds = (0, m.num_layers // 3, m.num_layers)
    stages = sum(weight_bytes_per_device(m, cost_for(m, tp, layer_range=r))
                 for r in pairwise(bounds))
    copy = 2 * m.embedding_params / tp if m.tie_word_embeddings else 0
    assert stages == pytest.approx(weight_bytes_per_device(m, cost_for(m, tp)) + copy, rel=1e-12)


def _scenario(model: Any, **engine: Any) -> Scenario:
    return Scenario.model_validate({
        "model": model, "hardware": {"accelerator": "h100-sxm"},
        "engine": {"max_model_len": 4096, **engine},
    })


def test_recurrent_state_is_reserved_for_max_num_seqs_and_refused_with_the_numbers() -> None:
    # mamba2-2.7b keeps 64 x 671,488 state elements per sequence: 81.97 MiB in bf16.
    # 1024 sequences would need 82 GiB of an H100's 71 usable: refused, naming the numbers
    # and max_num_seqs; 256 fit, with exactly that much reserved and no KV cache.
    m = get_model("mamba2-2.7b")
    per_seq = 64 * 671_488 * 2
    with pytest.raises(ScenarioError) as info:
        plan_memory(m, H100, cost_for(m), _scenario("mamba2-2.7b", max_num_seqs=1024))
    message = str(info.value)
    assert f"{per_seq / 2**20:.2f} MiB" == "81.97 MiB"
    for part in ("recurrent state", "1024 sequences", "81.97 MiB", "max_num_seqs",
                 f"{1024 * per_seq / GIB:.2f} GiB"):
        assert part in message, part
    plan = plan_memory(m, H100, cost_for(m), _scenario("mamba2-2.7b", max_num_seqs=256))
    assert plan.state_bytes == 256 * per_seq and plan.state_bytes_per_seq == per_seq
    assert plan.kv_bytes == 0 and plan.kv_bytes_per_token == 0
    # No attention layers: KV never limits, whatever the block size (4096 / 16 = 256 blocks
    # for each of 256 sequences).
    assert plan.num_kv_blocks == 256 * math.ceil(4096 / 16)
    assert "recurrent state 20.49 GiB" in plan.describe()


def test_a_model_without_attention_plans_swap_space_without_dividing_by_zero() -> None:
    m = get_model("rwkv6-finch-7b")
    plan = plan_memory(m, H100, cost_for(m), _scenario(
        "rwkv6-finch-7b", preemption_mode="swap", block_size_tokens=32, max_num_seqs=8))
    assert plan.num_host_blocks == 0 and plan.num_kv_blocks == 8 * 4096 // 32


def test_hybrid_kv_gets_what_state_and_weights_leave() -> None:
    # Jamba at TP 2: 128 sequences reserve 28 layers x 8192 x (3 + 16) state elements,
    # split over 2 devices, in bf16; the KV cache takes the rest in whole blocks of
    # 16 tokens x 4 layers x 2 x (8 / 2 heads) x 128 x 2 bytes.
    m = get_model("jamba-1.5-mini")
    cost = cost_for(m, 2)
    plan = plan_memory(m, H100, cost, _scenario("jamba-1.5-mini", max_num_seqs=128))
    assert plan.state_bytes == 128 * 28 * 8192 * 19 * 2 / 2
    block = 16 * 4 * 2 * 4 * 128 * 2
    left = plan.usable_bytes - plan.weight_bytes - plan.activation_bytes - plan.reserved_bytes \
        - plan.state_bytes
    assert plan.num_kv_blocks == int(left // block) and plan.kv_bytes == plan.num_kv_blocks * block


# ---- through the public API ----


TINY = {"name": "tiny-transformer", "num_layers": 8, "hidden_size": 256, "num_heads": 4,
        "num_kv_heads": 2, "head_dim": 64, "intermediate_size": 512, "vocab_size": 1000,
        "max_context_tokens": 8192}
TINY_HYBRID = TINY | {"name": "tiny-hybrid", "recurrent": {"kind": "mamba"},
                      "attn_layer_period": 4, "attn_layer_offset": 3}  # 2 attention of 8


def _long_prompts(model: dict[str, Any], memory_gib: float = 0.05) -> Scenario:
    return Scenario.model_validate({
        "name": "long-prompts", "model": model,
        "hardware": {"accelerator": dict(TINY_DEVICE, memory_gib=memory_gib)},
        "engine": {"runtime_reserved_gib": 0.0, "max_num_seqs": 32,
                   "max_num_batched_tokens": 2048, "max_model_len": 2048},
        "workload": {"kind": "synthetic", "arrival": {"kind": "offline"},
                     "prompt_tokens": {"kind": "fixed", "tokens": 1000},
                     "output_tokens": {"kind": "fixed", "tokens": 200}},
        "stop": {"num_requests": 32}, "seed": 1,
    })


def test_a_hybrid_admits_more_concurrent_long_sequences_than_its_transformer() -> None:
    # Same widths and device; the hybrid keeps KV in 2 layers of 8, so a cache that holds
    # a handful of 1200-token sequences for the transformer holds several times as many.
    hybrid = simulate(_long_prompts(TINY_HYBRID))
    transformer = simulate(_long_prompts(TINY))
    for r in (hybrid, transformer):
        assert (r.requests.status == "finished").all()
    peak_hybrid = hybrid.iterations.num_decode_seqs.max()
    assert peak_hybrid > 2 * transformer.iterations.num_decode_seqs.max()
    assert hybrid.iterations.num_preempted.sum() < transformer.iterations.num_preempted.sum()


def test_a_recurrent_only_model_is_never_limited_by_kv() -> None:
    tiny_mamba = TINY | {"name": "tiny-mamba2", "num_heads": 8, "num_kv_heads": 8,
                         "intermediate_size": 0,
                         "recurrent": {"kind": "mamba2", "num_heads": 8, "head_dim": 64,
                                       "state_size": 64}}
    r = simulate(_long_prompts(tiny_mamba))
    assert (r.requests.status == "finished").all()
    assert r.iterations.num_preempted.sum() == 0
    assert r.iterations.num_decode_seqs.max() == 32  # every request decodes at once
