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

EXPECTED_NAMES = {
    "llama-2-7b", "llama-2-13b", "llama-2-70b",
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
    "mistral-7b", "qwen2.5-7b", "qwen2.5-32b", "qwen2.5-72b", "mixtral-8x7b",
}  # fmt: skip


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
        assert spec.head_dim * spec.num_heads == spec.hidden_size  # true of every model here


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
# the 32B card says 32.5B but its safetensors hold 32.8B, which we use.
@pytest.mark.parametrize(
    ("name", "published_total", "published_active"),
    [
        ("llama-2-7b", 6.74e9, None),
        ("llama-2-13b", 13.02e9, None),
        ("llama-2-70b", 68.98e9, None),
        ("llama-3.1-8b", 8.03e9, None),
        ("llama-3.1-70b", 70.6e9, None),
        ("llama-3.1-405b", 405.9e9, None),
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
