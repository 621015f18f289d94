"""Model transforms: a scenario's ``model_transforms`` applied to its model, in order.

``prune`` and ``distill`` change the model's shape (a new ``ModelSpec``); ``sparsity`` and
``low_rank`` keep the shape and change how its linear layers are stored and computed,
which the cost model and the memory plan price (``CostModel.sparsity``,
``CostModel.low_rank``). Nothing here knows about accuracy: a transform is a shape and a
weight format, and servesim predicts speed and memory only (docs/optimizations.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from simulator.model import ModelSpec
from simulator.optimizations import Distill, LowRank, ModelTransform, Prune, Sparsity

FFN_MULTIPLE = 64
"""Pruned MLP and expert widths are rounded to a multiple of this many channels: tensor-core
tiles are 64 wide, and 64 keeps the width divisible by every tensor-parallel degree up to 64
(vLLM requires the MLP width to split evenly over the TP group)."""


SPARSE_INDEX_BYTES = 2.0
"""Unstructured sparse storage keeps a 16-bit column index per kept value (CSR-like, as
Flash-LLM's "load as sparse, compute as dense" format and cuSPARSE's CSR with 16-bit
indices)."""
STRUCTURED_METADATA_BYTES = 0.25
"""2:4 sparsity keeps a 2-bit position per kept value (the metadata of NVIDIA's sparse
tensor cores, A100 whitepaper "Fine-Grained Structured Sparsity"; cuSPARSELt)."""


def sparse_weight_bytes(dense_bytes: float, sparsity: Sparsity | None) -> float:
    """Bytes stored and read per weight of a dense matrix (``dense_bytes`` each, scales
    included) under ``sparsity``: 2:4 keeps half the values plus 2-bit metadata per kept
    value (dense_bytes / 2 + 1/8); unstructured with 'sparse' storage keeps density x
    (value + 16-bit index), with 'dense' storage the zeros too (no saving). None: dense."""
    if sparsity is None:
        return dense_bytes
    if sparsity.pattern == "2:4":
        return 0.5 * (dense_bytes + STRUCTURED_METADATA_BYTES)
    if sparsity.storage == "dense":
        return dense_bytes
    return sparsity.density_frac * (dense_bytes + SPARSE_INDEX_BYTES)


@dataclass(frozen=True, slots=True)
class TransformedModel:
    """The model a scenario serves after its transforms, with its linear-layer formats.

    ``model`` is the shape after pruning and distillation; ``sparsity`` and ``low_rank``
    are the weight formats of its transformer linear layers (None: dense, full rank),
    for ``CostModel`` and ``weight_bytes_per_device``."""

    model: ModelSpec
    sparsity: Sparsity | None = None
    low_rank: LowRank | None = None


def apply_transforms(
    model: ModelSpec,
    transforms: Sequence[ModelTransform],
    resolve: Callable[[str], ModelSpec],
) -> TransformedModel:
    """Apply ``transforms`` to ``model`` in order; ``resolve`` turns a distillation
    student's catalog name into its spec (``simulator.model_catalog.get_model``).

    ``distill`` replaces the model, so it may only come first; at most one ``sparsity`` and
    one ``low_rank``. A low-rank factorisation must save weights on every matrix it targets
    in the final shape. Raises ``ValueError`` naming ``model_transforms[i]`` and the field.
    Mutates nothing."""
    sparsity: Sparsity | None = None
    low_rank: tuple[int, LowRank] | None = None
    for i, transform in enumerate(transforms):
        where = f"model_transforms[{i}]"
        if isinstance(transform, Distill):
            if i:
                raise ValueError(
                    f"{where}: distill replaces the model, so it must be model_transforms[0] "
                    f"(transforms before it would change a teacher that is not served)")
            model = _student(transform, resolve, where)
        elif isinstance(transform, Prune):
            model = prune(model, transform, where)
        elif isinstance(transform, Sparsity):
            if sparsity is not None:
                raise ValueError(f"{where}: a second sparsity transform; give one")
            sparsity = transform
        else:
            if low_rank is not None:
                raise ValueError(f"{where}: a second low_rank transform; give one")
            low_rank = (i, transform)
    if low_rank is not None:
        check_low_rank(model, low_rank[1], f"model_transforms[{low_rank[0]}]")
    return TransformedModel(model, sparsity, None if low_rank is None else low_rank[1])


def linear_formats(
    transforms: Sequence[ModelTransform],
) -> tuple[Sparsity | None, LowRank | None]:
    """The sparsity and the low-rank transform among ``transforms``, None where absent
    (``apply_transforms`` allows one of each): ``CostModel.sparsity`` and ``low_rank``."""
    sparsity = next((x for x in transforms if isinstance(x, Sparsity)), None)
    low_rank = next((x for x in transforms if isinstance(x, LowRank)), None)
    return sparsity, low_rank


def _student(transform: Distill, resolve: Callable[[str], ModelSpec], where: str) -> ModelSpec:
    if isinstance(transform.student, ModelSpec):
        return transform.student
    try:
        return resolve(transform.student)
    except KeyError as exc:
        raise ValueError(f"{where}.student: {exc.args[0]}") from None


# ---- structured pruning ----


def prune(model: ModelSpec, p: Prune, where: str = "prune") -> ModelSpec:
    """``model`` with ``p.layers_frac`` of its layers, ``p.heads_frac`` of its query heads
    and ``p.ffn_frac`` of its MLP and expert width removed, named ``<name>+prune``.

    Layers: each kind of layer (mixer x block: attention or recurrent, dense MLP, experts
    or none) loses round(layers_frac x its count) layers, spread evenly through the stack,
    and keeps at least one, so a hybrid keeps its mix and the spec stays valid. Heads:
    KV heads shrink in proportion (at least one) and query heads are rounded to a multiple
    of them. Widths: rounded to a multiple of ``FFN_MULTIPLE`` (at least one multiple).
    Raises ``ValueError`` naming ``where`` and the field when nothing would be left."""
    update: dict[str, object] = {"name": f"{model.name}+prune"}
    if p.layers_frac:
        update |= _prune_layers(model, p.layers_frac)
    if p.heads_frac:
        update |= _prune_heads(model, p.heads_frac, where)
    if p.ffn_frac:
        update |= _prune_ffn(model, p.ffn_frac, where)
    return ModelSpec.model_validate({**model.model_dump(), **update})


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _evenly(indices: list[int], count: int) -> set[int]:
    """``count`` of ``indices`` spread evenly over them (0 < count < len(indices))."""
    step = len(indices) / count
    return {indices[math.floor((j + 0.5) * step)] for j in range(count)}


def _prune_layers(model: ModelSpec, frac: float) -> dict[str, object]:
    kinds = list(zip(model.mixer_kinds, model.block_kinds, strict=True))
    groups: dict[tuple[str, str], list[int]] = {}
    for i, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(i)
    removed: set[int] = set()
    for indices in groups.values():
        count = min(len(indices) - 1, _round_half_up(frac * len(indices)))
        if count > 0:
            removed |= _evenly(indices, count)
    kept = [i for i in range(model.num_layers) if i not in removed]
    update: dict[str, object] = {"num_layers": len(kept)}
    if model.recurrent is not None:  # the kept layers' mixers, spelled out
        update |= {"layer_types": tuple(kinds[i][0] for i in kept), "attn_layer_period": None,
                   "attn_layer_offset": 0}
    if model.is_moe:  # experts everywhere but the kept dense (or MLP-less) layers
        update |= {"first_k_dense_replace": 0, "expert_layer_period": 1, "expert_layer_offset": 0,
                   "mlp_only_layers": tuple(j for j, i in enumerate(kept) if kinds[i][1] != "moe")}
    return update


def _prune_heads(model: ModelSpec, frac: float, where: str) -> dict[str, object]:
    if not model.layer_counts().num_attention:
        raise ValueError(f"{where}.heads_frac={frac}: {model.name} has no attention layers "
                         f"(its recurrent heads are not pruned)")
    heads = _round_half_up(model.num_heads * (1 - frac))
    if heads < 1:
        raise ValueError(f"{where}.heads_frac={frac} leaves no heads of {model.name}'s "
                         f"{model.num_heads}")
    kv_heads = max(1, _round_half_up(model.num_kv_heads * (1 - frac)))
    heads = max(kv_heads, kv_heads * _round_half_up(heads / kv_heads))
    return {"num_heads": heads, "num_kv_heads": kv_heads}


def _pruned_width(width: int, frac: float) -> int:
    if width <= FFN_MULTIPLE:
        return max(1, _round_half_up(width * (1 - frac)))
    return max(FFN_MULTIPLE, FFN_MULTIPLE * _round_half_up(width * (1 - frac) / FFN_MULTIPLE))


def _prune_ffn(model: ModelSpec, frac: float, where: str) -> dict[str, object]:
    if not model.intermediate_size and not model.is_moe:
        raise ValueError(f"{where}.ffn_frac={frac}: {model.name} has no MLP")
    update: dict[str, object] = {}
    if model.intermediate_size:
        update["intermediate_size"] = _pruned_width(model.intermediate_size, frac)
    if model.moe_intermediate_size:
        update["moe_intermediate_size"] = _pruned_width(model.moe_intermediate_size, frac)
    return update


# ---- low rank ----


def low_rank_matrices(model: ModelSpec, target: str) -> list[tuple[str, int, int]]:
    """(name, k, n) of each weight matrix a low-rank ``target`` factorises, whole (before
    tensor parallelism): 'qkv' q_proj, k_proj and v_proj of the attention layers, 'o'
    o_proj, 'mlp' gate/up/down of the dense MLPs, the routed and the shared experts."""
    h = model.hidden_size
    c = model.layer_counts()
    out: list[tuple[str, int, int]] = []
    if target in ("qkv", "o") and c.num_attention:
        if target == "o":
            return [("o_proj", model.attn_out_size, h)]
        q_width = 2 * model.q_size if model.attn_output_gate else model.q_size
        return [("q_proj", h, q_width), ("k_proj", h, model.kv_size), ("v_proj", h, model.kv_size)]
    if target == "mlp":
        widths = []
        if c.num_dense_mlp:
            widths.append(("", model.intermediate_size))
        if c.num_moe:
            widths.append(("expert ", model.expert_intermediate_size))
        for label, width in widths:
            if model.gated_mlp:
                out.append((f"{label}gate_proj", h, width))
            out += [(f"{label}up_proj", h, width), (f"{label}down_proj", width, h)]
    return out


def check_low_rank(model: ModelSpec, low_rank: LowRank, where: str = "low_rank") -> None:
    """Refuse a factorisation that saves nothing: rank r of a k x n matrix stores
    (k + n) r weights instead of k n, so r must be below k n / (k + n) for every targeted
    matrix. Also refuses targets the model does not have, and 'qkv' on multi-head latent
    attention (already factorised). Raises ``ValueError`` naming ``where``; a query."""
    r = low_rank.rank
    for target in low_rank.targets:
        if target == "qkv" and model.is_mla:
            raise ValueError(f"{where}.targets: {model.name}'s latent attention projections are "
                             f"already low rank (q_lora_rank, kv_lora_rank); target o or mlp")
        matrices = low_rank_matrices(model, target)
        if not matrices:
            raise ValueError(f"{where}.targets: {model.name} has no {target!r} layers")
        for name, k, n in matrices:
            if r >= k * n / (k + n):
                raise ValueError(
                    f"{where}.rank={r} saves nothing on {model.name}'s {name} ({k} x {n}): "
                    f"the factors hold (k + n) r = {(k + n) * r:,} weights, the matrix "
                    f"k n = {k * n:,}; the rank must be below k n / (k + n) = "
                    f"{k * n / (k + n):.1f}")
