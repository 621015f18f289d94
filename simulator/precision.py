"""Numeric formats as the cost model and the memory plan see them: bytes per weight with
their quantisation scales, bytes per KV-cache vector, which GEMMs dequantise, and
per-layer weight formats resolved against a model.

The formats and their sources are in docs/optimizations.md ("Precision and
quantization"). Nothing here prices time: ``simulator.cost`` does, with these sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulator.dtypes import BYTES_PER_ELEMENT, ComputeDType, DType
from simulator.errors import ScenarioError
from simulator.model import LayerCounts, ModelSpec
from simulator.optimizations import LayerWeightDType

QUANTISED_DTYPES: tuple[DType, ...] = ("fp8", "int8", "int4")
"""Formats narrower than the 16-bit activations: weight-only GEMMs dequantise them."""

GROUP_SCALE_BYTES = 2.0
"""One scale per group of input channels and output channel, fp16: the ``scales`` tensor
of AutoGPTQ's ``QuantLinear`` and AutoAWQ's ``WQLinear_GEMM``, shape (K / group, N), and
Marlin's (whose README counts "0.125 bits storage overhead of the group scales" at group
size 128)."""

KV_INT4_PARAM_BYTES = 4.0
"""An int4 KV cache quantises each token's K and V of each KV head on its own,
asymmetrically (LMDeploy's ``quant_policy=4``: "per-head, per-token"): a 16-bit scale
and a 16-bit zero point per vector of head_dim elements (MLA: per latent vector). fp8
and int8 caches use per-tensor scales (vLLM's ``k_scale``/``v_scale``, TensorRT-LLM's
int8 KV), which take no room per token."""


def weight_bytes_per_element(dtype: DType, group_size: int | None) -> float:
    """Bytes one linear weight takes in ``dtype``, its share of the group scales included.

    Quantised formats (fp8, int8, int4) with ``group_size`` = g keep, per g input
    channels and per output channel, an fp16 scale and, for the integer formats, a zero
    point of the weight's own width (AutoGPTQ/AutoAWQ's ``qzeros``: ``bits`` per value,
    packed in int32): (2 + bytes(dtype)) / g more bytes per weight (int4, g = 128:
    0.5 + 2.5/128 = 0.5195 bytes, 4.16 bits). With ``group_size`` None the scales are
    per output channel or per tensor, one per K weights or fewer: left out. GPTQ's
    ``g_idx`` (4 bytes per input channel, 1/N of a byte per weight) is left out too.
    16- and 32-bit formats ignore ``group_size``."""
    size = BYTES_PER_ELEMENT[dtype]
    if group_size is None or dtype not in QUANTISED_DTYPES:
        return size
    zero_point = 0.0 if dtype == "fp8" else size
    return size + (GROUP_SCALE_BYTES + zero_point) / group_size


def kv_vector_bytes(dtype: DType, elements: int) -> float:
    """Bytes of one cached vector (one token's K or V of one KV head, or MLA's latent) of
    ``elements`` elements in ``dtype``: the elements, plus an int4 cache's scale and zero
    point (``KV_INT4_PARAM_BYTES``)."""
    extra = KV_INT4_PARAM_BYTES if dtype == "int4" else 0.0
    return elements * BYTES_PER_ELEMENT[dtype] + extra


def dequantises(weight_dtype: DType, compute_dtype: ComputeDType) -> bool:
    """Whether a GEMM of ``weight_dtype`` weights computing in ``compute_dtype`` must widen
    its weights first (a weight-only kernel: Marlin, AWQ, Machete, FP8 Marlin on parts
    without an fp8 rate). W8A8 GEMMs read 8-bit weights directly."""
    return weight_dtype in QUANTISED_DTYPES and compute_dtype not in QUANTISED_DTYPES


def resolve_layer_weight_dtypes(model: ModelSpec, weight_dtype: DType,
                                overrides: Sequence[LayerWeightDType],
                                field: str = "deployment.layer_weight_dtypes"
                                ) -> tuple[DType, ...] | None:
    """One weight format per layer of ``model``: ``weight_dtype`` except where an entry of
    ``overrides`` names the layer (negative indices count from the end). None when there
    are no overrides. Raises ``ScenarioError`` naming ``field``, the value and the model's
    layers for an index outside the model or a layer two entries both name."""
    if not overrides:
        return None
    n = model.num_layers
    dtypes: list[DType] = [weight_dtype] * n
    named_by: dict[int, int] = {}
    for i, entry in enumerate(overrides):
        for index in entry.layers:
            if not -n <= index < n:
                raise ScenarioError(
                    f"{field}[{i}].layers has layer {index}, but {model.name} has num_layers="
                    f"{n} (indices {-n} to {n - 1}; negative ones count from the end)")
            layer = index % n
            if layer in named_by and named_by[layer] != i:
                raise ScenarioError(
                    f"{field}[{i}].layers has layer {index}, which {field}"
                    f"[{named_by[layer]}] already gives a format ({model.name} layer {layer} "
                    f"of num_layers={n})")
            named_by[layer] = i
            dtypes[layer] = entry.weight_dtype
    return tuple(dtypes)


def layer_counts_by_dtype(model: ModelSpec, layer_dtypes: Sequence[DType], start: int,
                          end: int) -> tuple[tuple[DType, LayerCounts], ...]:
    """The layers [start, end) grouped by weight format (``layer_dtypes``: one per model
    layer), each format with how many layers of each kind it holds; formats in the order
    they first appear. The groups' counts add up to ``model.layer_counts(start, end)``."""
    mixers, blocks = model.mixer_kinds, model.block_kinds
    members: dict[DType, list[int]] = {}
    for layer in range(start, end):
        members.setdefault(layer_dtypes[layer], []).append(layer)
    groups = []
    for dtype, layers in members.items():
        mixer = [mixers[i] for i in layers]
        block = [blocks[i] for i in layers]
        groups.append((dtype, LayerCounts(
            num_layers=len(layers),
            num_attention=mixer.count("attention"),
            num_recurrent=mixer.count("recurrent"),
            num_moe=block.count("moe"),
            num_dense_mlp=block.count("dense"),
        )))
    return tuple(groups)
