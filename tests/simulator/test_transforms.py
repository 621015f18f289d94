"""Model transforms (prune, sparsity, low rank, distill) and kernel choices (attention
kernel, kernel fusion, CUDA graphs): closed forms worked out by hand from the model's
published shape and the H100 figures, directions, errors, and agreement of the fast paths.

Llama-3.1-8B's numbers used below (models.yaml, meta-llama/Llama-3.1-8B config.json):
32 layers, hidden 4096, 32 query / 8 KV heads of 128, MLP 14336 (gated), vocabulary
128256, untied head. Per layer: attention 4096 x (4096 + 2 x 1024) + 4096 x 4096 =
41,943,040 weights, MLP 3 x 4096 x 14336 = 176,160,768.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scenario_with
from pydantic import TypeAdapter

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY
from simulator.cost import KERNEL_LAUNCH_S, BatchShape, CostModel
from simulator.deployment import resolve
from simulator.engine import simulate
from simulator.errors import ScenarioError
from simulator.memory import weight_bytes_per_device
from simulator.model_catalog import get_model
from simulator.optimizations import LowRank, ModelTransform, Prune, Sparsity
from simulator.transforms import apply_transforms, prune

H100 = get_accelerator("h100-sxm")
NO_SPARSE_CORES = H100.model_copy(update={"name": "h100-no-sparse", "structured_sparsity": False})
EFF = DEFAULT_EFFICIENCY
BW = H100.hbm_bytes_per_s
LLAMA_ATTN = 4096 * (4096 + 2 * 1024) + 4096 * 4096
LLAMA_MLP = 3 * 4096 * 14336
LLAMA_VOCAB_AND_NORMS = 2 * 128256 * 4096 + (2 * 32 + 1) * 4096
TRANSFORMS = TypeAdapter(tuple[ModelTransform, ...])


def cost(model: str = "llama-3.1-8b", accelerator=H100, **kw) -> CostModel:
    return CostModel(get_model(model), accelerator, EFF, **kw)


def seconds(c: CostModel, shape: BatchShape, op: str | None = None) -> float:
    priced = c.price(shape)
    return float(priced.seconds if op is None else priced.ops[op].seconds)


DECODE_1 = BatchShape(num_decode_seqs=1, decode_context_tokens=512.0)
DECODE_64 = BatchShape(num_decode_seqs=64, decode_context_tokens=64 * 1024.0)
PREFILL_8K = BatchShape((8192,), (0,))


# ---- structured pruning ----


def test_prune_removes_layers_heads_and_width_by_the_stated_rounding():
    m = get_model("llama-3.1-8b")
    p = prune(m, Prune(layers_frac=0.3, heads_frac=0.3, ffn_frac=0.3))
    # 32 x 0.3 = 9.6 -> 10 layers removed; KV heads 8 x 0.7 = 5.6 -> 6, query heads
    # 32 x 0.7 = 22.4 -> 22.4 / 6 = 3.73 -> 4 per KV head = 24; MLP 14336 x 0.7 = 10035.2
    # -> 156.8 multiples of 64 -> 157 x 64 = 10048.
    assert (p.num_layers, p.num_heads, p.num_kv_heads, p.intermediate_size) == (22, 24, 6, 10048)
    assert p.name == "llama-3.1-8b+prune"
    assert (p.hidden_size, p.head_dim, p.vocab_size) == (4096, 128, 128256)
    # MHA keeps heads == KV heads; MQA keeps one KV head.
    mha = prune(get_model("llama-2-7b"), Prune(heads_frac=0.25))
    assert (mha.num_heads, mha.num_kv_heads) == (24, 24)
    mqa = prune(m.model_copy(update={"num_kv_heads": 1}), Prune(heads_frac=0.25))
    assert (mqa.num_heads, mqa.num_kv_heads) == (24, 1)


def test_prune_keeps_each_kind_of_layer_of_a_hybrid_in_proportion():
    # Jamba 1.5 Mini: attention at layers 4, 12, 20, 28 (dense MLP there, experts on odd
    # layers). Half the layers go: each (mixer, block) kind loses half its own.
    jamba = get_model("jamba-1.5-mini")
    p = prune(jamba, Prune(layers_frac=0.5))
    before, after = jamba.layer_counts(), p.layer_counts()
    assert after.num_layers == 16
    assert after.num_attention == 2 and after.num_recurrent == 14
    assert after.num_moe == 8 and after.num_dense_mlp == 8
    assert before.num_moe == 2 * after.num_moe
    # DeepSeek-V3: 3 dense then 58 MoE layers; 10% off each kind: 0.3 -> 0 and 5.8 -> 6.
    ds = prune(get_model("deepseek-v3"), Prune(layers_frac=0.1))
    assert ds.layer_counts().num_dense_mlp == 3 and ds.layer_counts().num_moe == 52
    # At least one layer of each kind stays, even at 90%.
    tiny = prune(jamba, Prune(layers_frac=0.9)).layer_counts()
    assert tiny.num_attention >= 1 and tiny.num_moe >= 1 and tiny.num_layers >= 3


def test_prune_errors_name_the_transform_and_field():
    m = get_model("llama-3.1-8b")
    no_heads = r"model_transforms\[1\]\.heads_frac=0\.99 leaves no heads"
    with pytest.raises(ValueError, match=no_heads):
        apply_transforms(m, (Sparsity(pattern="2:4"), Prune(heads_frac=0.99)), get_model)
    no_mlp = r"model_transforms\[0\]\.ffn_frac=0\.5: mamba2-2\.7b has no MLP"
    with pytest.raises(ValueError, match=no_mlp):
        apply_transforms(get_model("mamba2-2.7b"), (Prune(ffn_frac=0.5),), get_model)


def test_pruning_a_quarter_of_the_mlp_width_cuts_mlp_time_by_a_quarter_when_compute_bound():
    # 14336 x 0.75 = 10752 = 168 x 64: exactly a quarter of the width goes. At 8192 tokens
    # the MLP GEMMs are compute-bound: time ~ FLOPs ~ width (activations and floors are
    # < 0.1%). At one token they stream weights: the weight bytes drop by a quarter but
    # the two GEMMs' 4.4 us floors and the activations do not, so the saving is less.
    m = get_model("llama-3.1-8b")
    pruned = prune(m, Prune(ffn_frac=0.25))
    assert pruned.intermediate_size == 10752
    full, cut = CostModel(m, H100, EFF), CostModel(pruned, H100, EFF)
    big = float(cut._mlp(8192, "bf16").seconds) / float(full._mlp(8192, "bf16").seconds)
    assert big == pytest.approx(0.75, abs=0.002)
    floor, frac = EFF.gemm["bf16"].floor_s, EFF.gemm["bf16"].memory_frac

    def weight_streaming_s(width: int) -> float:
        # weights, plus activations: gate/up in 4096 and out 2 x width, down in width, out 4096
        return 2 * floor + (3 * 4096 * width + 2 * 4096 + 3 * width) * 2 / (BW * frac)

    small = float(cut._mlp(1, "bf16").seconds) / float(full._mlp(1, "bf16").seconds)
    assert small == pytest.approx(weight_streaming_s(10752) / weight_streaming_s(14336), rel=1e-9)
    assert 0.75 < small < 0.77


# ---- sparsity ----


def test_2_4_sparsity_halves_gemm_flop_time_only_on_sparse_tensor_cores():
    # A compute-bound MLP (8192 tokens): H100's sparse tensor cores run 2:4 at twice the
    # dense rate, so FLOPs and time halve; a spec without them computes dense.
    sparse = Sparsity(pattern="2:4")
    dense_op = cost().price(PREFILL_8K).ops["mlp"]
    on = cost(sparsity=sparse).price(PREFILL_8K).ops["mlp"]
    off = cost(accelerator=NO_SPARSE_CORES, sparsity=sparse).price(PREFILL_8K).ops["mlp"]
    assert float(on.flops) == pytest.approx(0.5 * float(dense_op.flops), rel=1e-12)
    assert float(on.seconds) == pytest.approx(0.5 * float(dense_op.seconds), rel=0.01)
    assert float(off.flops) == float(dense_op.flops)
    assert float(off.seconds) == pytest.approx(float(dense_op.seconds), rel=1e-3)
    # The LM head and embedding stay dense.
    assert cost(sparsity=sparse).price(PREFILL_8K).ops["lm_head"] == cost().price(
        PREFILL_8K).ops["lm_head"]


def test_2_4_sparsity_stores_half_the_values_plus_2_bit_metadata():
    # bf16: half the values (1 byte per original weight) plus 2 bits per kept value
    # (0.125 byte per original weight) = 1.125 bytes instead of 2, on every layer weight;
    # embedding, LM head and norms stay 16-bit.
    layer_weights = 32 * (LLAMA_ATTN + LLAMA_MLP)
    c = cost(sparsity=Sparsity(pattern="2:4"))
    expected = layer_weights * 1.125 + LLAMA_VOCAB_AND_NORMS * 2
    assert weight_bytes_per_device(c.model, c) == pytest.approx(expected, rel=1e-12)
    # Weight streaming at one token: the MLP reads 1.125 / 2 of the dense bytes.
    dense, sparse = cost().price(DECODE_1).ops["mlp"], c.price(DECODE_1).ops["mlp"]
    weights = 32 * LLAMA_MLP
    assert float(dense.hbm_bytes) - float(sparse.hbm_bytes) == pytest.approx(
        weights * (2 - 1.125), rel=1e-12)


def test_unstructured_sparsity_saves_only_in_sparse_storage():
    # Dense storage keeps the zeros: nothing changes. Sparse storage at 30% density keeps
    # 0.3 x (2-byte value + 2-byte index) = 1.2 bytes per weight; at 50% it is 2.0 bytes,
    # no saving. Compute stays dense either way.
    base = cost()
    dense_storage = cost(sparsity=Sparsity(pattern="unstructured", density_frac=0.3,
                                           storage="dense"))
    for shape in (DECODE_64, PREFILL_8K):
        assert seconds(dense_storage, shape) == seconds(base, shape)
    assert weight_bytes_per_device(base.model, dense_storage) == weight_bytes_per_device(
        base.model, base)
    layer_weights = 32 * (LLAMA_ATTN + LLAMA_MLP)
    for density, per_weight in ((0.3, 1.2), (0.5, 2.0)):
        c = cost(sparsity=Sparsity(pattern="unstructured", density_frac=density))
        assert weight_bytes_per_device(c.model, c) == pytest.approx(
            layer_weights * per_weight + LLAMA_VOCAB_AND_NORMS * 2, rel=1e-12)
        assert float(c.price(PREFILL_8K).flops) == float(base.price(PREFILL_8K).flops)


# ---- low rank ----


def test_low_rank_mlp_flops_and_bytes_by_hand():
    # Rank 1024 on gate, up (4096 x 14336) and down (14336 x 4096): each k x n becomes
    # (k + n) x 1024 weights: 3 x 18432 x 1024 = 56,623,104 per layer (vs 176,160,768).
    # Activations per token: gate/up A in 4096, out 2 x 1024; B in 1024, out 2 x 14336;
    # down A in 14336, out 1024; B in 1024, out 4096.
    r, m_tokens = 1024, 512
    c = cost(low_rank=LowRank(rank=r, targets=("mlp",)))
    mlp = c.price(BatchShape((m_tokens,), (0,))).ops["mlp"]
    params = 3 * (4096 + 14336) * r
    assert params == 56_623_104
    act = 4096 + 2 * r + r + 2 * 14336 + 14336 + r + r + 4096
    assert float(mlp.flops) == pytest.approx(32 * 2 * m_tokens * params, rel=1e-12)
    assert float(mlp.hbm_bytes) == pytest.approx(32 * 2 * (params + m_tokens * act), rel=1e-12)
    expected = 32 * (LLAMA_ATTN + params) * 2 + LLAMA_VOCAB_AND_NORMS * 2
    assert weight_bytes_per_device(c.model, c) == pytest.approx(expected, rel=1e-12)
    # TP=2: gate/up split by columns keep their A factor whole (4096 x 1024) and B half
    # (1024 x 7168); down split by rows keeps half its A (7168 x 1024) and B whole.
    c2 = cost(tensor_parallel=2, low_rank=LowRank(rank=r, targets=("mlp", "o")))
    per_device = 32 * (4096 * (4096 + 2048) / 2 + (4096 / 2 + 4096) * r
                       + 3 * (4096 + 7168) * r)
    assert weight_bytes_per_device(c2.model, c2) == pytest.approx(
        per_device * 2 + (LLAMA_VOCAB_AND_NORMS - 65 * 4096) + 65 * 4096 * 2, rel=1e-12)


def test_low_rank_that_saves_nothing_is_refused_with_the_numbers():
    # 4096 x 14336: (k + n) r < k n needs r < 4096 x 14336 / 18432 = 3185.8.
    m = get_model("llama-3.1-8b")
    apply_transforms(m, (LowRank(rank=3185),), get_model)
    with pytest.raises(ValueError, match=r"model_transforms\[0\]\.rank=3186 saves nothing .*"
                                         r"gate_proj \(4096 x 14336\).*3185\.8"):
        apply_transforms(m, (LowRank(rank=3186),), get_model)
    # GQA's k_proj (4096 x 1024) caps qkv at 4096 x 1024 / 5120 = 819.2.
    with pytest.raises(ValueError, match=r"k_proj \(4096 x 1024\).*819\.2"):
        apply_transforms(m, (LowRank(rank=820, targets=("qkv",)),), get_model)
    with pytest.raises(ValueError, match="already low rank"):
        apply_transforms(get_model("deepseek-v3"), (LowRank(rank=64, targets=("qkv",)),),
                         get_model)


# ---- distillation ----


def test_distill_serves_the_student_exactly():
    distilled = scenario_with(num_requests=60, rate_per_s=20).model_copy(update={
        "model_transforms": TRANSFORMS.validate_python([{"kind": "distill",
                                                         "student": "llama-3.2-1b"}])})
    direct = scenario_with(model="llama-3.2-1b", num_requests=60, rate_per_s=20)
    assert resolve(distilled).model == get_model("llama-3.2-1b")
    a, b = simulate(distilled).requests, simulate(direct).requests
    cols = ["arrival_s", "first_token_s", "finish_s"]
    assert a[cols].equals(b[cols])
    with pytest.raises(ScenarioError, match=r"model_transforms\[1\]: distill .* must be "):
        resolve(direct.model_copy(update={"model_transforms": TRANSFORMS.validate_python(
            [{"kind": "prune", "layers_frac": 0.5},
             {"kind": "distill", "student": "llama-3.2-1b"}])}))
    with pytest.raises(ScenarioError, match=r"model_transforms\[0\]\.student: unknown model"):
        resolve(direct.model_copy(update={"model_transforms": TRANSFORMS.validate_python(
            [{"kind": "distill", "student": "no-such-model"}])}))


def test_scenario_transforms_reach_the_cost_model_and_memory():
    s = scenario_with(num_requests=10).model_copy(update={
        "model_transforms": TRANSFORMS.validate_python([
            {"kind": "prune", "layers_frac": 0.25}, {"kind": "sparsity", "pattern": "2:4"}])})
    dep = resolve(s)
    assert dep.model.num_layers == 24 and dep.cost.sparsity == Sparsity(pattern="2:4")
    base = resolve(scenario_with(num_requests=10))
    assert dep.memory.num_kv_blocks > base.memory.num_kv_blocks  # fewer, sparser layers


# ---- attention kernel ----


def test_unfused_attention_costs_the_score_matrix_traffic_for_long_prefill():
    # 8192-token prompt, 32 heads: S and P are 32 x 8192 x 8192 16-bit values per layer,
    # written and read twice (4 passes): 8 x 32 x 8192^2 = 17.2 GB per layer, which at
    # 0.85 x 3.35 TB/s dwarfs the fused kernel's 1.08 ms and the (doubled, unmasked)
    # compute. Flash never writes it.
    score_bytes = 32 * 4 * 2 * 32 * 8192 * 8192
    flash = cost().price(PREFILL_8K).ops["attention_prefill"]
    unfused = cost(attention_kernel="unfused").price(PREFILL_8K).ops["attention_prefill"]
    assert float(unfused.hbm_bytes) - float(flash.hbm_bytes) == pytest.approx(score_bytes)
    eff = EFF.prefill_attention
    assert float(unfused.seconds) == pytest.approx(score_bytes / (BW * eff.memory_frac), rel=0.02)
    assert float(unfused.seconds) > 4 * float(flash.seconds)
    # Every score is computed, masked ones too: twice the causal FLOPs (to 1/8192).
    assert float(unfused.flops) == pytest.approx(2 * float(flash.flops), rel=1e-3)


def test_unfused_decode_reads_one_score_per_head_and_key_four_times():
    # Per key and layer: the KV cache's 2 x 8 x 128 x 2 = 4096 bytes, plus 4 passes x 2
    # bytes x 32 heads = 256 bytes of scores.
    flash = cost().price(DECODE_64).ops["attention_decode"]
    unfused = cost(attention_kernel="unfused").price(DECODE_64).ops["attention_decode"]
    keys = 64 * 1024
    assert float(unfused.hbm_bytes) - float(flash.hbm_bytes) == pytest.approx(32 * keys * 256)
    assert float(unfused.seconds) > float(flash.seconds)


# ---- kernel fusion ----


def test_kernel_fusion_orders_decode_time_and_counts_kernels():
    # Per Llama layer: none 8 elementwise kernels, standard 4 (the profile's), full 2.
    counts = {f: cost(kernel_fusion=f).num_kernels(False, True)
              for f in ("none", "standard", "full")}
    assert counts["none"] - counts["standard"] == 32 * 4
    assert counts["standard"] - counts["full"] == 32 * 2
    # Elementwise bytes per token and layer: 'none' adds a residual add's pass per
    # sublayer (2 x 4096) and the gate multiply's 2 x 14336; 'full' drops SiLU-and-mul's
    # 3 x 14336 and rotary's 2 x (4096 + 1024).
    ew = {f: cost(kernel_fusion=f).price(DECODE_64).ops["elementwise"]
          for f in ("none", "standard", "full")}
    per_token = 64 * 32 * 2  # tokens x layers x bytes per element
    assert float(ew["none"].hbm_bytes - ew["standard"].hbm_bytes) == pytest.approx(
        per_token * (2 * 4096 + 2 * 14336))
    assert float(ew["standard"].hbm_bytes - ew["full"].hbm_bytes) == pytest.approx(
        per_token * (3 * 14336 + 2 * (4096 + 1024)))
    t = {f: seconds(cost(kernel_fusion=f), DECODE_64) for f in ("none", "standard", "full")}
    assert t["none"] > t["standard"] > t["full"]


def test_standard_fusion_is_the_calibrated_elementwise_formula():
    # 'standard' keeps the profile's 4 kernels per layer and the bytes the cost model has
    # always charged: per token and layer the residual stream read and written around the
    # mixer and the MLP (2 x 2 x 4096), SiLU-and-mul (3 x 14336) and rotary over Q and K
    # (2 x (4096 + 1024)), 16-bit.
    eff = EFF.elementwise
    elements = 2 * 2 * 4096 + 3 * 14336 + 2 * (4096 + 1024)
    expected = 32 * (4 * eff.floor_s + 64 * elements * 2 / (BW * eff.memory_frac))
    for c in (cost(), cost(kernel_fusion="standard", cuda_graphs=True, attention_kernel="flash")):
        assert float(c.price(DECODE_64).ops["elementwise"].seconds) == pytest.approx(
            expected, rel=1e-12)
        assert "launch_wait" not in c.price(DECODE_1).ops


# ---- CUDA graphs ----


def test_eager_small_model_small_batch_decode_is_launch_bound():
    # Llama-3.2-1B, one sequence: 16 layers x (QKV, attention, O, 2 MLP GEMMs, 4
    # elementwise) + embedding, LM head, sampling = 147 kernels. The GPU needs ~1.5 ms;
    # issuing 147 kernels from the CPU takes longer, and that is the step.
    c_graph = cost("llama-3.2-1b", iteration_overhead_s=1e-4)
    c_eager = cost("llama-3.2-1b", iteration_overhead_s=1e-4, cuda_graphs=False)
    assert c_eager.num_kernels(False, True) == 16 * 9 + 3
    gpu_s = seconds(c_graph, DECODE_1) - 1e-4
    assert gpu_s < 147 * KERNEL_LAUNCH_S
    assert seconds(c_eager, DECODE_1) == pytest.approx(147 * KERNEL_LAUNCH_S + 1e-4, rel=1e-12)
    # A large compute-bound prefill hides the launches: nothing changes.
    assert seconds(cost(cuda_graphs=False), PREFILL_8K) == seconds(cost(), PREFILL_8K)
    # The engine: eager decode of the small model is slower end to end.
    graphs = simulate(scenario_with(model="llama-3.2-1b", num_requests=40, rate_per_s=2))
    eager = simulate(scenario_with(model="llama-3.2-1b", num_requests=40, rate_per_s=2,
                                   engine={"cuda_graphs": False}))
    assert eager.summary()["tpot_p50_s"] > 1.5 * graphs.summary()["tpot_p50_s"]


# ---- fast paths ----


KNOBS = [
    {"sparsity": Sparsity(pattern="2:4")},
    {"sparsity": Sparsity(pattern="unstructured", density_frac=0.3)},
    {"low_rank": LowRank(rank=256, targets=("qkv", "o", "mlp"))},
    {"attention_kernel": "unfused"},
    {"kernel_fusion": "none"},
    {"kernel_fusion": "full"},
    {"cuda_graphs": False},
    {"cuda_graphs": False, "attention_kernel": "unfused", "kernel_fusion": "full",
     "sparsity": Sparsity(pattern="2:4"), "low_rank": LowRank(rank=128, targets=("mlp",))},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(f"{a}" for a in k))
@pytest.mark.parametrize(("name", "tp"), [("llama-3.1-8b", 2), ("qwen3-30b-a3b", 2),
                                          ("jamba-1.5-mini", 2), ("llama-3.2-1b", 1)])
def test_fast_paths_equal_the_breakdown_with_every_knob(knobs, name, tp):
    if name == "jamba-1.5-mini" and "low_rank" in knobs and "qkv" in knobs["low_rank"].targets:
        knobs = {**knobs, "low_rank": LowRank(rank=256, targets=("o", "mlp"))}
    layers = get_model(name).num_layers
    for layer_range in (None, (0, layers // 2), (layers // 2, layers)):
        c = cost(name, tensor_parallel=tp, iteration_overhead_s=1e-4, layer_range=layer_range,
                 **knobs)
        for q, ctx, n in (([900, 33], [0, 4000], 40), ([], [], 3), ([64], [0], 0)):
            fast = c.iteration(q, ctx, n, n * 2500.0)
            full = c.price(BatchShape(q, ctx, n, n * 2500.0))
            assert fast == pytest.approx(
                (float(full.seconds), float(full.flops), float(full.hbm_bytes)), rel=1e-12)
        contexts = np.array([3 * 100.0, 3 * 9000.0])
        run_s, run_f, run_b = c.decode_run(3, contexts)
        for i, total in enumerate(contexts):
            single = c.price(BatchShape(num_decode_seqs=3, decode_context_tokens=float(total)))
            assert run_s[i] == pytest.approx(float(single.seconds), rel=1e-12)
            assert run_f[i] == pytest.approx(float(single.flops), rel=1e-12)
            assert run_b[i] == pytest.approx(float(single.hbm_bytes), rel=1e-12)
        breakdown = c.price(BatchShape([900], [0], 40, 40 * 2500.0))
        assert sum(float(op.seconds) for op in breakdown.ops.values()) == pytest.approx(
            float(breakdown.seconds), rel=1e-12)


def test_sparse_attention_caps_the_keys_each_query_reads():
    from conftest import scenario_with

    from simulator import resolve, simulate

    sparse = {"attention": {"sparse_window_tokens": 1024, "sparse_global_tokens": 64}}
    workload = {"kind": "synthetic", "arrival": {"kind": "offline"},
                "prompt_tokens": {"kind": "fixed", "tokens": 32000},
                "output_tokens": {"kind": "fixed", "tokens": 200}}
    assert resolve(scenario_with(engine=sparse)).model.sliding_window_tokens == 1024 + 64
    dense = simulate(scenario_with(workload=workload, num_requests=4)).summary()
    capped = simulate(scenario_with(workload=workload, num_requests=4, engine=sparse)).summary()
    # 32k keys per query become 1088: decode attention shrinks, and the long prefill too.
    assert capped["tpot_p50_s"] < dense["tpot_p50_s"]
    assert capped["ttft_p50_s"] < dense["ttft_p50_s"]
    # The KV cache still holds every token (the global ones are needed).
    assert capped["kv_capacity_tokens"] == dense["kv_capacity_tokens"]
