"""Recurrent token mixers: state-space (Mamba, Mamba-2), RWKV and linear-attention layers.

A recurrent layer mixes tokens through a state of constant size per sequence instead of
a KV cache that grows with the context: a short convolution window (the *conv state*)
and a recurrence state (the *SSM state*, RWKV's WKV state, Gated DeltaNet's memory).
Each mixer states its shape as the cost model and the memory plan need it:

- ``gemm_shapes``: the projections one token goes through, ``(k, n, split)`` for an
  ``x[M, k] @ W[k, n]`` product; ``split`` is the dimension tensor parallelism divides
  (``"n"``: column-parallel, ``"k"``: row-parallel), as vLLM shards these layers;
- ``params``: every stored parameter of one layer's mixer (projections, convolution,
  decay and skip vectors, norms);
- ``conv_state_elements`` / ``ssm_state_elements``: one sequence's state in one layer;
- ``scan_flops_per_token`` and ``io_elements_per_token``: the recurrence itself.

All numbers are for the whole layer; with tensor parallelism t every device holds 1/t
of them (heads and channels split; the small replicated parts are not modelled). Field
names follow the Hugging Face configs (``state_size``, ``conv_kernel``, ``expand``...),
with the ``mamba_`` / ``linear_`` prefixes of hybrid configs dropped.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCAN_FLOPS_PER_STATE_ELEMENT = 6
"""FLOPs a token spends on each element of the recurrence state: decay it (1), add the
input's outer-product term (2), read the output out of it (2), and the gate or
discretisation (about 1). The chunked prefill algorithms (Mamba-2's SSD, the chunked
delta rule) add intra-chunk matrix products of O(chunk) per token that are not counted."""

Split = Literal["n", "k"]


class _Mixer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def gemm_shapes(self, hidden_size: int) -> tuple[tuple[int, int, Split], ...]:
        raise NotImplementedError

    def extra_params(self, hidden_size: int) -> int:
        """Parameters outside the projections (convolution, decay and skip vectors, norms)."""
        raise NotImplementedError

    def conv_state_elements(self, hidden_size: int) -> int:
        raise NotImplementedError

    def ssm_state_elements(self, hidden_size: int) -> int:
        raise NotImplementedError

    def conv_flops_per_token(self, hidden_size: int) -> int:
        raise NotImplementedError

    def io_elements_per_token(self, hidden_size: int) -> int:
        """Activations the scan kernel reads and writes per token (inputs, gates, output)."""
        raise NotImplementedError

    def params(self, hidden_size: int) -> int:
        """Stored parameters of one layer's mixer."""
        gemms = sum(k * n for k, n, _ in self.gemm_shapes(hidden_size))
        return gemms + self.extra_params(hidden_size)

    def state_elements(self, hidden_size: int) -> int:
        """One sequence's state in one layer: conv state + recurrence state."""
        return self.conv_state_elements(hidden_size) + self.ssm_state_elements(hidden_size)

    def scan_flops_per_token(self, hidden_size: int) -> int:
        """FLOPs of the recurrence (and the short convolution) for one token, one layer."""
        return (SCAN_FLOPS_PER_STATE_ELEMENT * self.ssm_state_elements(hidden_size)
                + self.conv_flops_per_token(hidden_size))


class MambaMixer(_Mixer):
    """Mamba (v1) selective state-space layer (Gu & Dao 2023, arXiv 2312.00752), as in
    HF ``MambaConfig`` and Jamba's Mamba layers (``mamba_expand``, ``mamba_d_state``...)."""

    kind: Literal["mamba"] = Field(default="mamba", description="Mamba (v1) selective SSM.")
    expand: int = Field(default=2, gt=0, description="Inner width over hidden_size (d_inner = "
                        "expand x hidden_size; HF: expand, Jamba: mamba_expand).")
    state_size: int = Field(default=16, gt=0, description="SSM state per channel, d_state "
                            "(HF: state_size, Jamba: mamba_d_state).")
    conv_kernel: int = Field(default=4, gt=0, description="Causal convolution width, d_conv "
                             "(HF: conv_kernel, Jamba: mamba_d_conv).")
    time_step_rank: int | None = Field(
        default=None, gt=0, description="Rank of the dt projection (HF: time_step_rank, "
        "Jamba: mamba_dt_rank); None: ceil(hidden_size / 16), HF's 'auto'.")

    def _inner(self, h: int) -> int:
        return self.expand * h

    def _dt_rank(self, h: int) -> int:
        return self.time_step_rank or math.ceil(h / 16)

    def gemm_shapes(self, hidden_size: int) -> tuple[tuple[int, int, Split], ...]:
        h, di, r, n = hidden_size, self._inner(hidden_size), self._dt_rank(hidden_size), \
            self.state_size
        # in_proj (x and z), x_proj (dt, B, C), dt_proj, out_proj.
        return ((h, 2 * di, "n"), (di, r + 2 * n, "k"), (r, di, "n"), (di, h, "k"))

    def extra_params(self, hidden_size: int) -> int:
        di = self._inner(hidden_size)
        # conv weight and bias, dt_proj bias, A_log (d_inner x d_state), D.
        return di * self.conv_kernel + di + di + di * self.state_size + di

    def conv_state_elements(self, hidden_size: int) -> int:
        return self._inner(hidden_size) * (self.conv_kernel - 1)  # vLLM keeps d_conv - 1

    def ssm_state_elements(self, hidden_size: int) -> int:
        return self._inner(hidden_size) * self.state_size

    def conv_flops_per_token(self, hidden_size: int) -> int:
        return 2 * self.conv_kernel * self._inner(hidden_size)

    def io_elements_per_token(self, hidden_size: int) -> int:
        di = self._inner(hidden_size)
        return 4 * di + 2 * self.state_size  # x, z, dt, B, C in; y out


class Mamba2Mixer(_Mixer):
    """Mamba-2 state-space-duality layer (Dao & Gu 2024, arXiv 2405.21060), as in HF
    ``Mamba2Config`` and ``mamba_ssm``'s ``Mamba2`` (whose defaults these are)."""

    kind: Literal["mamba2"] = Field(default="mamba2", description="Mamba-2 (SSD) layer.")
    num_heads: int = Field(gt=0, description="SSM heads (d_inner / head_dim).")
    head_dim: int = Field(default=64, gt=0, description="Channels per SSM head (headdim).")
    state_size: int = Field(default=128, gt=0, description="SSM state per head channel, d_state.")
    n_groups: int = Field(default=1, gt=0, description="Groups sharing B and C (ngroups).")
    conv_kernel: int = Field(default=4, gt=0, description="Causal convolution width, d_conv.")

    def _inner(self) -> int:
        return self.num_heads * self.head_dim

    def _conv_channels(self) -> int:
        return self._inner() + 2 * self.n_groups * self.state_size  # x, B, C

    def gemm_shapes(self, hidden_size: int) -> tuple[tuple[int, int, Split], ...]:
        di = self._inner()
        in_width = 2 * di + 2 * self.n_groups * self.state_size + self.num_heads  # z,x,B,C,dt
        return ((hidden_size, in_width, "n"), (di, hidden_size, "k"))

    def extra_params(self, hidden_size: int) -> int:
        conv = self._conv_channels() * (self.conv_kernel + 1)  # weight and bias
        return conv + 3 * self.num_heads + self._inner()  # dt_bias, A_log, D; gated norm

    def conv_state_elements(self, hidden_size: int) -> int:
        return self._conv_channels() * (self.conv_kernel - 1)

    def ssm_state_elements(self, hidden_size: int) -> int:
        return self.num_heads * self.head_dim * self.state_size

    def conv_flops_per_token(self, hidden_size: int) -> int:
        return 2 * self.conv_kernel * self._conv_channels()

    def io_elements_per_token(self, hidden_size: int) -> int:
        di = self._inner()
        return 3 * di + 2 * self.n_groups * self.state_size + self.num_heads  # z,x,B,C,dt; y


class GatedDeltaNetMixer(_Mixer):
    """Gated DeltaNet linear attention (Yang et al. 2024, arXiv 2412.06464), as Qwen3-Next
    uses it (HF ``linear_num_key_heads``, ``linear_key_head_dim``...)."""

    kind: Literal["gated_deltanet"] = Field(default="gated_deltanet",
                                            description="Gated DeltaNet layer.")
    num_key_heads: int = Field(gt=0, description="Query/key heads (HF: linear_num_key_heads).")
    num_value_heads: int = Field(gt=0, description="Value heads (HF: linear_num_value_heads).")
    key_head_dim: int = Field(gt=0, description="Query/key head width (HF: linear_key_head_dim).")
    value_head_dim: int = Field(gt=0, description="Value head width (HF: linear_value_head_dim).")
    conv_kernel: int = Field(default=4, gt=0, description="Causal convolution width "
                             "(HF: linear_conv_kernel_dim).")

    def _key(self) -> int:
        return self.num_key_heads * self.key_head_dim

    def _value(self) -> int:
        return self.num_value_heads * self.value_head_dim

    def _conv_channels(self) -> int:
        return 2 * self._key() + self._value()  # q, k, v

    def gemm_shapes(self, hidden_size: int) -> tuple[tuple[int, int, Split], ...]:
        h, kd, vd = hidden_size, self._key(), self._value()
        # in_proj_qkvz (q, k, v and the output gate z), in_proj_ba (beta, alpha), out_proj.
        return ((h, 2 * kd + 2 * vd, "n"), (h, 2 * self.num_value_heads, "n"), (vd, h, "k"))

    def extra_params(self, hidden_size: int) -> int:
        conv = self._conv_channels() * self.conv_kernel  # no bias
        return conv + 2 * self.num_value_heads + self.value_head_dim  # dt_bias, A_log; norm

    def conv_state_elements(self, hidden_size: int) -> int:
        return self._conv_channels() * (self.conv_kernel - 1)

    def ssm_state_elements(self, hidden_size: int) -> int:
        return self.num_value_heads * self.key_head_dim * self.value_head_dim

    def conv_flops_per_token(self, hidden_size: int) -> int:
        return 2 * self.conv_kernel * self._conv_channels()

    def io_elements_per_token(self, hidden_size: int) -> int:
        return 2 * self._key() + 3 * self._value() + 2 * self.num_value_heads  # qkvz, b, a; o


class RWKV6Mixer(_Mixer):
    """RWKV-6 "Finch" time mixing (Peng et al. 2024, arXiv 2404.05892): receptance, key,
    value, gate and output projections, data-dependent token shift and decay (low-rank),
    a matrix-valued WKV state per head. The channel mix's squared-ReLU key/value pair is
    the layer's MLP (``ModelSpec.intermediate_size``, ``gated_mlp: false``); its
    receptance gate (hidden x hidden) is counted here. Low-rank widths are RWKV-LM's
    ``D_MIX_LORA`` and ``D_DECAY_LORA`` (32 and 64; doubled for the 4096-wide 7B)."""

    kind: Literal["rwkv6"] = Field(default="rwkv6", description="RWKV-6 time mixing.")
    head_size: int = Field(default=64, gt=0, description="WKV head width (HF: head_size).")
    attention_hidden_size: int | None = Field(
        default=None, gt=0, description="Width of r, k, v, g (HF: attention_hidden_size); "
        "None: hidden_size.")
    time_mix_extra_dim: int = Field(default=32, gt=0, description="Rank of the token-shift "
                                    "LoRA (RWKV-LM D_MIX_LORA).")
    time_decay_extra_dim: int = Field(default=64, gt=0, description="Rank of the decay LoRA "
                                      "(RWKV-LM D_DECAY_LORA).")

    def _att(self, h: int) -> int:
        return self.attention_hidden_size or h

    def gemm_shapes(self, hidden_size: int) -> tuple[tuple[int, int, Split], ...]:
        h, a = hidden_size, self._att(hidden_size)
        mix, decay = self.time_mix_extra_dim, self.time_decay_extra_dim
        return (
            (h, 4 * a, "n"),  # receptance, key, value, gate
            (a, h, "k"),  # output
            (h, 5 * mix, "n"), (mix, 5 * h, "n"),  # token-shift LoRA (w, k, v, r, g)
            (h, decay, "n"), (decay, a, "n"),  # decay LoRA
            (h, h, "n"),  # channel mix receptance
        )

    def extra_params(self, hidden_size: int) -> int:
        h, a = hidden_size, self._att(hidden_size)
        # time_maa_{x,w,k,v,r,g}, time_decay, time_faaaa, ln_x (weight, bias), the channel
        # mix's time_maa_{k,r}.
        return 6 * h + a + a + 2 * a + 2 * h

    def conv_state_elements(self, hidden_size: int) -> int:
        return 2 * hidden_size  # token-shift states of the time mix and the channel mix

    def ssm_state_elements(self, hidden_size: int) -> int:
        return self._att(hidden_size) * self.head_size  # heads x head_size x head_size

    def conv_flops_per_token(self, hidden_size: int) -> int:
        return 0

    def io_elements_per_token(self, hidden_size: int) -> int:
        return 6 * self._att(hidden_size)  # r, k, v, g, w in; y out


RecurrentMixer = Annotated[
    MambaMixer | Mamba2Mixer | GatedDeltaNetMixer | RWKV6Mixer, Field(discriminator="kind")
]
"""A recurrent layer's mixer: ``{kind: mamba | mamba2 | gated_deltanet | rwkv6, ...}``."""
