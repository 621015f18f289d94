"""Expert parallelism, attention data parallelism and routing imbalance in the cost model.

Expected values come from the models' published configs and the link rates, written out by
hand, or from a direction the physics fixes (a hot device slows every MoE layer)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY
from hardware.topology import Topology
from simulator.cost import BatchShape, CostModel
from simulator.memory import weight_bytes_per_device
from simulator.model import ModelSpec
from simulator.model_catalog import get_model
from simulator.moe import (
    ExpertLoadConfig,
    GivenExpertLoad,
    UniformExpertLoad,
    ZipfExpertLoad,
    device_pair_shares,
    expert_pair_shares,
    max_experts_touched,
)

H100 = get_accelerator("h100-sxm")
MIXTRAL = get_model("mixtral-8x7b")
EFF = DEFAULT_EFFICIENCY.collective
NVLINK = 450e9 * EFF.bus_frac
# Qwen3-30B-A3B, from its Hugging Face config.json: 48 layers, hidden 2048, 32 query / 4 KV
# heads of 128, 128 experts of width 768, top-8, vocabulary 151,936.
QWEN3_MOE = ModelSpec(
    name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, num_heads=32, num_kv_heads=4,
    head_dim=128, intermediate_size=6144, vocab_size=151936, max_context_tokens=40960,
    num_experts=128, num_experts_per_token=8, moe_intermediate_size=768,
)


def cost(model: ModelSpec = MIXTRAL, **kw) -> CostModel:
    return CostModel(model, H100, DEFAULT_EFFICIENCY, **kw)


def fixed(n: int) -> float:
    return EFF.latency_s + EFF.per_device_latency_s * n


def decode(num_seqs: int) -> BatchShape:
    return BatchShape(num_decode_seqs=num_seqs, decode_context_tokens=num_seqs * 1000)


# ---- routing shares ----

def test_zipf_shares_follow_rank_to_the_minus_s():
    harmonic_8 = sum(1 / r for r in range(1, 9))
    shares = expert_pair_shares(ZipfExpertLoad(exponent=1.0), 8, 2)
    assert shares == pytest.approx([1 / (r * harmonic_8) for r in range(1, 9)], rel=1e-12)
    uniform = expert_pair_shares(UniformExpertLoad(), 8, 2)
    assert uniform == pytest.approx([1 / 8] * 8)
    assert expert_pair_shares(ZipfExpertLoad(exponent=0.0), 8, 2) == pytest.approx(uniform)


def test_no_expert_takes_more_than_one_in_top_k_of_the_pairs():
    # A token picks 2 distinct experts, so the hottest expert holds at most half the pairs;
    # the rest spread by weight, evenly where there is none.
    shares = expert_pair_shares(GivenExpertLoad(weights=(10, 0, 0, 0, 0, 0, 0, 0)), 8, 2)
    assert shares == pytest.approx([1 / 2] + [1 / 14] * 7, rel=1e-12)
    shares = expert_pair_shares(GivenExpertLoad(weights=(3, 1, 0, 0)), 4, 2)
    assert shares == pytest.approx([0.5, 0.5, 0.0, 0.0], abs=1e-12)


def test_experts_are_placed_contiguously_on_devices():
    load = GivenExpertLoad(weights=(1, 2, 3, 4, 5, 6, 7, 8))  # sums to 36
    shares = device_pair_shares(load, 8, 2, 4)
    assert shares == pytest.approx([3 / 36, 7 / 36, 11 / 36, 15 / 36], rel=1e-12)
    with pytest.raises(ValueError, match="not divisible"):
        device_pair_shares(load, 8, 2, 3)


def test_busiest_device_reads_a_whole_expert_for_one_token():
    # Eight devices of one expert each: any token reads a whole expert on some device.
    assert max_experts_touched(np.full((8, 1), 2 / 8), 1) == pytest.approx(1.0)
    # One device holding everything: the expected distinct experts, 8 (1 - (6/8)^T).
    assert max_experts_touched(np.full((1, 8), 2 / 8), 3) == pytest.approx(8 * (1 - 0.75**3))


def test_busiest_device_count_matches_enumeration():
    # Three devices of two experts, each expert touched independently: enumerate all 2^6
    # outcomes and average the largest per-device count.
    probs = np.array([[0.05, 0.2], [0.1, 0.1], [0.05, 0.2]])
    tokens = 3
    touched = 1 - (1 - probs) ** tokens
    expected = 0.0
    for bits in itertools.product([0, 1], repeat=6):
        hit = np.array(bits).reshape(3, 2)
        expected += np.prod(np.where(hit, touched, 1 - touched)) * max(1, hit.sum(1).max())
    assert max_experts_touched(probs, tokens) == pytest.approx(expected, rel=1e-9)


def test_expert_load_config_parses_as_a_discriminated_union():
    adapter: TypeAdapter[ExpertLoadConfig] = TypeAdapter(ExpertLoadConfig)
    assert adapter.validate_python({"kind": "zipf", "exponent": 1.2}) == ZipfExpertLoad(
        exponent=1.2)
    assert isinstance(adapter.validate_python({"kind": "uniform"}), UniformExpertLoad)
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "zipf", "exponent": 1.2, "skew": 3})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "given", "weights": [1, -1]})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "zipf", "exponent": -1})


def test_given_weights_must_match_the_models_experts():
    with pytest.raises(ValueError, match=r"expert_load\.weights has 7 entries.*num_experts=8"):
        cost(expert_load=GivenExpertLoad(weights=(1,) * 7))
    with pytest.raises(ValueError, match="num_experts=0"):
        cost(get_model("llama-3.1-8b"), expert_load=GivenExpertLoad(weights=(1, 1)))


def test_expert_parallel_needs_experts_divisible_by_devices():
    with pytest.raises(ValueError, match=r"num_experts=8 over .* 2 x 3 = 6 devices"):
        cost(tensor_parallel=2, attention_data_parallel=3, expert_parallel=True)
    cost(tensor_parallel=2, attention_data_parallel=3)  # expert TP splits any expert


# ---- memory ----

def test_expert_weights_per_device():
    # Mixtral-8x7B per layer: attention 4096 x (4096 + 2 x 1024) + 4096 x 4096, router
    # 4096 x 8, 8 experts of 3 x 4096 x 14336; vocab 32000 x 4096 twice (untied); norms.
    attention, router, expert = 4096 * 6144 + 4096 * 4096, 4096 * 8, 3 * 4096 * 14336

    def expected(t: int, experts_per_device: float) -> float:
        per_layer = (attention + router) / t + experts_per_device * expert
        return 32 * per_layer * 2 + (2 * 32000 * 4096 / t + (2 * 32 + 1) * 4096) * 2

    # Expert parallel over 2 x 4 devices: one whole expert per device; attention split by 2.
    ep = cost(tensor_parallel=2, attention_data_parallel=4, expert_parallel=True)
    assert weight_bytes_per_device(MIXTRAL, ep) == pytest.approx(expected(2, 1.0), rel=1e-12)
    # Expert TP over the same devices holds 1/8 of each of 8 experts: the same bytes.
    etp = cost(tensor_parallel=2, attention_data_parallel=4)
    assert weight_bytes_per_device(MIXTRAL, etp) == pytest.approx(expected(2, 1.0), rel=1e-12)
    # TP 8 splits attention 8 ways as well; TP 2 alone holds 4 experts' worth.
    assert weight_bytes_per_device(MIXTRAL, cost(tensor_parallel=8)) == pytest.approx(
        expected(8, 1.0), rel=1e-12)
    assert weight_bytes_per_device(MIXTRAL, cost(tensor_parallel=2)) == pytest.approx(
        expected(2, 4.0), rel=1e-12)


# ---- cost: expert parallel vs expert TP ----

def test_lone_token_under_expert_parallel_reads_a_whole_expert():
    # Batch 1 on 8 devices: expert TP reads 1/8 of each of the token's 2 experts per device;
    # under EP the two devices holding them each read a whole expert, 4x the bytes.
    one = decode(1)
    expert_bytes = MIXTRAL.expert_params * 2 * MIXTRAL.num_layers
    etp = cost(tensor_parallel=8).price(one).ops["moe"]
    ep = cost(tensor_parallel=8, expert_parallel=True).price(one).ops["moe"]
    assert float(etp.hbm_bytes) == pytest.approx(2 / 8 * expert_bytes, rel=0.01)
    assert float(ep.hbm_bytes) == pytest.approx(1.0 * expert_bytes, rel=0.01)
    assert float(ep.seconds) > 2.5 * float(etp.seconds)
    assert float(ep.flops) == pytest.approx(float(etp.flops), rel=0.01)


def test_expert_parallel_all_to_all_closed_form():
    # TP 8 with EP, 256 decode tokens, top-2 of 8 experts on 8 devices: each device receives
    # 256 x 2 / 8 token-expert pairs of 4096 bf16 values, 7/8 of them from its peers over
    # NVLink, once to dispatch and once to combine; then the TP group all-gathers its 256
    # tokens (each device got back 1/8 of them).
    c = cost(tensor_parallel=8, expert_parallel=True)
    r = c.price(decode(256))
    buffer = 256 * 2 / 8 * 4096 * 2
    gather = 256 * 4096 * 2
    per_layer = 2 * (fixed(8) + 7 / 8 * buffer / NVLINK) + fixed(8) + 7 / 8 * gather / NVLINK
    assert float(r.ops["moe_comm"].seconds) == pytest.approx(32 * per_layer, rel=1e-12)
    # The attention all-reduce stays; the one after the MLP is replaced.
    etp = cost(tensor_parallel=8).price(decode(256))
    assert float(r.ops["tp_all_reduce"].seconds) == pytest.approx(
        float(etp.ops["tp_all_reduce"].seconds) / 2, rel=1e-12)


def test_expert_tp_across_attention_ranks_gathers_and_scatters():
    # TP 1 x 8 attention ranks, expert TP: each MoE layer all-gathers the batch's hidden
    # states over the 8 devices and reduce-scatters the partial outputs; no TP all-reduce.
    r = cost(attention_data_parallel=8).price(decode(256))
    message = 256 * 4096 * 2
    per_layer = 2 * (fixed(8) + 7 / 8 * message / NVLINK)
    assert float(r.ops["moe_comm"].seconds) == pytest.approx(32 * per_layer, rel=1e-12)
    assert float(r.ops["tp_all_reduce"].seconds) == 0.0


def test_expert_parallel_across_nodes_pays_the_network():
    # 16 devices on 8-device nodes: half of each device's dispatch leaves the node.
    shape = decode(512)
    across = cost(QWEN3_MOE, tensor_parallel=4, attention_data_parallel=4, expert_parallel=True)
    one_node = cost(QWEN3_MOE, tensor_parallel=4, attention_data_parallel=4,
                    expert_parallel=True, topology=Topology(16, 450e9, 50e9, 5e-6))
    a2a_across = float(across.price(shape).ops["moe_comm"].seconds)
    a2a_within = float(one_node.price(shape).ops["moe_comm"].seconds)
    assert a2a_across > 2 * a2a_within


# ---- cost: routing imbalance ----

@pytest.mark.parametrize("shape", [decode(1), decode(256), BatchShape((4096,), (0,))],
                         ids=["decode-1", "decode-256", "prefill-4096"])
def test_imbalance_slows_moe_under_expert_parallel(shape):
    uniform = cost(tensor_parallel=8, expert_parallel=True)
    zipf = cost(tensor_parallel=8, expert_parallel=True,
                expert_load=ZipfExpertLoad(exponent=1.2))
    hot = cost(tensor_parallel=8, expert_parallel=True,
               expert_load=GivenExpertLoad(weights=(8, 1, 1, 1, 1, 1, 1, 1)))
    base = float(uniform.price(shape).seconds)
    assert float(zipf.price(shape).seconds) > base
    assert float(hot.price(shape).seconds) > base


def test_imbalance_concentrated_on_one_devices_experts():
    # Qwen3-30B-A3B on EP 8: 16 experts per device; device 0's experts get 4x the load.
    weights = (4.0,) * 16 + (1.0,) * 112
    shape = BatchShape((4096,), (0,))
    uniform = cost(QWEN3_MOE, tensor_parallel=8, expert_parallel=True)
    hot = cost(QWEN3_MOE, tensor_parallel=8, expert_parallel=True,
               expert_load=GivenExpertLoad(weights=weights))
    # Device 0 runs 64 / 176 of the 4096 x 8 token-expert pairs instead of 1/8 (~2.9x),
    # each through 3 matrices of 2048 x 768; the router (2048 x 128) runs for all tokens.
    u, h = uniform.price(shape).ops["moe"], hot.price(shape).ops["moe"]
    router = 2 * 4096 * 2048 * 128

    def flops(share: float) -> float:
        return 48 * (2 * 4096 * 8 * share * 3 * 2048 * 768 + router)

    assert float(u.flops) == pytest.approx(flops(1 / 8), rel=1e-9)
    assert float(h.flops) == pytest.approx(flops(64 / 176), rel=1e-9)
    assert float(h.seconds) > 1.5 * float(u.seconds)


def test_uniform_weights_given_explicitly_change_nothing():
    for kw in ({"tensor_parallel": 8, "expert_parallel": True}, {"tensor_parallel": 8},
               {"tensor_parallel": 2, "attention_data_parallel": 4, "expert_parallel": True}):
        plain = cost(**kw)
        given_ = cost(**kw, expert_load=GivenExpertLoad(weights=(3.0,) * 8))
        for shape in (decode(1), decode(64), BatchShape((2048, 100), (0, 500))):
            assert float(given_.price(shape).seconds) == pytest.approx(
                float(plain.price(shape).seconds), rel=1e-12)


def test_imbalance_under_expert_tp_only_changes_which_experts_are_read():
    # Every device holds a slice of every expert: compute is the same, and skewed routing
    # touches fewer distinct experts in a small batch, so it reads fewer weight bytes.
    uniform = cost(tensor_parallel=8)
    zipf = cost(tensor_parallel=8, expert_load=ZipfExpertLoad(exponent=1.5))
    u, z = uniform.price(decode(4)).ops["moe"], zipf.price(decode(4)).ops["moe"]
    assert float(z.flops) == pytest.approx(float(u.flops), rel=1e-12)
    assert float(z.hbm_bytes) < float(u.hbm_bytes)
    # A large batch touches every expert either way.
    big = BatchShape((4096,), (0,))
    assert float(zipf.price(big).seconds) == pytest.approx(
        float(uniform.price(big).seconds), rel=1e-6)


# ---- cost: attention data parallelism ----

def test_attention_ranks_each_run_their_share_of_a_dense_batch():
    # A dense model with 2 attention ranks: every device does what one device does for
    # half the batch.
    model = get_model("llama-3.1-8b")
    two_ranks, one_rank = cost(model, attention_data_parallel=2), cost(model)
    for whole, half in ((decode(64), decode(32)),
                        (BatchShape((1000, 1000), (0, 0)), BatchShape((1000,), (0,)))):
        a, b = two_ranks.price(whole), one_rank.price(half)
        assert float(a.seconds) == pytest.approx(float(b.seconds), rel=1e-12)
        assert float(a.flops) == pytest.approx(float(b.flops), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    prefills=st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 4000)), max_size=4),
    num_decode=st.integers(0, 300),
    layout=st.sampled_from([(8, 1, True), (1, 8, True), (2, 4, False), (4, 2, True)]),
    skewed=st.booleans(),
)
def test_fast_paths_agree_with_the_breakdown(prefills, num_decode, layout, skewed):
    if not prefills and num_decode == 0:
        num_decode = 1
    t, d, ep = layout
    load = ZipfExpertLoad(exponent=1.1) if skewed else UniformExpertLoad()
    c = cost(tensor_parallel=t, attention_data_parallel=d, expert_parallel=ep,
             expert_load=load, iteration_overhead_s=2e-4)
    q, ctx = [p for p, _ in prefills], [x for _, x in prefills]
    decode_ctx = float(num_decode * 1500)
    full = c.price(BatchShape(q, ctx, num_decode, decode_ctx))
    assert sum(float(op.seconds) for op in full.ops.values()) == pytest.approx(
        float(full.seconds), rel=1e-12)
    fast = c.iteration(q, ctx, num_decode, decode_ctx)
    assert fast == pytest.approx((float(full.seconds), float(full.flops),
                                  float(full.hbm_bytes)), rel=1e-12)
    if not q:
        seconds, _, _ = c.decode_run(num_decode, np.array([decode_ctx]))
        assert seconds[0] == pytest.approx(float(full.seconds), rel=1e-12)
