"""The model catalog and the Hugging Face config.json loader.

Parameter counts are checked against figures the model publishers state, not against our own
arithmetic, so a wrong config value or a wrong ModelSpec formula shows up here.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.dtypes import BYTES_PER_ELEMENT
from simulator.model import ModelSpec
from simulator.model_catalog import get_model, list_models, load_model_catalog, model_from_hf_config

DENSE_NAMES = {
    "llama-2-7b", "llama-2-13b", "llama-2-70b",
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b",
    "mistral-7b", "qwen2.5-7b", "qwen2.5-32b", "qwen2.5-72b", "mixtral-8x7b",
}  # fmt: skip
"""Models whose configs derive head_dim as hidden_size / num_attention_heads."""
FAMILY_NAMES = {
    "mixtral-8x22b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-20b",
    "gpt-oss-120b", "jamba-1.5-mini", "mamba2-2.7b", "rwkv6-finch-7b", "qwen3-next-80b-a3b",
}  # fmt: skip
"""MoE, MLA, hybrid and recurrent models (issue 8)."""
EXPECTED_NAMES = DENSE_NAMES | FAMILY_NAMES


def write_config(tmp_path: Path, cfg: dict[str, Any], dirname: str = "model") -> Path:
    model_dir = tmp_path / dirname
    model_dir.mkdir()
    file = model_dir / "config.json"
    file.write_text(json.dumps(cfg))
    return file


# ---- catalog ----


def test_catalog_has_the_expected_models_and_each_validates() -> None:
    catalog = load_model_catalog()
    assert set(catalog) == EXPECTED_NAMES
    assert list_models() == sorted(EXPECTED_NAMES)
    for name, spec in catalog.items():
        assert spec.name == name
        assert ModelSpec.model_validate(spec.model_dump()) == spec
        if name in DENSE_NAMES:  # their configs have no head_dim; Qwen3, gpt-oss, MLA... do
            assert spec.head_dim * spec.num_heads == spec.hidden_size


def test_every_catalog_entry_cites_its_source_repo() -> None:
    text = resources.files("simulator").joinpath("models.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    names = yaml.safe_load(text)
    for name in names:
        line_no = lines.index(f"{name}:")
        source = lines[line_no - 1]
        assert source.startswith("# source: "), name
        repo_id = source.removeprefix("# source: ").split()[0]
        assert repo_id.count("/") == 1, source


def test_catalog_returns_a_fresh_dict() -> None:
    load_model_catalog().clear()
    assert set(load_model_catalog()) == EXPECTED_NAMES


# Published totals. Llama/Mistral: the parameter count Hugging Face shows from the safetensors
# of meta-llama/Llama-2-{7b,13b,70b}-hf (6,738,415,616 / 13,015,864,320 / 68,976,648,192),
# meta-llama/Llama-3.1-{8B,70B,405B} (8.03B / 70.6B / 406B; the Llama 3 paper, arXiv 2407.21783,
# calls them 8B/70B/405B) and mistralai/Mistral-7B-v0.1 (7.24B). Mixtral: "46.7B total
# parameters but only uses 12.9B parameters per token" (mistral.ai/news/mixtral-of-experts).
# Qwen2.5: the Qwen/Qwen2.5-{7B,72B} model cards ("Number of Parameters: 7.61B" / "72.7B");
# the 32B card says 32.5B but its safetensors hold 32.8B, which we use. Llama 3.2: the
# meta-llama/Llama-3.2-{1B,3B} model cards' table, "1B (1.23B)" and "3B (3.21B)".
@pytest.mark.parametrize(
    ("name", "published_total", "published_active"),
    [
        ("llama-2-7b", 6.74e9, None),
        ("llama-2-13b", 13.02e9, None),
        ("llama-2-70b", 68.98e9, None),
        ("llama-3.1-8b", 8.03e9, None),
        ("llama-3.1-70b", 70.6e9, None),
        ("llama-3.1-405b", 405.9e9, None),
        ("llama-3.2-1b", 1.23e9, None),
        ("llama-3.2-3b", 3.21e9, None),
        ("mistral-7b", 7.24e9, None),
        ("qwen2.5-7b", 7.61e9, None),
        ("qwen2.5-32b", 32.8e9, None),
        ("qwen2.5-72b", 72.7e9, None),
        ("mixtral-8x7b", 46.7e9, 12.9e9),
    ],
)
def test_parameter_counts_match_published_sizes(
    name: str, published_total: float, published_active: float | None
) -> None:
    spec = get_model(name)
    assert spec.num_params == pytest.approx(published_total, rel=0.01)
    expected_active = published_total if published_active is None else published_active
    assert spec.num_active_params == pytest.approx(expected_active, rel=0.01)


# Published totals and active counts of the issue-8 families, each with its source:
# - Mixtral 8x22B: "uses only 39B active parameters out of 141B" (mistral.ai/news/mixtral-8x22b).
# - Qwen3: the Qwen/Qwen3-30B-A3B card, "30.5B in total and 3.3B activated", and the
#   Qwen/Qwen3-235B-A22B card, "235B in total and 22B activated" (2 digits: rel 0.02).
# - DeepSeek-V3: "671B total parameters with 37B activated for each token" (arXiv 2412.19437).
#   The 14B multi-token-prediction module (HF's 685B) is not part of the 671B, nor of ours;
#   "37B" is rounded from our 37.55B, so rel 0.02.
# - Jamba 1.5 Mini: "12B active parameters (52B total)" (AI21, arXiv 2408.12570).
# - Mamba-2 2.7B: its name and the Mamba-2 paper's table (arXiv 2405.21060); dense, so
#   active = total.
@pytest.mark.parametrize(
    ("name", "published_total", "published_active", "rel_active"),
    [
        ("mixtral-8x22b", 141e9, 39e9, 0.01),
        ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.02),
        ("qwen3-235b-a22b", 235e9, 22e9, 0.02),
        ("deepseek-v3", 671e9, 37e9, 0.02),
        ("jamba-1.5-mini", 52e9, 12e9, 0.01),
        ("mamba2-2.7b", 2.7e9, 2.7e9, 0.01),
    ],
)
def test_family_parameter_counts_match_published_sizes(
    name: str, published_total: float, published_active: float, rel_active: float
) -> None:
    spec = get_model(name)
    assert spec.num_params == pytest.approx(published_total, rel=0.01)
    assert spec.num_active_params == pytest.approx(published_active, rel=rel_active)


def test_gpt_oss_counts_match_the_model_card() -> None:
    # OpenAI's gpt-oss model card (arXiv 2508.10925, table 1): 20b has 20.91B total and
    # 3.61B active parameters, 120b 116.83B and 5.13B. Its active count leaves the input
    # embedding out (a lookup, not a product): 5.13B + the 0.58B embedding is our 5.71B.
    # Attention biases and sinks (not modelled) make up the last 0.05%.
    for name, total, active in (("gpt-oss-20b", 20.91e9, 3.61e9),
                                ("gpt-oss-120b", 116.83e9, 5.13e9)):
        spec = get_model(name)
        assert spec.num_params == pytest.approx(total, rel=0.005), name
        assert spec.num_active_params - spec.embedding_params == pytest.approx(active, rel=0.005)


def test_qwen3_next_counts() -> None:
    # Model card (Qwen/Qwen3-Next-80B-A3B-*): "80B in total and 3B activated". "3B" is a
    # label: a token passes through 10 + 1 experts of 3 x 2048 x 512 in each of 48 layers,
    # and the other 502 experts of each layer are what "active" leaves out, so the active
    # count must be the total less exactly that (3.87B, between 3B and 4B).
    spec = get_model("qwen3-next-80b-a3b")
    assert spec.num_params == pytest.approx(80e9, rel=0.01)
    assert spec.num_active_params == spec.num_params - 48 * 502 * 3 * 2048 * 512
    assert 3e9 < spec.num_active_params < 4e9


def test_rwkv6_finch_7b_is_eagle_7b_plus_its_low_rank_mixers() -> None:
    # The Eagle and Finch paper (arXiv 2404.05892) trains Eagle (RWKV-5) up to 7.5B; Finch 7B
    # continues from Eagle 7B's weights and adds only the data-dependent token-shift and
    # decay LoRAs: per layer 4096 x 5 x 64 twice and 4096 x 128 twice.
    spec = get_model("rwkv6-finch-7b")
    lora = 32 * (2 * 4096 * 5 * 64 + 2 * 4096 * 128)
    assert spec.num_params - lora == pytest.approx(7.5e9, rel=0.01)


def test_family_kv_and_state_per_token_closed_forms() -> None:
    # DeepSeek-V3: one latent of kv_lora_rank + qk_rope_head_dim = 512 + 64 per layer.
    assert get_model("deepseek-v3").kv_elements_per_token() == 61 * 576
    # Jamba 1.5 Mini: K and V of 8 heads x 128 in its 4 attention layers only.
    jamba = get_model("jamba-1.5-mini")
    assert jamba.kv_elements_per_token() == 4 * 2 * 8 * 128
    # ... and per sequence a Mamba state in each of the 28 others: conv d_inner x (d_conv - 1)
    # plus SSM d_inner x d_state, d_inner = 2 x 4096.
    assert jamba.state_elements_per_seq() == 28 * (8192 * 3 + 8192 * 16)
    # Qwen3-Next: 12 attention layers of 2 KV heads x 256; Gated DeltaNet state per layer:
    # conv (2 x 16 x 128 + 32 x 128) x 3, recurrence 32 value heads x 128 x 128.
    nxt = get_model("qwen3-next-80b-a3b")
    assert nxt.kv_elements_per_token() == 12 * 2 * 2 * 256
    assert nxt.state_elements_per_seq() == 36 * ((2 * 2048 + 4096) * 3 + 32 * 128 * 128)
    # Pure recurrent models keep no KV cache at all.
    assert get_model("mamba2-2.7b").kv_elements_per_token() == 0
    assert get_model("rwkv6-finch-7b").kv_elements_per_token() == 0
    # RWKV-6: two token-shift vectors and a 64 x 64 WKV state per head, 64 heads, 32 layers.
    assert get_model("rwkv6-finch-7b").state_elements_per_seq() == 32 * (2 * 4096 + 64 * 64 * 64)


def test_family_layer_patterns() -> None:
    jamba = get_model("jamba-1.5-mini")  # attention at i % 8 == 4, experts at odd layers
    assert [i for i, k in enumerate(jamba.mixer_kinds) if k == "attention"] == [4, 12, 20, 28]
    assert [i for i, k in enumerate(jamba.block_kinds) if k == "moe"] == list(range(1, 32, 2))
    ds = get_model("deepseek-v3")  # first_k_dense_replace 3
    assert ds.block_kinds[:4] == ("dense", "dense", "dense", "moe")
    assert ds.layer_counts() == (61, 61, 0, 58, 3)
    nxt = get_model("qwen3-next-80b-a3b")  # full_attention_interval 4: layers 3, 7, ..., 47
    assert [i for i, k in enumerate(nxt.mixer_kinds) if k == "attention"] == list(range(3, 48, 4))
    assert get_model("mamba2-2.7b").layer_counts() == (64, 0, 64, 0, 0)  # no MLP at all


def test_llama_3_1_8b_kv_bytes_per_token_in_bf16() -> None:
    spec = get_model("llama-3.1-8b")
    # 32 layers × 8 KV heads × 128 head_dim × 2 (K and V) × 2 bytes
    assert spec.kv_elements_per_token() * 2 == 32 * 8 * 128 * 2 * 2 == 131072
    assert spec.kv_elements_per_token() * BYTES_PER_ELEMENT["bf16"] == 131072


def test_catalog_windows_and_experts() -> None:
    assert get_model("mistral-7b").sliding_window_tokens == 4096
    for name in ("qwen2.5-7b", "qwen2.5-32b", "qwen2.5-72b", "mixtral-8x7b", "llama-3.1-8b"):
        assert get_model(name).sliding_window_tokens is None, name
    mixtral = get_model("mixtral-8x7b")
    assert (mixtral.num_experts, mixtral.num_experts_per_token) == (8, 2)
    assert get_model("llama-3.1-405b").max_context_tokens == 131072


def test_get_model_is_case_insensitive() -> None:
    assert get_model("Llama-3.1-8B") is get_model("llama-3.1-8b")
    assert get_model(" MIXTRAL-8x7B ").name == "mixtral-8x7b"


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(KeyError) as info:
        get_model("gpt-5")
    message = str(info.value)
    assert "gpt-5" in message
    for name in EXPECTED_NAMES:
        assert name in message


# ---- Hugging Face config.json ----

# meta-llama/Llama-3.1-8B config.json, the keys that matter plus some that must be ignored.
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "rope_type": "llama3"},
    "torch_dtype": "bfloat16",
}


def test_llama3_config_loads(tmp_path: Path) -> None:
    spec = model_from_hf_config(write_config(tmp_path, LLAMA_3_1_8B, "Llama-3.1-8B"))
    assert spec.name == "Llama-3.1-8B"  # the directory's name
    assert (spec.num_kv_heads, spec.head_dim, spec.gated_mlp) == (8, 128, True)
    assert spec.sliding_window_tokens is None and not spec.is_moe
    assert spec.num_params == pytest.approx(8.03e9, rel=0.01)


def test_directory_path_and_explicit_name(tmp_path: Path) -> None:
    file = write_config(tmp_path, LLAMA_3_1_8B)
    assert model_from_hf_config(file.parent, name="mine").name == "mine"
    assert model_from_hf_config(str(file.parent)).name == "model"


def test_round_trip_catalog_llama_3_1_8b(tmp_path: Path) -> None:
    spec = get_model("llama-3.1-8b")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.intermediate_size,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_context_tokens,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }
    assert model_from_hf_config(write_config(tmp_path, cfg), name=spec.name) == spec


def test_mixtral_config_loads(tmp_path: Path) -> None:
    # mistralai/Mixtral-8x7B-v0.1 config.json
    cfg = {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "sliding_window": None,
        "vocab_size": 32000,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg), name="mixtral-8x7b")
    assert spec == get_model("mixtral-8x7b")


def test_gpt2_config_loads(tmp_path: Path) -> None:
    # openai-community/gpt2 config.json: GPT-2 names, n_inner null (4 × n_embd), tied head.
    cfg = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_inner": None,
        "n_layer": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads) == (
        12,
        768,
        12,
        12,
    )
    assert (spec.head_dim, spec.intermediate_size, spec.max_context_tokens) == (64, 3072, 1024)
    assert spec.tie_word_embeddings and not spec.gated_mlp
    # Published 124M (124,439,808); ModelSpec leaves out biases and learned position embeddings.
    assert spec.num_params == pytest.approx(124.4e6, rel=0.01)


def test_gpt_neox_config_loads(tmp_path: Path) -> None:
    # EleutherAI/gpt-neox-20b config.json; 20.55B parameters (GPT-NeoX-20B paper, arXiv 2204.06745).
    cfg = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": 6144,
        "intermediate_size": 24576,
        "max_position_embeddings": 2048,
        "num_attention_heads": 64,
        "num_hidden_layers": 44,
        "tie_word_embeddings": False,
        "vocab_size": 50432,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert not spec.gated_mlp and not spec.tie_word_embeddings
    assert spec.num_params == pytest.approx(20.55e9, rel=0.01)


def test_multi_query_config_has_one_kv_head(tmp_path: Path) -> None:
    # bigcode/starcoderbase-1b style (GPT-BigCode, multi_query).
    cfg = {
        "architectures": ["GPTBigCodeForCausalLM"],
        "model_type": "gpt_bigcode",
        "multi_query": True,
        "n_embd": 2048,
        "n_head": 16,
        "n_inner": 8192,
        "n_layer": 24,
        "n_positions": 8192,
        "vocab_size": 49152,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert (spec.num_kv_heads, spec.head_dim, spec.intermediate_size) == (1, 128, 8192)


# Qwen/Qwen2.5-7B config.json: sliding_window is set, but use_sliding_window is false.
QWEN2_5_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


def test_qwen2_config_without_use_sliding_window_has_no_window(tmp_path: Path) -> None:
    spec = model_from_hf_config(write_config(tmp_path, QWEN2_5_7B), name="qwen2.5-7b")
    assert spec == get_model("qwen2.5-7b")
    assert spec.sliding_window_tokens is None


@pytest.mark.parametrize(
    ("max_window_layers", "expected_window"),
    [(0, 4096), (28, None), (14, None)],  # all layers / none / some (modelled as none)
)
def test_qwen2_sliding_window_applies_only_to_all_layers(
    tmp_path: Path, max_window_layers: int, expected_window: int | None
) -> None:
    cfg = QWEN2_5_7B | {
        "use_sliding_window": True,
        "sliding_window": 4096,
        "max_window_layers": max_window_layers,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.sliding_window_tokens == expected_window


def test_mistral_window_applies(tmp_path: Path) -> None:
    # mistralai/Mistral-7B-v0.1 config.json
    cfg = LLAMA_3_1_8B | {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "max_position_embeddings": 32768,
        "sliding_window": 4096,
        "vocab_size": 32000,
    }
    del cfg["rope_scaling"]
    assert model_from_hf_config(write_config(tmp_path, cfg), name="mistral-7b") == get_model(
        "mistral-7b"
    )


def test_gemma_uses_explicit_head_dim_and_ties_by_default(tmp_path: Path) -> None:
    # google/gemma-7b config.json: head_dim 256 ≠ 3072 / 16; no tie_word_embeddings key
    # (GemmaConfig ties by default). Published size 8.54B (Gemma report, arXiv 2403.08295).
    cfg = {
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "head_dim": 256,
        "hidden_size": 3072,
        "intermediate_size": 24576,
        "max_position_embeddings": 8192,
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 16,
        "vocab_size": 256000,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.head_dim == 256 and spec.tie_word_embeddings
    assert spec.num_params == pytest.approx(8.54e9, rel=0.01)


def test_gemma2_interleaved_window_is_not_applied_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "head_dim": 256,
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "max_position_embeddings": 8192,
        "num_attention_heads": 16,
        "num_hidden_layers": 42,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
        "vocab_size": 256000,
    }
    with caplog.at_level(logging.WARNING, logger="simulator.model_catalog"):
        spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.sliding_window_tokens is None
    assert "some layers only" in caplog.text


def test_qwen3_moe_config_loads(tmp_path: Path) -> None:
    # Qwen/Qwen3-30B-A3B config.json; model card: 30.5B total, 3.3B activated.
    cfg = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "head_dim": 128,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "max_position_embeddings": 40960,
        "moe_intermediate_size": 768,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    shape = (spec.num_experts, spec.num_experts_per_token, spec.expert_intermediate_size)
    assert shape == (128, 8, 768)
    assert spec.num_params == pytest.approx(30.5e9, rel=0.01)
    assert spec.num_active_params == pytest.approx(3.3e9, rel=0.02)  # "3.3B" has 2 digits


def test_qwen2_moe_shared_expert_counts_in_expert_widths(tmp_path: Path) -> None:
    # Qwen/Qwen1.5-MoE-A2.7B config.json: one shared expert 4 × as wide as a routed one.
    # Model card: 14.3B total, 2.7B activated.
    cfg = {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 8192,
        "moe_intermediate_size": 1408,
        "num_attention_heads": 16,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "shared_expert_intermediate_size": 5632,
        "tie_word_embeddings": False,
        "vocab_size": 151936,
    }
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.num_shared_experts == 4
    assert spec.num_params == pytest.approx(14.3e9, rel=0.01)
    assert spec.num_active_params == pytest.approx(2.7e9, rel=0.01)


def test_absent_kv_heads_means_multi_head_attention(tmp_path: Path) -> None:
    cfg = {k: v for k, v in LLAMA_3_1_8B.items() if k != "num_key_value_heads"}
    assert model_from_hf_config(write_config(tmp_path, cfg)).num_kv_heads == 32


# ---- issue-8 families: MLA, MoE layer patterns, hybrid and recurrent configs ----

# deepseek-ai/DeepSeek-V3 config.json, the keys that matter (rope_scaling, quantization_config
# and the routing details are read by nobody here).
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "first_k_dense_replace": 3, "hidden_size": 7168, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
    "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "tie_word_embeddings": False, "vocab_size": 129280,
}


def test_deepseek_v3_config_loads_as_the_catalog_entry(tmp_path: Path) -> None:
    spec = model_from_hf_config(write_config(tmp_path, DEEPSEEK_V3), name="deepseek-v3")
    assert spec == get_model("deepseek-v3")
    assert spec.is_mla and spec.head_dim == 128 + 64


def test_deepseek_v2_lite_has_no_query_compression(tmp_path: Path) -> None:
    # deepseek-ai/DeepSeek-V2-Lite config.json: q_lora_rank null (a plain q_proj), one dense
    # layer, 2 shared + 64 routed experts. The DeepSeek-V2 paper (arXiv 2405.04434): "15.7B
    # total parameters, of which 2.4B are activated for each token"; like gpt-oss, counted
    # without the input embedding (a lookup), and "2.4B" has 2 digits.
    cfg = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
           "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
           "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
           "n_shared_experts": 2, "n_routed_experts": 64, "num_experts_per_tok": 6,
           "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 512,
           "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
           "v_head_dim": 128, "vocab_size": 102400, "max_position_embeddings": 163840}
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.q_lora_rank is None and spec.layer_counts() == (27, 27, 0, 26, 1)
    assert spec.num_params == pytest.approx(15.7e9, rel=0.01)
    assert spec.num_active_params - spec.embedding_params == pytest.approx(2.4e9, rel=0.03)


def test_gpt_oss_config_loads_with_its_windows_modelled_as_full_attention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # openai/gpt-oss-120b config.json (layer_types: 18 x [sliding, full], sliding_window 128).
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
           "experts_per_token": 4, "head_dim": 64, "hidden_size": 2880,
           "initial_context_length": 4096, "intermediate_size": 2880,
           "layer_types": ["sliding_attention", "full_attention"] * 18,
           "max_position_embeddings": 131072, "num_attention_heads": 64,
           "num_experts_per_tok": 4, "num_hidden_layers": 36, "num_key_value_heads": 8,
           "num_local_experts": 128, "sliding_window": 128, "tie_word_embeddings": False,
           "vocab_size": 201088}
    with caplog.at_level(logging.WARNING, logger="simulator.model_catalog"):
        spec = model_from_hf_config(write_config(tmp_path, cfg), name="gpt-oss-120b")
    assert spec == get_model("gpt-oss-120b")
    assert spec.sliding_window_tokens is None and "some layers only" in caplog.text


# ai21labs/AI21-Jamba-1.5-Mini config.json.
JAMBA_1_5_MINI = {
    "architectures": ["JambaForCausalLM"], "model_type": "jamba", "attn_layer_offset": 4,
    "attn_layer_period": 8, "expert_layer_offset": 1, "expert_layer_period": 2,
    "hidden_size": 4096, "intermediate_size": 14336, "mamba_conv_bias": True,
    "mamba_d_conv": 4, "mamba_d_state": 16, "mamba_dt_rank": 256, "mamba_expand": 2,
    "mamba_proj_bias": False, "max_position_embeddings": 262144, "num_attention_heads": 32,
    "num_experts": 16, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "sliding_window": None, "tie_word_embeddings": False,
    "vocab_size": 65536,
}


def test_jamba_config_loads_as_the_catalog_entry(tmp_path: Path) -> None:
    spec = model_from_hf_config(write_config(tmp_path, JAMBA_1_5_MINI), name="jamba-1.5-mini")
    assert spec == get_model("jamba-1.5-mini")


# Qwen/Qwen3-Next-80B-A3B-Thinking config.json.
QWEN3_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
    "decoder_sparse_step": 1, "full_attention_interval": 4, "head_dim": 256,
    "hidden_size": 2048, "intermediate_size": 5120, "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_value_head_dim": 128, "max_position_embeddings": 262144, "mlp_only_layers": [],
    "moe_intermediate_size": 512, "num_attention_heads": 16, "num_experts": 512,
    "num_experts_per_tok": 10, "num_hidden_layers": 48, "num_key_value_heads": 2,
    "shared_expert_intermediate_size": 512, "tie_word_embeddings": False,
    "use_sliding_window": False, "vocab_size": 151936,
}


def test_qwen3_next_config_loads_from_the_interval_or_a_layer_list(tmp_path: Path) -> None:
    catalog = get_model("qwen3-next-80b-a3b")
    spec = model_from_hf_config(write_config(tmp_path, QWEN3_NEXT), name=catalog.name)
    assert spec == catalog
    listed = QWEN3_NEXT | {"layer_types": ["linear_attention"] * 3 + ["full_attention"]}
    listed["layer_types"] = listed["layer_types"] * 12
    other = model_from_hf_config(write_config(tmp_path, listed, "listed"), name=catalog.name)
    assert other.mixer_kinds == catalog.mixer_kinds and other.num_params == catalog.num_params


def test_qwen_moe_dense_layers_from_sparse_step_and_mlp_only_layers(tmp_path: Path) -> None:
    # Qwen2/3-MoE: layer i is sparse when (i + 1) % decoder_sparse_step == 0 and i is not in
    # mlp_only_layers (transformers' Qwen3MoeDecoderLayer).
    cfg = QWEN3_NEXT | {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
                        "num_hidden_layers": 8, "decoder_sparse_step": 2, "mlp_only_layers": [5]}
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.block_kinds == ("dense", "moe", "dense", "moe", "dense", "dense", "dense", "moe")
    assert spec.recurrent is None  # qwen3_moe: linear_* keys mean nothing


def test_mamba_ssm_config_loads_as_the_catalog_entry(tmp_path: Path) -> None:
    # state-spaces/mamba2-2.7b config.json, in mamba_ssm's own format.
    cfg = {"d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277,
           "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
           "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    spec = model_from_hf_config(write_config(tmp_path, cfg), name="mamba2-2.7b")
    assert spec == get_model("mamba2-2.7b")


def test_hf_mamba_config_loads(tmp_path: Path) -> None:
    # state-spaces/mamba-2.8b-hf config.json (HF MambaConfig): intermediate_size is the
    # SSM's inner width, not an MLP. The Mamba paper (arXiv 2312.00752) names it 2.8B.
    cfg = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 2560,
           "num_hidden_layers": 64, "vocab_size": 50280, "state_size": 16, "conv_kernel": 4,
           "expand": 2, "intermediate_size": 5120, "time_step_rank": 160}
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.intermediate_size == 0 and spec.kv_elements_per_token() == 0
    assert spec.num_heads == 5120  # the inner channels bound tensor parallelism
    assert spec.tie_word_embeddings  # MambaConfig's default
    assert spec.max_context_tokens == 1 << 20  # nothing bounds a recurrent model's context
    assert spec.num_params == pytest.approx(2.8e9, rel=0.02)


def test_hf_mamba2_config_loads(tmp_path: Path) -> None:
    # mistralai/Mamba-Codestral-7B-v0.1 config.json (HF Mamba2Config); its model card states
    # 7,285,403,648 parameters.
    cfg = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
           "hidden_size": 4096, "num_hidden_layers": 64, "vocab_size": 32768,
           "state_size": 128, "conv_kernel": 4, "expand": 2, "num_heads": 128, "head_dim": 64,
           "n_groups": 8, "tie_word_embeddings": False}
    spec = model_from_hf_config(write_config(tmp_path, cfg))
    assert spec.num_params == pytest.approx(7_285_403_648, rel=1e-6)


def test_rwkv6_config_loads_as_the_catalog_entry(tmp_path: Path) -> None:
    # An rwkv6 config (RWKV/v6-Finch-*-HF layout) with the catalog's Finch 7B shape; a null
    # intermediate_size means 3.5 x hidden rounded down to 32 (= 14336), and
    # num_attention_heads is not the head count (attention_hidden_size / head_size is).
    cfg = {"architectures": ["Rwkv6ForCausalLM"], "model_type": "rwkv6",
           "attention_hidden_size": 4096, "head_size": 64, "hidden_size": 4096,
           "intermediate_size": None, "num_attention_heads": 64, "num_hidden_layers": 32,
           "tie_word_embeddings": False, "vocab_size": 65536}
    spec = model_from_hf_config(write_config(tmp_path, cfg), name="rwkv6-finch-7b")
    assert spec == get_model("rwkv6-finch-7b")


def test_family_configs_missing_keys_name_file_and_key(tmp_path: Path) -> None:
    no_latent = {k: v for k, v in DEEPSEEK_V3.items() if k != "kv_lora_rank"}
    file = write_config(tmp_path, no_latent, "ds")
    with pytest.raises(ValueError, match="missing required key") as info:
        model_from_hf_config(file)
    assert str(file) in str(info.value) and "kv_lora_rank" in str(info.value)
    no_linear = {k: v for k, v in QWEN3_NEXT.items() if k != "linear_num_value_heads"}
    file = write_config(tmp_path, no_linear, "next")
    with pytest.raises(ValueError, match="linear_num_value_heads") as info:
        model_from_hf_config(file)
    assert str(file) in str(info.value)
    hybrid = {"d_model": 256, "n_layer": 4, "ssm_cfg": {"layer": "Mamba2"},
              "attn_layer_idx": [2], "attn_cfg": {"num_heads": 4}}
    file = write_config(tmp_path, hybrid, "hybrid")
    with pytest.raises(ValueError, match="attn_layer_idx") as info:
        model_from_hf_config(file)
    assert str(file) in str(info.value)


def test_model_spec_refuses_inconsistent_families() -> None:
    base = get_model("llama-3.1-8b").model_dump()
    with pytest.raises(ValueError, match="v_head_dim"):  # MLA needs all its widths
        ModelSpec(**base | {"kv_lora_rank": 512, "qk_nope_head_dim": 96, "qk_rope_head_dim": 32})
    with pytest.raises(ValueError, match="head_dim must be"):
        ModelSpec(**base | {"kv_lora_rank": 512, "qk_nope_head_dim": 96, "qk_rope_head_dim": 64,
                            "v_head_dim": 128})
    with pytest.raises(ValueError, match="recurrent mixer"):
        ModelSpec(**base | {"attn_layer_period": 4})
    with pytest.raises(ValueError, match="layer_types has 3 entries"):
        ModelSpec(**base | {"recurrent": {"kind": "mamba"}, "layer_types": ["attention"] * 3})
    with pytest.raises(ValueError, match="no layer has experts"):
        ModelSpec(**base | {"num_experts": 8, "num_experts_per_token": 2,
                            "first_k_dense_replace": 32})


# ---- errors ----


def test_missing_key_names_file_and_keys(tmp_path: Path) -> None:
    cfg = {k: v for k, v in LLAMA_3_1_8B.items() if k not in ("num_hidden_layers", "vocab_size")}
    file = write_config(tmp_path, cfg)
    with pytest.raises(ValueError, match="missing required key") as info:
        model_from_hf_config(file)
    message = str(info.value)
    assert str(file) in message
    assert "num_hidden_layers" in message and "n_layer" in message and "vocab_size" in message


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    cfg = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768}
    with pytest.raises(ValueError, match=r"unknown architecture.*bert.*supported") as info:
        model_from_hf_config(write_config(tmp_path, cfg))
    assert "llama" in str(info.value)


def test_encoder_decoder_is_refused(tmp_path: Path) -> None:
    cfg = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 512}
    with pytest.raises(ValueError, match="encoder-decoder"):
        model_from_hf_config(write_config(tmp_path, cfg))


def test_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        model_from_hf_config(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        model_from_hf_config(bad)


def test_invalid_shape_names_the_file(tmp_path: Path) -> None:
    cfg = LLAMA_3_1_8B | {"num_key_value_heads": 5}  # 32 heads are not a multiple of 5
    file = write_config(tmp_path, cfg)
    with pytest.raises(ValueError, match="does not describe a valid model") as info:
        model_from_hf_config(file)
    assert str(file) in str(info.value)
