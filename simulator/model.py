"""ModelSpec: the architecture numbers the cost model needs, for any decoder-only transformer.

A spec is pure shape: layers, widths, heads, experts. Parameter counts and per-token
KV sizes are derived here once, so the cost model and the memory check agree.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelSpec(BaseModel):
    """Shape of a decoder-only transformer (dense or mixture-of-experts).

    Field names follow Hugging Face ``config.json`` where one exists, so a spec reads
    like the config it came from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Display name, e.g. 'llama-3.1-8b'.")
    num_layers: int = Field(gt=0, description="Decoder layers (HF: num_hidden_layers).")
    hidden_size: int = Field(gt=0, description="Residual stream width (elements).")
    num_heads: int = Field(gt=0, description="Query heads (HF: num_attention_heads).")
    num_kv_heads: int = Field(
        gt=0,
        description="Key/value heads; < num_heads is GQA, 1 is MQA (HF: num_key_value_heads).",
    )
    head_dim: int = Field(gt=0, description="Width of one attention head (elements).")
    intermediate_size: int = Field(
        gt=0, description="Dense MLP width (elements); for MoE layers see moe_intermediate_size."
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
        return self

    # ---- derived sizes (elements, not bytes: precision is the deployment's choice) ----

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of K (or of V) for one token in one layer."""
        return self.num_kv_heads * self.head_dim

    @property
    def attn_params_per_layer(self) -> int:
        """QKV and output projections."""
        return self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size

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
    def mlp_params_per_layer(self) -> int:
        """All MLP weights stored in one layer (every expert, shared experts, router)."""
        if not self.is_moe:
            return self.dense_mlp_params_per_layer
        router = self.hidden_size * self.num_experts
        return (self.num_experts + self.num_shared_experts) * self.expert_params + router

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Stored LM head weights (0 when tied to the embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """All stored parameters (norm weights included)."""
        norms = (2 * self.num_layers + 1) * self.hidden_size
        per_layer = self.attn_params_per_layer + self.mlp_params_per_layer
        return self.num_layers * per_layer + self.embedding_params + self.lm_head_params + norms

    @property
    def num_active_params(self) -> int:
        """Parameters one token multiplies through (top-k and shared experts only for MoE)."""
        if not self.is_moe:
            return self.num_params
        inactive = (self.num_experts - self.num_experts_per_token) * self.expert_params
        return self.num_params - self.num_layers * inactive

    def kv_elements_per_token(self) -> int:
        """K and V elements one token keeps in the cache, all layers."""
        return 2 * self.num_layers * self.kv_size
