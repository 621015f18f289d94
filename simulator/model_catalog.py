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
from simulator.recurrent import GatedDeltaNetMixer, Mamba2Mixer, MambaMixer, RWKV6Mixer

logger = logging.getLogger(__name__)

# model_type -> (gated MLP, tie_word_embeddings when the config omits it). The tie defaults
# are those of the transformers config classes: GPT-2, GPT-BigCode and Gemma tie by default.
_FAMILIES: dict[str, tuple[bool, bool]] = {
    "llama": (True, False), "mistral": (True, False), "mixtral": (True, False),
    "qwen2": (True, False), "qwen2_moe": (True, False),
    "qwen3": (True, False), "qwen3_moe": (True, False),
    "gemma": (True, True), "gemma2": (True, True), "gemma3_text": (True, True),
    "gpt2": (False, True), "gpt_bigcode": (False, True), "gpt_neox": (False, False),
    "deepseek_v2": (True, False), "deepseek_v3": (True, False), "gpt_oss": (True, False),
    "jamba": (True, False), "qwen3_next": (True, False), "mamba": (True, True),
    "mamba2": (True, False), "rwkv6": (False, False),
}  # fmt: skip
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
    "GPT2LMHeadModel": "gpt2", "GPTBigCodeForCausalLM": "gpt_bigcode",
    "GPTNeoXForCausalLM": "gpt_neox", "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3", "GptOssForCausalLM": "gpt_oss",
    "JambaForCausalLM": "jamba", "Qwen3NextForCausalLM": "qwen3_next",
    "MambaForCausalLM": "mamba", "Mamba2ForCausalLM": "mamba2", "Rwkv6ForCausalLM": "rwkv6",
}  # fmt: skip
_ENCODER_DECODER = {"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "whisper"}
_QWEN = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next"}
_WINDOW_ALL_LAYERS = {"mistral", "mixtral"}  # a set sliding_window applies to every layer
# Local and global layers interleave (gpt-oss: layer_types alternates sliding and full).
_WINDOW_SOME_LAYERS = {"gemma2", "gemma3_text", "gpt_oss"}
_RECURRENT_ONLY = {"mamba", "mamba2", "rwkv6"}  # no attention layer at all
# Keys a recurrent-only config may lack: heads come from the mixer, and nothing bounds
# the context.
_NOT_REQUIRED_RECURRENT = ("num_heads", "max_context_tokens")

NO_POSITION_LIMIT_TOKENS = 1 << 20
"""max_context_tokens of models without a position limit (recurrent-only, no
max_position_embeddings): 2^20 tokens stands for unlimited."""

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
    Besides Hugging Face configs, reads ``mamba_ssm``'s own format (``d_model``,
    ``n_layer``, ``ssm_cfg``), as ``state-spaces/mamba2-*`` ship it.
    """
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no Hugging Face config at {file}")
    try:
        cfg: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from exc
    if "ssm_cfg" in cfg and "d_model" in cfg and "model_type" not in cfg:
        cfg = _mamba_ssm_as_hf(cfg, file)
    model_type = _model_type(cfg, file)
    gated_mlp, tie_default = _FAMILIES[model_type]
    recurrent_only = model_type in _RECURRENT_ONLY

    fields: dict[str, Any] = {}
    missing = []
    for field, keys in _REQUIRED_KEYS.items():
        fields[field] = _first(cfg, keys)
        if fields[field] is None and not (recurrent_only and field in _NOT_REQUIRED_RECURRENT):
            missing.append(f"{field} (looked for {' / '.join(keys)})")
    intermediate = _intermediate_size(cfg, model_type, fields["hidden_size"])
    fields["intermediate_size"] = intermediate
    if intermediate is None:
        missing.append("intermediate_size (looked for intermediate_size / n_inner)")
    if missing:
        raise ValueError(f"{file}: missing required key(s): {'; '.join(missing)}")
    if fields["max_context_tokens"] is None:
        fields["max_context_tokens"] = NO_POSITION_LIMIT_TOKENS  # a recurrent model

    layers = _layer_fields(cfg, model_type, fields["hidden_size"], file)
    heads = layers.pop("num_heads", None) or fields["num_heads"]
    fields["num_heads"] = heads
    kv_heads = layers.pop("num_kv_heads", None) or (
        1 if cfg.get("multi_query") else cfg.get("num_key_value_heads") or heads)
    head_dim = layers.pop("head_dim", None) or cfg.get("head_dim") or fields["hidden_size"] // heads
    num_experts = _first(cfg, ("num_local_experts", "num_experts", "n_routed_experts")) or 0
    moe_size = cfg.get("moe_intermediate_size") if num_experts else None
    num_shared = _num_shared_experts(cfg, moe_size or intermediate or 1) if num_experts else 0
    fields.update(
        name=name or (file.parent.name if file.name == "config.json" else file.stem),
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=cfg.get("tie_word_embeddings", tie_default),
        gated_mlp=gated_mlp,
        sliding_window_tokens=_sliding_window(cfg, model_type, fields["num_layers"], file),
        num_experts=num_experts,
        num_experts_per_token=(
            _first(cfg, ("num_experts_per_tok", "experts_per_token")) or 0) if num_experts else 0,
        moe_intermediate_size=moe_size,
        num_shared_experts=num_shared,
        **(_moe_layer_fields(cfg, model_type) if num_experts else {}),
        **layers,
    )
    try:
        return ModelSpec(**fields)
    except ValidationError as exc:
        raise ValueError(f"{file}: config does not describe a valid model: {exc}") from exc


def _intermediate_size(cfg: dict[str, Any], model_type: str, hidden: int | None) -> int | None:
    """The dense MLP width; 0 for Mamba, whose layers have none (its ``intermediate_size``
    is the SSM's inner width)."""
    if model_type in ("mamba", "mamba2"):
        return 0
    intermediate = _first(cfg, ("intermediate_size", "n_inner"))
    if intermediate is None and hidden:
        if model_type in ("gpt2", "gpt_bigcode"):
            return 4 * hidden  # GPT-2's n_inner: null means 4 × n_embd
        if model_type == "rwkv6":
            return int(hidden * 3.5) // 32 * 32  # RWKV-6's channel mix: 3.5 × hidden
    return intermediate


def _require(cfg: dict[str, Any], keys: tuple[str, ...], file: Path) -> dict[str, Any]:
    """The values of ``keys`` (ValueError naming the file and the absent keys)."""
    missing = [f"{key} (looked for {key})" for key in keys if cfg.get(key) is None]
    if missing:
        raise ValueError(f"{file}: missing required key(s): {'; '.join(missing)}")
    return {key: cfg[key] for key in keys}


def _layer_fields(cfg: dict[str, Any], model_type: str, hidden: int, file: Path
                  ) -> dict[str, Any]:
    """ModelSpec fields of the families beyond a uniform transformer: multi-head latent
    attention, recurrent mixers and which layers hold them. May set num_heads,
    num_kv_heads and head_dim (recurrent-only models: the recurrent heads)."""
    if model_type in ("deepseek_v2", "deepseek_v3"):
        mla = _require(cfg, ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                             "v_head_dim"), file)
        return {**mla, "q_lora_rank": cfg.get("q_lora_rank"),
                "head_dim": mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]}
    if model_type == "jamba":  # defaults: transformers' JambaConfig
        rank = cfg.get("mamba_dt_rank", "auto")
        mixer = MambaMixer(expand=cfg.get("mamba_expand", 2), state_size=cfg.get(
            "mamba_d_state", 16), conv_kernel=cfg.get("mamba_d_conv", 4),
            time_step_rank=None if rank == "auto" else rank)
        return {"recurrent": mixer, "attn_layer_period": cfg.get("attn_layer_period", 8),
                "attn_layer_offset": cfg.get("attn_layer_offset", 4)}
    if model_type == "mamba":  # defaults: transformers' MambaConfig
        expand = cfg.get("expand", 2)
        inner = cfg.get("intermediate_size") or expand * hidden
        rank = cfg.get("time_step_rank", "auto")
        mixer = MambaMixer(expand=inner // hidden, state_size=cfg.get("state_size", 16),
                           conv_kernel=cfg.get("conv_kernel", 4),
                           time_step_rank=None if rank == "auto" else rank)
        # No heads: the inner channels stand in for them, so tensor parallelism must divide
        # them, as vLLM requires.
        return {"recurrent": mixer, "num_heads": inner, "num_kv_heads": inner, "head_dim": 1}
    if model_type == "mamba2":  # defaults: transformers' Mamba2Config
        mixer2 = Mamba2Mixer(num_heads=cfg.get("num_heads", 128), head_dim=cfg.get(
            "head_dim", 64), state_size=cfg.get("state_size", 128), n_groups=cfg.get(
            "n_groups", 8), conv_kernel=cfg.get("conv_kernel", 4))
        return {"recurrent": mixer2, "num_heads": mixer2.num_heads,
                "num_kv_heads": mixer2.num_heads, "head_dim": mixer2.head_dim}
    if model_type == "rwkv6":
        head_size = cfg.get("head_size") or 64
        att = cfg.get("attention_hidden_size") or hidden
        wide = hidden == 4096  # RWKV-6 doubles its low-rank widths for the 4096-wide 7B
        rwkv = RWKV6Mixer(head_size=head_size,
                          attention_hidden_size=None if att == hidden else att,
                          time_mix_extra_dim=64 if wide else 32,
                          time_decay_extra_dim=128 if wide else 64)
        return {"recurrent": rwkv, "num_heads": att // head_size,
                "num_kv_heads": att // head_size, "head_dim": head_size}
    if model_type == "qwen3_next":
        linear = _require(cfg, ("linear_num_key_heads", "linear_num_value_heads",
                                "linear_key_head_dim", "linear_value_head_dim"), file)
        gdn = GatedDeltaNetMixer(
            num_key_heads=linear["linear_num_key_heads"],
            num_value_heads=linear["linear_num_value_heads"],
            key_head_dim=linear["linear_key_head_dim"],
            value_head_dim=linear["linear_value_head_dim"],
            conv_kernel=cfg.get("linear_conv_kernel_dim", 4))
        out: dict[str, Any] = {"recurrent": gdn,
                               "attn_output_gate": cfg.get("attn_output_gate", True)}
        if cfg.get("layer_types"):
            kinds = {"full_attention": "attention", "linear_attention": "recurrent"}
            unknown = sorted(set(cfg["layer_types"]) - set(kinds))
            if unknown:
                raise ValueError(f"{file}: layer_types has unknown kinds {unknown}; known: "
                                 f"{', '.join(kinds)}")
            out["layer_types"] = tuple(kinds[k] for k in cfg["layer_types"])
        else:
            interval = cfg.get("full_attention_interval", 4)
            out.update(attn_layer_period=interval, attn_layer_offset=interval - 1)
        return out
    return {}


def _moe_layer_fields(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Which layers of an MoE config hold experts (the rest have a dense MLP)."""
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return {"first_k_dense_replace": cfg.get("first_k_dense_replace") or 0,
                "expert_layer_period": cfg.get("moe_layer_freq") or 1}
    if model_type == "jamba":
        return {"expert_layer_period": cfg.get("expert_layer_period", 2),
                "expert_layer_offset": cfg.get("expert_layer_offset", 1)}
    if model_type in _QWEN:  # layer i is sparse when (i + 1) % decoder_sparse_step == 0
        step = cfg.get("decoder_sparse_step") or 1
        return {"expert_layer_period": step, "expert_layer_offset": step - 1,
                "mlp_only_layers": tuple(cfg.get("mlp_only_layers") or ())}
    return {}


def _mamba_ssm_as_hf(cfg: dict[str, Any], file: Path) -> dict[str, Any]:
    """A ``mamba_ssm`` config (``MambaConfig`` of state-spaces/mamba) in Hugging Face
    names. Defaults are mamba_ssm's: Mamba1 d_state 16, Mamba2 d_state 128, headdim 64,
    ngroups 1; d_conv 4, expand 2; the vocabulary padded to pad_vocab_size_multiple."""
    if cfg.get("attn_layer_idx"):
        raise ValueError(f"{file}: attn_layer_idx {cfg['attn_layer_idx']} (attention layers in "
                         "a mamba_ssm config) is not read; describe the model as a ModelSpec")
    if cfg.get("d_intermediate"):
        raise ValueError(f"{file}: d_intermediate={cfg['d_intermediate']} (an MLP after each "
                         "layer of a mamba_ssm config) is not read; describe the model as a "
                         "ModelSpec")
    ssm = cfg.get("ssm_cfg") or {}
    layer = ssm.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise ValueError(f"{file}: ssm_cfg.layer={layer!r} is not Mamba1 or Mamba2")
    pad = cfg.get("pad_vocab_size_multiple", 8)
    vocab = cfg.get("vocab_size", 50277)
    hf: dict[str, Any] = {
        "hidden_size": cfg["d_model"], "num_hidden_layers": cfg.get("n_layer", 64),
        "vocab_size": -(-vocab // pad) * pad,
        "tie_word_embeddings": cfg.get("tie_embeddings", True),
        "conv_kernel": ssm.get("d_conv", 4), "expand": ssm.get("expand", 2),
    }
    if layer == "Mamba1":
        return {**hf, "model_type": "mamba", "state_size": ssm.get("d_state", 16),
                "time_step_rank": ssm.get("dt_rank", "auto")}
    head_dim = ssm.get("headdim", 64)
    return {**hf, "model_type": "mamba2", "state_size": ssm.get("d_state", 128),
            "head_dim": head_dim, "num_heads": hf["expand"] * cfg["d_model"] // head_dim,
            "n_groups": ssm.get("ngroups", 1)}


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
