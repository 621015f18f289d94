"""What-if knobs from the LLM-efficiency literature, as scenario configuration.

Each knob changes the model's cost and memory or the behaviour of decoding; servesim
predicts speed and memory, never accuracy. This module holds only their validated
configuration; the cost model, memory plan, model transforms and replica act on it.

- Decoding (``engine.decoding``): autoregressive, speculative (a draft model, EAGLE or
  Medusa heads, multi-token prediction), lookahead (Jacobi iteration with an n-gram
  pool), beam search and parallel sampling.
- Model transforms (``model_transforms``): structured pruning, 2:4 and unstructured
  sparsity, low-rank factorisation, distillation into a smaller student; applied in
  order.
- Precision: per-layer weight formats (``deployment.layer_weight_dtypes``) and
  group-wise weight quantisation (``deployment.weight_group_size``).
- Kernels (``engine.attention``, ``engine.kernel_fusion``, ``engine.cuda_graphs``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.dtypes import DType
from simulator.model import ModelSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- decoding ----


class Autoregressive(_Frozen):
    """One token per sequence per step (the default)."""

    kind: Literal["autoregressive"] = "autoregressive"


class FixedAcceptance(_Frozen):
    """Every speculated token is accepted with probability ``rate``, independently."""

    kind: Literal["fixed"] = "fixed"
    rate: float = Field(ge=0, le=1, description="Per-token acceptance probability α.")


class BetaAcceptance(_Frozen):
    """Each request draws its own α from a Beta distribution (prompts differ in how
    predictable their continuations are), then accepts each token with it."""

    kind: Literal["beta"] = "beta"
    mean: float = Field(gt=0, lt=1, description="Mean α over requests.")
    concentration: float = Field(
        default=10.0, gt=0, description="α + β of the Beta; larger means less spread."
    )


AcceptanceConfig = Annotated[FixedAcceptance | BetaAcceptance, Field(discriminator="kind")]


class SpeculativeDecoding(_Frozen):
    """Propose ``num_speculative_tokens`` (γ) tokens cheaply, verify γ + 1 positions in
    one target forward; the accepted prefix plus one token are kept.

    Proposers: ``draft`` (a smaller catalog model run γ times, with its own KV cache),
    ``eagle`` (a one-layer head over the target's hidden states), ``medusa`` (γ MLP
    heads, one pass), ``mtp`` (the model's own multi-token-prediction module, one layer
    per token, as DeepSeek-V3)."""

    kind: Literal["speculative"] = "speculative"
    proposer: Literal["draft", "eagle", "medusa", "mtp"] = Field(
        default="draft", description="How tokens are proposed."
    )
    draft_model: str | ModelSpec | None = Field(
        default=None,
        description="Catalog name or spec of the draft model (proposer 'draft' only).",
    )
    num_speculative_tokens: int = Field(
        default=4, ge=1, le=16, description="Tokens proposed per step (γ)."
    )
    acceptance: AcceptanceConfig = Field(
        default_factory=lambda: FixedAcceptance(rate=0.7),
        description="Acceptance per proposed token: {kind: fixed, rate: α} or {kind: beta, "
        "mean, concentration} (α per request).",
    )
    acceptance_by_priority: dict[int, float] = Field(
        default_factory=dict,
        description="α for requests of a given priority (a workload class), overriding "
        "`acceptance` for them.",
    )

    @model_validator(mode="after")
    def _check_draft(self) -> SpeculativeDecoding:
        if (self.proposer == "draft") != (self.draft_model is not None):
            raise ValueError(
                f"speculative proposer={self.proposer!r} "
                + ("needs draft_model (a catalog name, e.g. llama-3.2-1b)"
                   if self.proposer == "draft" else "takes no draft_model")
            )
        for priority, rate in self.acceptance_by_priority.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"acceptance_by_priority[{priority}]={rate} must be in [0, 1]")
        return self


class LookaheadDecoding(_Frozen):
    """Lookahead decoding (Fu et al., ICML 2024): each step runs a Jacobi lookahead branch
    of ``window`` (W) positions over ``ngram`` - 1 (N - 1) levels and verifies up to
    ``candidates`` (G) n-grams from its pool, all in one forward; no draft model.

    The tokens computed per sequence per step are W (N - 1) + G (N - 1) + 1; the tokens
    accepted per step are 1 + a Poisson draw with mean ``mean_accepted_tokens`` - 1,
    capped at N (the paper's measured speed-ups, 1.5-2.3x on MT-Bench, set the mean)."""

    kind: Literal["lookahead"] = "lookahead"
    window: int = Field(default=5, ge=1, description="Lookahead window W.")
    ngram: int = Field(default=4, ge=2, description="N-gram size N.")
    candidates: int = Field(default=5, ge=1, description="N-grams verified per step G.")
    mean_accepted_tokens: float = Field(
        default=1.8, ge=1,
        description="Mean tokens accepted per step (>= 1); at most ngram per step.",
    )

    @model_validator(mode="after")
    def _check_mean(self) -> LookaheadDecoding:
        if self.mean_accepted_tokens > self.ngram:
            raise ValueError(
                f"lookahead mean_accepted_tokens={self.mean_accepted_tokens} exceeds "
                f"ngram={self.ngram}, the most one step can accept"
            )
        return self


class BeamSearch(_Frozen):
    """``beam_width`` sequences per request share the prompt's KV blocks (copy-on-write
    of the last, partial one), decode together and end together; one is returned."""

    kind: Literal["beam"] = "beam"
    beam_width: int = Field(ge=2, le=64, description="Beams per request.")


class ParallelSampling(_Frozen):
    """``n`` samples per request (vLLM's ``n``), sharing the prompt's KV blocks; all of
    them are returned. Modelled with the request's output length for each sample."""

    kind: Literal["parallel_sampling"] = "parallel_sampling"
    n: int = Field(ge=2, le=64, description="Samples per request.")


DecodingConfig = Annotated[
    Autoregressive | SpeculativeDecoding | LookaheadDecoding | BeamSearch | ParallelSampling,
    Field(discriminator="kind"),
]


# ---- model transforms ----


class Prune(_Frozen):
    """Structured pruning: whole layers, attention heads and MLP channels removed."""

    kind: Literal["prune"] = "prune"
    layers_frac: float = Field(default=0.0, ge=0, lt=1, description="Share of layers removed.")
    heads_frac: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of query heads removed (KV heads keep their ratio to them).",
    )
    ffn_frac: float = Field(
        default=0.0, ge=0, lt=1, description="Share of MLP (and expert) width removed."
    )


class Sparsity(_Frozen):
    """Weight sparsity in the linear layers. ``2:4`` (two of every four weights zero)
    runs at the sparse tensor-core rate where the accelerator has one and stores half
    the values plus 2-bit indices; ``unstructured`` keeps ``density_frac`` of the weights
    and saves bytes only in a sparse storage format (compute stays dense)."""

    kind: Literal["sparsity"] = "sparsity"
    pattern: Literal["2:4", "unstructured"] = Field(description="Sparsity pattern.")
    density_frac: float = Field(
        default=0.5, gt=0, le=1,
        description="Share of weights kept (unstructured only; 2:4 keeps 0.5).",
    )
    storage: Literal["dense", "sparse"] = Field(
        default="sparse",
        description="Unstructured only: 'sparse' stores values and 16-bit indices (CSR-like), "
        "'dense' stores zeros (no saving).",
    )


class LowRank(_Frozen):
    """Factorise chosen linear layers W (k x n) into A (k x r) B (r x n)."""

    kind: Literal["low_rank"] = "low_rank"
    rank: int = Field(gt=0, description="Rank r of the factorisation.")
    targets: tuple[Literal["qkv", "o", "mlp"], ...] = Field(
        default=("mlp",), min_length=1, description="Which linear layers are factorised."
    )


class Distill(_Frozen):
    """Knowledge distillation: serve a smaller student model instead."""

    kind: Literal["distill"] = "distill"
    student: str | ModelSpec = Field(description="Catalog name or spec of the student.")


ModelTransform = Annotated[Prune | Sparsity | LowRank | Distill, Field(discriminator="kind")]


# ---- precision and kernels ----


class LayerWeightDType(_Frozen):
    """Weight format for some layers (per-layer mixed precision)."""

    layers: tuple[int, ...] = Field(
        min_length=1, description="Layer indices; negative ones count from the end (-1: last)."
    )
    weight_dtype: DType = Field(description="Storage format of these layers' linear weights.")


class AttentionConfig(_Frozen):
    """The attention kernel and its sparsity pattern."""

    kernel: Literal["flash", "unfused"] = Field(
        default="flash",
        description="'flash': fused attention that never writes the score matrix "
        "(FlashAttention); 'unfused': QK^T, softmax and PV as separate kernels, the "
        "score matrix written to and read from memory.",
    )
    sparse_window_tokens: int | None = Field(
        default=None, gt=0,
        description="Sparse attention: each query attends to this many recent tokens "
        "(local window) plus `sparse_global_tokens`; caps the KV read. None: dense.",
    )
    sparse_global_tokens: int = Field(
        default=0, ge=0, description="Tokens every query attends to (attention sinks, "
        "global tokens), with the local window.",
    )
