"""Model catalog (``simulator/models.yaml``) and a loader for Hugging Face ``config.json`` files.

Catalog names are what a scenario writes as ``model: llama-3.1-8b``; any other decoder-only
model comes from its ``config.json`` on disk (``model: {hf_config: path}``). Nothing here
touches the network.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simulator.model import ModelSpec

logger = logging.getLogger(__name__)

# model_type -> (gated MLP, tie_word_embeddings when the config omits it). The tie defaults
# are those of the transformers config classes: GPT-2, GPT-BigCode and Gemma tie by default.
_FAMILIES: dict[str, tuple[bool, bool]] = {
    "llama": (True, False), "mistral": (True, False), "mixtral": (True, False),
    "qwen2": (True, False), "qwen2_moe": (True, False),
    "qwen3": (True, False), "qwen3_moe": (True, False),
    "gemma": (True, True), "gemma2": (True, True), "gemma3_text": (True, True),
    "gpt2": (False, True), "gpt_bigcode": (False, True), "gpt_neox": (False, False),
}  # fmt: skip
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
    "GPT2LMHeadModel": "gpt2", "GPTBigCodeForCausalLM": "gpt_bigcode",
    "GPTNeoXForCausalLM": "gpt_neox",
}  # fmt: skip
_ENCODER_DECODER = {"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "whisper"}
_QWEN = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}
_WINDOW_ALL_LAYERS = {"mistral", "mixtral"}  # a set sliding_window applies to every layer
_WINDOW_SOME_LAYERS = {"gemma2", "gemma3_text"}  # local and global layers interleave

# ModelSpec field -> config.json keys tried in order (Llama names, then GPT-2/NeoX names).
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_heads": ("num_attention_heads", "n_head"),
    "vocab_size": ("vocab_size",),
    "max_context_tokens": ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
}


@lru_cache(maxsize=1)
def _catalog() -> dict[str, ModelSpec]:
    text = resources.files("simulator").joinpath("models.yaml").read_text(encoding="utf-8")
    return {name: ModelSpec(name=name, **fields) for name, fields in yaml.safe_load(text).items()}


def load_model_catalog() -> dict[str, ModelSpec]:
    """All catalog models by name. The YAML is read once; each call returns a fresh dict."""
    return dict(_catalog())


def list_models() -> list[str]:
    """Catalog names, sorted."""
    return sorted(_catalog())


def get_model(name: str) -> ModelSpec:
    """The catalog spec called ``name`` (case-insensitive); KeyError lists the known names."""
    by_lower = {key.lower(): spec for key, spec in _catalog().items()}
    try:
        return by_lower[name.strip().lower()]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; known models: {', '.join(list_models())} "
            "(or load any decoder-only config.json with model_from_hf_config)"
        ) from None


def model_from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """Build a spec from a Hugging Face ``config.json`` on disk (a file or its directory).

    ``name`` defaults to the directory holding the config. Raises ValueError naming the file
    for a missing key, an unknown or encoder-decoder architecture, or an invalid shape.
    """
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no Hugging Face config at {file}")
    try:
        cfg: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from exc
    model_type = _model_type(cfg, file)
    gated_mlp, tie_default = _FAMILIES[model_type]

    fields: dict[str, Any] = {}
    missing = []
    for field, keys in _REQUIRED_KEYS.items():
        fields[field] = _first(cfg, keys)
        if fields[field] is None:
            missing.append(f"{field} (looked for {' / '.join(keys)})")
    intermediate = _first(cfg, ("intermediate_size", "n_inner"))
    if intermediate is None and model_type in ("gpt2", "gpt_bigcode") and fields["hidden_size"]:
        intermediate = 4 * fields["hidden_size"]  # GPT-2's n_inner: null means 4 × n_embd
    fields["intermediate_size"] = intermediate
    if intermediate is None:
        missing.append("intermediate_size (looked for intermediate_size / n_inner)")
    if missing:
        raise ValueError(f"{file}: missing required key(s): {'; '.join(missing)}")

    heads = fields["num_heads"]
    kv_heads = 1 if cfg.get("multi_query") else cfg.get("num_key_value_heads") or heads
    num_experts = _first(cfg, ("num_local_experts", "num_experts", "n_routed_experts")) or 0
    moe_size = cfg.get("moe_intermediate_size") if num_experts else None
    num_shared = _num_shared_experts(cfg, moe_size or intermediate) if num_experts else 0
    fields.update(
        name=name or (file.parent.name if file.name == "config.json" else file.stem),
        num_kv_heads=kv_heads,
        head_dim=cfg.get("head_dim") or fields["hidden_size"] // heads,
        tie_word_embeddings=cfg.get("tie_word_embeddings", tie_default),
        gated_mlp=gated_mlp,
        sliding_window_tokens=_sliding_window(cfg, model_type, fields["num_layers"], file),
        num_experts=num_experts,
        num_experts_per_token=(cfg.get("num_experts_per_tok") or 0) if num_experts else 0,
        moe_intermediate_size=moe_size,
        num_shared_experts=num_shared,
    )
    try:
        return ModelSpec(**fields)
    except ValidationError as exc:
        raise ValueError(f"{file}: config does not describe a valid model: {exc}") from exc


def _first(cfg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first key that is set (not absent, not null), else None."""
    return next((cfg[k] for k in keys if cfg.get(k) is not None), None)


def _model_type(cfg: dict[str, Any], file: Path) -> str:
    model_type = cfg.get("model_type")
    architectures = cfg.get("architectures") or []
    if cfg.get("is_encoder_decoder") or model_type in _ENCODER_DECODER:
        raise ValueError(
            f"{file}: {model_type or architectures} is an encoder-decoder model; "
            "servesim simulates decoder-only transformers"
        )
    if model_type in _FAMILIES:
        return str(model_type)
    for arch in architectures:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    raise ValueError(
        f"{file}: unknown architecture (model_type={model_type!r}, architectures={architectures}); "
        f"supported model_type values: {', '.join(sorted(_FAMILIES))}"
    )


def _sliding_window(
    cfg: dict[str, Any], model_type: str, num_layers: int, file: Path
) -> int | None:
    """The window every layer uses, or None. A window on only some layers is dropped (and
    logged): one window for all layers would under-count the KV of the global layers."""
    window = cfg.get("sliding_window")
    if not window:
        return None
    if model_type in _QWEN:
        if not cfg.get("use_sliding_window"):
            return None
        # Qwen windows only layers at index >= max_window_layers (28 is Qwen2Config's default).
        num_full_layers = min(int(cfg.get("max_window_layers", 28)), num_layers)
    elif model_type in _WINDOW_ALL_LAYERS:
        num_full_layers = 0
    elif model_type in _WINDOW_SOME_LAYERS:
        num_full_layers = 1  # stands for "some": Gemma 2/3 interleave local and global layers
    else:
        return None
    if num_full_layers == num_layers:
        return None
    if num_full_layers:
        logger.warning(
            "%s: sliding window of %d tokens on some layers only; modelled as full attention "
            "(KV over-counted)",
            file,
            window,
        )
        return None
    return int(window)


def _num_shared_experts(cfg: dict[str, Any], expert_size: int) -> int:
    """Shared experts in units of one routed expert's width (Qwen-MoE gives one wide one)."""
    if cfg.get("shared_expert_intermediate_size"):
        shared_size = cfg["shared_expert_intermediate_size"]
        if shared_size % expert_size:
            logger.warning("shared expert width %d rounded to whole experts", shared_size)
        return max(1, round(shared_size / expert_size))
    return int(cfg.get("n_shared_experts") or 0)
