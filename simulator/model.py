"""ModelSpec: the architecture numbers the cost model needs, for any decoder-only model.

A spec is pure shape: layers, widths, heads, experts. Parameter counts, per-token KV
sizes and per-sequence recurrent state sizes are derived here once, so the cost model
and the memory check agree.

A layer is a token *mixer* followed by a feed-forward *block*:

- the mixer is attention (multi-head, GQA/MQA, or DeepSeek's multi-head latent attention
  when ``kv_lora_rank`` is set) or a recurrent layer (``recurrent``: Mamba, Mamba-2,
  RWKV-6 or Gated DeltaNet, ``simulator.recurrent``), per ``layer_types`` or the
  ``attn_layer_period`` / ``attn_layer_offset`` pattern;
- the block is a dense MLP (``intermediate_size``), a mixture of experts
  (``num_experts``, on the layers ``first_k_dense_replace``, ``expert_layer_period``,
  ``expert_layer_offset`` and ``mlp_only_layers`` select), or nothing
  (``intermediate_size: 0``: pure Mamba models, whose mixer is the whole layer).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.recurrent import RecurrentMixer

LayerKind = Literal["attention", "recurrent"]
"""What mixes tokens in a layer: attention (KV cache) or a recurrence (constant state)."""

BlockKind = Literal["moe", "dense", "none"]
"""What follows the mixer: routed experts, a dense MLP, or nothing."""


class LayerCounts(NamedTuple):
    """How many layers of each kind lie in a range of layers (``ModelSpec.layer_counts``).

    Invariants: ``num_attention + num_recurrent == num_layers`` and
    ``num_moe + num_dense_mlp <= num_layers`` (the rest have no MLP)."""

    num_layers: int
    num_attention: int
    num_recurrent: int
    num_moe: int
    num_dense_mlp: int


class ModelSpec(BaseModel):
    """Shape of a decoder-only model: dense or mixture-of-experts, attention (MHA, GQA,
    MQA, MLA), recurrent (state-space, RWKV, linear attention) or a hybrid of both.

    Field names follow Hugging Face ``config.json`` where one exists, so a spec reads
    like the config it came from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Display name, e.g. 'llama-3.1-8b'.")
    num_layers: int = Field(gt=0, description="Decoder layers (HF: num_hidden_layers).")
    hidden_size: int = Field(gt=0, description="Residual stream width (elements).")
    num_heads: int = Field(gt=0, description="Query heads (HF: num_attention_heads). A model "
                           "without attention layers gives its recurrent heads here (they "
                           "bound tensor parallelism).")
    num_kv_heads: int = Field(
        gt=0,
        description="Key/value heads; < num_heads is GQA, 1 is MQA (HF: num_key_value_heads).",
    )
    head_dim: int = Field(gt=0, description="Width of one attention head (elements); with "
                          "MLA, the query/key width qk_nope_head_dim + qk_rope_head_dim.")
    intermediate_size: int = Field(
        ge=0, description="Dense MLP width (elements); for MoE layers see "
        "moe_intermediate_size. 0: layers without an MoE have no MLP at all (Mamba).",
    )
    vocab_size: int = Field(gt=0, description="Vocabulary size (rows of the embedding).")
    max_context_tokens: int = Field(
        gt=0, description="Longest sequence the model supports (HF: max_position_embeddings)."
    )
    tie_word_embeddings: bool = Field(
        default=False, description="LM head shares the embedding matrix (stored once)."
    )
    gated_mlp: bool = Field(
        default=True,
        description="SwiGLU-style MLP with gate, up and down projections (else up, down).",
    )
    sliding_window_tokens: int | None = Field(
        default=None, gt=0, description="Attention window; caps the KV read and kept per layer."
    )
    attn_output_gate: bool = Field(
        default=False, description="The query projection also emits a sigmoid gate as wide "
        "as the attention output (Qwen3-Next; HF: attn_output_gate).",
    )
    # ---- multi-head latent attention (DeepSeek-V2/V3); all None: not MLA ----
    kv_lora_rank: int | None = Field(
        default=None, gt=0, description="MLA: width of the compressed KV latent, the one "
        "vector per token and layer the cache keeps (with the rope key part).")
    q_lora_rank: int | None = Field(
        default=None, gt=0, description="MLA: width of the compressed query (q_a_proj); "
        "None: a plain q_proj.")
    qk_nope_head_dim: int | None = Field(
        default=None, gt=0, description="MLA: per-head query/key width without rotary.")
    qk_rope_head_dim: int | None = Field(
        default=None, gt=0, description="MLA: per-head rotary query/key width (the rope key "
        "is shared by the heads and cached with the latent).")
    v_head_dim: int | None = Field(default=None, gt=0, description="MLA: per-head value width.")
    # ---- mixture of experts ----
    num_experts: int = Field(
        default=0, ge=0, description="Routed experts per MoE layer; 0 means a dense model."
    )
    num_experts_per_token: int = Field(
        default=0, ge=0, description="Experts each token is routed to (top-k)."
    )
    moe_intermediate_size: int | None = Field(
        default=None, gt=0, description="Width of one expert's MLP; defaults to intermediate_size."
    )
    num_shared_experts: int = Field(
        default=0, ge=0, description="Always-active experts per MoE layer (DeepSeek, Qwen-MoE)."
    )
    first_k_dense_replace: int = Field(
        default=0, ge=0, description="MoE models: the first k layers have a dense MLP of "
        "intermediate_size instead of experts (DeepSeek).")
    expert_layer_period: int = Field(
        default=1, gt=0, description="MoE models: layer i has experts when i % period == "
        "expert_layer_offset (Jamba: 2; DeepSeek's moe_layer_freq; Qwen's "
        "decoder_sparse_step s is period s, offset s - 1).")
    expert_layer_offset: int = Field(default=0, ge=0, description="See expert_layer_period.")
    mlp_only_layers: tuple[int, ...] = Field(
        default=(), description="MoE models: layer indices with a dense MLP instead (Qwen).")
    # ---- recurrent (state-space, RWKV, linear attention) layers ----
    recurrent: RecurrentMixer | None = Field(
        default=None, description="The mixer of the recurrent layers (None: every layer is "
        "attention). Which layers are recurrent: layer_types, else attn_layer_period, else all.")
    layer_types: tuple[LayerKind, ...] | None = Field(
        default=None, description="Mixer of each layer, 'attention' or 'recurrent' "
        "(num_layers entries); overrides attn_layer_period.")
    attn_layer_period: int | None = Field(
        default=None, gt=0, description="With recurrent: layer i is attention when i % period "
        "== attn_layer_offset, recurrent otherwise (Jamba: 8 and 4; Qwen3-Next's "
        "full_attention_interval n is period n, offset n - 1).")
    attn_layer_offset: int = Field(default=0, ge=0, description="See attn_layer_period.")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.num_experts and not 0 < self.num_experts_per_token <= self.num_experts:
            raise ValueError(
                f"num_experts_per_token={self.num_experts_per_token} must be in "
                f"1..num_experts={self.num_experts} for an MoE model"
            )
        if not self.num_experts and self.num_experts_per_token:
            raise ValueError("num_experts_per_token is set but num_experts is 0 (dense model)")
        self._check_mla()
        self._check_layer_pattern()
        return self

    def _check_mla(self) -> None:
        mla = {"kv_lora_rank": self.kv_lora_rank, "qk_nope_head_dim": self.qk_nope_head_dim,
               "qk_rope_head_dim": self.qk_rope_head_dim, "v_head_dim": self.v_head_dim}
        given = [k for k, v in mla.items() if v is not None]
        if given and len(given) < len(mla):
            missing = sorted(set(mla) - set(given))
            raise ValueError(f"multi-head latent attention needs {', '.join(sorted(mla))}; "
                             f"{', '.join(given)} set but {', '.join(missing)} missing")
        if not given and self.q_lora_rank is not None:
            raise ValueError("q_lora_rank is set but kv_lora_rank is not (q_lora_rank belongs "
                             "to multi-head latent attention)")
        if given and self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:  # type: ignore[operator]
            raise ValueError(
                f"with multi-head latent attention head_dim must be qk_nope_head_dim + "
                f"qk_rope_head_dim = {self.qk_nope_head_dim} + {self.qk_rope_head_dim}, "
                f"got {self.head_dim}")

    def _check_layer_pattern(self) -> None:
        n = self.num_layers
        if self.layer_types is not None:
            if len(self.layer_types) != n:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                                 f"num_layers={n}")
            if self.attn_layer_period is not None:
                raise ValueError("give layer_types or attn_layer_period, not both")
        if self.recurrent is None and (
            self.attn_layer_period is not None
            or (self.layer_types is not None and "recurrent" in self.layer_types)
        ):
            raise ValueError("recurrent layers need a recurrent mixer (the `recurrent` field)")
        if self.attn_layer_period is not None and self.attn_layer_offset >= self.attn_layer_period:
            raise ValueError(f"attn_layer_offset={self.attn_layer_offset} must be below "
                             f"attn_layer_period={self.attn_layer_period}")
        if self.expert_layer_offset >= self.expert_layer_period:
            raise ValueError(f"expert_layer_offset={self.expert_layer_offset} must be below "
                             f"expert_layer_period={self.expert_layer_period}")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"mlp_only_layers {bad} are not layers of a {n}-layer model")
        if self.is_moe and "moe" not in self.block_kinds:
            raise ValueError("num_experts is set but no layer has experts (check "
                             "first_k_dense_replace, expert_layer_period and mlp_only_layers)")

    # ---- layer pattern ----

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3)."""
        return self.kv_lora_rank is not None

    @property
    def mixer_kinds(self) -> tuple[LayerKind, ...]:
        """Each layer's token mixer, first layer first. Computed on each call, not cached:
        ``model_copy(update=...)`` would carry a cached value over to another shape."""
        n = self.num_layers
        attention: LayerKind = "attention"
        recurrent: LayerKind = "recurrent"
        if self.recurrent is None:
            return (attention,) * n
        if self.layer_types is not None:
            return self.layer_types
        period = self.attn_layer_period
        if period is None:
            return (recurrent,) * n  # a pure state-space / RWKV model
        return tuple(attention if i % period == self.attn_layer_offset else recurrent
                     for i in range(n))

    @property
    def block_kinds(self) -> tuple[BlockKind, ...]:
        """Each layer's feed-forward block, first layer first."""
        dense: BlockKind = "dense" if self.intermediate_size else "none"
        if not self.is_moe:
            return (dense,) * self.num_layers
        moe: BlockKind = "moe"
        only = set(self.mlp_only_layers)
        return tuple(
            moe if (i >= self.first_k_dense_replace and i not in only
                    and i % self.expert_layer_period == self.expert_layer_offset)
            else dense
            for i in range(self.num_layers)
        )

    def layer_counts(self, start: int = 0, end: int | None = None) -> LayerCounts:
        """How many attention, recurrent, MoE and dense-MLP layers lie in layers
        [start, end) (``end`` None: the last layer). Counts over consecutive ranges add up
        to the counts over their union. Raises ValueError for a range outside the model."""
        end = self.num_layers if end is None else end
        if not 0 <= start <= end <= self.num_layers:
            raise ValueError(f"layers [{start}, {end}) are not a range of {self.name}'s "
                             f"{self.num_layers} layers")
        mixers, blocks = self.mixer_kinds[start:end], self.block_kinds[start:end]
        return LayerCounts(
            num_layers=end - start,
            num_attention=mixers.count("attention"),
            num_recurrent=mixers.count("recurrent"),
            num_moe=blocks.count("moe"),
            num_dense_mlp=blocks.count("dense"),
        )

    # ---- derived sizes (elements, not bytes: precision is the deployment's choice) ----

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def q_size(self) -> int:
        """Width of the queries of one token (all heads); without the output gate."""
        return self.num_heads * self.head_dim

    @property
    def attn_out_size(self) -> int:
        """Width of the attention output of one token, the input of o_proj."""
        return self.num_heads * (self.v_head_dim or self.head_dim)

    @property
    def kv_size(self) -> int:
        """Width of K (or of V) for one token in one layer (not MLA)."""
        return self.num_kv_heads * self.head_dim

    @property
    def kv_latent_size(self) -> int:
        """MLA: elements one token caches per layer, the latent and the shared rope key."""
        return (self.kv_lora_rank or 0) + (self.qk_rope_head_dim or 0)

    @property
    def attn_params_per_layer(self) -> int:
        """Query, key/value and output projections of one attention layer. MLA: q_a_proj
        and q_b_proj (or q_proj), kv_a_proj_with_mqa, kv_b_proj and o_proj."""
        h = self.hidden_size
        if self.is_mla:
            assert self.kv_lora_rank and self.qk_nope_head_dim and self.v_head_dim
            heads, rank = self.num_heads, self.kv_lora_rank
            q = (h * self.q_lora_rank + self.q_lora_rank * self.q_size if self.q_lora_rank
                 else h * self.q_size)
            kv = h * self.kv_latent_size + rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + self.attn_out_size * h
        q_width = 2 * self.q_size if self.attn_output_gate else self.q_size
        return h * (q_width + 2 * self.kv_size) + self.q_size * h

    @property
    def attn_replicated_params_per_layer(self) -> int:
        """Attention weights every tensor-parallel device keeps whole: MLA's down
        projections q_a_proj and kv_a_proj_with_mqa (vLLM runs them replicated)."""
        if not self.is_mla:
            return 0
        return self.hidden_size * ((self.q_lora_rank or 0) + self.kv_latent_size)

    @property
    def recurrent_params_per_layer(self) -> int:
        """One recurrent layer's mixer (0 without recurrent layers)."""
        return 0 if self.recurrent is None else self.recurrent.params(self.hidden_size)

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    @property
    def dense_mlp_params_per_layer(self) -> int:
        return self.mlp_matrices * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        """One expert's MLP."""
        return self.mlp_matrices * self.hidden_size * self.expert_intermediate_size

    @property
    def moe_params_per_layer(self) -> int:
        """All weights of one MoE block: every routed expert, the shared ones, the router."""
        router = self.hidden_size * self.num_experts
        return (self.num_experts + self.num_shared_experts) * self.expert_params + router

    @property
    def mlp_params_per_layer(self) -> int:
        """MLP weights of one layer: an MoE block's for an MoE model, else a dense MLP's
        (``layer_params`` counts models that mix the two)."""
        return self.moe_params_per_layer if self.is_moe else self.dense_mlp_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Stored LM head weights (0 when tied to the embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def norm_params(self, start: int = 0, end: int | None = None) -> int:
        """Norm weights of layers [start, end): one before the mixer, one before the MLP
        (where there is one). The final norm is not a layer's."""
        c = self.layer_counts(start, end)
        return (c.num_layers + c.num_moe + c.num_dense_mlp) * self.hidden_size

    def layer_params(self, start: int = 0, end: int | None = None) -> int:
        """Stored parameters of layers [start, end): mixers, MLPs or experts, norms."""
        c = self.layer_counts(start, end)
        return (
            c.num_attention * self.attn_params_per_layer
            + c.num_recurrent * self.recurrent_params_per_layer
            + c.num_dense_mlp * self.dense_mlp_params_per_layer
            + c.num_moe * self.moe_params_per_layer
            + self.norm_params(start, end)
        )

    @property
    def num_params(self) -> int:
        """All stored parameters (norm weights included)."""
        final_norm = self.hidden_size
        return self.layer_params() + self.embedding_params + self.lm_head_params + final_norm

    @property
    def num_active_params(self) -> int:
        """Parameters one token multiplies through (top-k and shared experts only for MoE)."""
        if not self.is_moe:
            return self.num_params
        inactive = (self.num_experts - self.num_experts_per_token) * self.expert_params
        return self.num_params - self.layer_counts().num_moe * inactive

    def kv_elements_per_token(self, start: int = 0, end: int | None = None) -> int:
        """KV-cache elements one token keeps in attention layers [start, end): K and V,
        or MLA's latent. Recurrent layers keep none."""
        layers = self.layer_counts(start, end).num_attention
        per_layer = self.kv_latent_size if self.is_mla else 2 * self.kv_size
        return layers * per_layer

    def state_elements_per_seq(self, start: int = 0, end: int | None = None) -> int:
        """Recurrent state elements one sequence keeps in layers [start, end), whatever
        its length (conv and recurrence states; 0 without recurrent layers)."""
        if self.recurrent is None:
            return 0
        layers = self.layer_counts(start, end).num_recurrent
        return layers * self.recurrent.state_elements(self.hidden_size)
