"""A reference Llama in plain torch, shaped op for op like the iteration the cost model prices.

``ReferenceLlama`` is a decoder-only transformer with the Llama architecture (RMSNorm,
rotary embeddings, grouped-query attention, SwiGLU MLP, a KV cache), random seeded
weights, built from a :class:`simulator.model.ModelSpec`. It is not a faithful
reimplementation of any checkpoint; it is a workload whose op structure matches
``simulator.cost.CostModel`` so a profile calibrated on it predicts it:

* one forward computes every sequence of the batch at once, its tokens flattened into one
  ``[num_tokens, hidden]`` activation, as vLLM does: GEMMs, norms and elementwise ops
  run once per layer over all tokens (the cost model's ``_token_part``);
* attention runs per sequence: each writes its new keys and values into its own cache and
  makes one ``scaled_dot_product_attention`` call (prefill: causal over its cached prefix
  and new tokens; decode: one query over its cache). These are the profile's
  ``per_sequence_s`` costs;
* the LM head and sampling (argmax) run on the last position of each sequence only (the
  cost model's ``_seq_part``).

Per layer it calls, over all tokens of the batch::

    rms_norm → qkv GEMM → rotary (roll, mul, addcmul on q and k together)
    → per sequence: write k, write v, SDPA → cat of the outputs → o_proj GEMM → add
    → rms_norm → gate_up GEMM → silu, mul → down GEMM → add

and once per forward: the embedding lookup, the cos/sin gathers at the positions, the
gather of the last positions, the final rms_norm, the LM head GEMM and the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from simulator.model import ModelSpec

ELEMENTWISE_OPS_PER_LAYER = 10
"""Batch-wide elementwise dispatches per layer, each over all tokens of the iteration:

1. ``rms_norm`` before attention;
2-4. rotary on q and k together: ``roll`` (rotate half), ``mul`` (by cos), ``addcmul``
   (plus rotated × signed sin);
5. ``cat`` of the per-sequence attention outputs into one ``[tokens, q_size]`` tensor;
6. residual ``add`` after o_proj;
7. ``rms_norm`` before the MLP;
8-9. ``silu`` of the gate and its ``mul`` with up;
10. residual ``add`` after the MLP.

Set the profile's ``elementwise.kernels_per_layer`` to this. The KV-cache writes are not
here: they run per sequence (see ``KV_WRITES_PER_SEQUENCE_LAYER``), as the attention
calls do, so their cost belongs to attention's ``per_sequence_s``."""

GEMMS_PER_LAYER = 4
"""qkv, o_proj, gate_up, down: each one call over all tokens of the batch."""

KV_WRITES_PER_SEQUENCE_LAYER = 2
"""Copies of a sequence's new keys and of its new values into its cache, per layer."""

ATTENTION_CALLS_PER_SEQUENCE_LAYER = 1
"""``scaled_dot_product_attention`` calls per sequence per layer (prefill or decode)."""

ELEMENTWISE_OPS_PER_FORWARD = 6
"""Once per forward: embedding lookup, cos and sin gathers, last-position gather, final
``rms_norm``, argmax (the LM head GEMM besides). The cost model prices the embedding and
the sampling as one kernel each; the rest is small."""

ROPE_THETA = 10_000.0
_NORM_EPS = 1e-5

REFERENCE_SPECS: dict[str, dict[str, object]] = {
    # simulator.conformance.TINY_MODEL, repeated so this module needs no test fixtures.
    "tiny": dict(name="tiny", num_layers=2, hidden_size=256, num_heads=4, num_kv_heads=2,
                 head_dim=64, intermediate_size=512, vocab_size=1000,
                 max_context_tokens=4096),
    "small": dict(name="ref-small", num_layers=4, hidden_size=512, num_heads=8,
                  num_kv_heads=4, head_dim=64, intermediate_size=1408, vocab_size=4000,
                  max_context_tokens=4096),
    "medium": dict(name="ref-medium", num_layers=4, hidden_size=1024, num_heads=16,
                   num_kv_heads=4, head_dim=64, intermediate_size=2816, vocab_size=8000,
                   max_context_tokens=4096, tie_word_embeddings=True),
}
"""CPU-friendly Llama-shaped specs for calibration runs: ``ModelSpec(**REFERENCE_SPECS[k])``."""


@dataclass(slots=True)
class KVCache:
    """One sequence's keys and values for all layers, preallocated.

    ``data`` is ``[layers, 2, kv_heads, max_tokens, head_dim]`` (index 0: keys, 1:
    values); positions ``[0, num_tokens)`` are filled. ``ReferenceLlama.forward`` is the
    only writer. Drop the object to free it.
    """

    data: torch.Tensor
    num_tokens: int = 0

    @property
    def max_tokens(self) -> int:
        return int(self.data.shape[3])


@dataclass(frozen=True, slots=True)
class _Layer:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [q_size + 2 kv_size, hidden]
    o_proj: torch.Tensor  # [hidden, q_size]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 intermediate, hidden], gate rows first
    down: torch.Tensor  # [hidden, intermediate]


class ReferenceLlama:
    """A Llama-architecture decoder with random weights, for measuring real iterations.

    Weights are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (normal,
    std 1/sqrt(fan-in) for matrices, 1 for the embedding, norms at 1), then moved to
    ``device`` and ``dtype``: the same seed gives the same model on any device.

    Raises ValueError for specs it cannot build (MoE, non-gated MLP, sliding window,
    odd head_dim).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        max_positions: int | None = None,
    ) -> None:
        if spec.is_moe or not spec.gated_mlp or spec.sliding_window_tokens is not None:
            raise ValueError(
                f"model {spec.name!r}: the reference builds dense SwiGLU models with full "
                f"attention only (is_moe={spec.is_moe}, gated_mlp={spec.gated_mlp}, "
                f"sliding_window_tokens={spec.sliding_window_tokens})"
            )
        if spec.head_dim % 2:
            raise ValueError(f"model {spec.name!r}: rotary needs an even head_dim, "
                             f"got {spec.head_dim}")
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_positions = max_positions or spec.max_context_tokens
        gen = torch.Generator().manual_seed(seed)

        def matrix(rows: int, cols: int) -> torch.Tensor:
            w = torch.randn(rows, cols, generator=gen) / cols**0.5
            return w.to(self.device, dtype)

        def ones() -> torch.Tensor:
            return torch.ones(spec.hidden_size, device=self.device, dtype=dtype)

        h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
        self.embedding = torch.randn(spec.vocab_size, h, generator=gen).to(self.device, dtype)
        self.layers = tuple(
            _Layer(ones(), matrix(q + 2 * kv, h), matrix(h, q), ones(),
                   matrix(2 * inter, h), matrix(h, inter))
            for _ in range(spec.num_layers)
        )
        self.final_norm = ones()
        self.lm_head = self.embedding if spec.tie_word_embeddings else matrix(spec.vocab_size, h)
        self.cos, self.sin = self._rotary_tables()

    def _rotary_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, ``[max_positions, 1, head_dim]``, for the rotate-half form
        ``x·cos + roll(x, d/2)·sin`` with ``sin = [-sin_half, sin_half]``."""
        d = self.spec.head_dim
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.outer(torch.arange(self.max_positions, dtype=torch.float64), inv_freq)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
        sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
        return (cos[:, None, :].to(self.device, self.dtype),
                sin[:, None, :].to(self.device, self.dtype))

    def new_cache(self, max_tokens: int) -> KVCache:
        """An empty cache for a sequence of at most ``max_tokens`` computed tokens
        (prompt plus fed-back outputs). Allocates; mutates nothing else."""
        if not 0 < max_tokens <= self.max_positions:
            raise ValueError(f"max_tokens={max_tokens} must be in 1..{self.max_positions}")
        s = self.spec
        data = torch.empty(s.num_layers, 2, s.num_kv_heads, max_tokens, s.head_dim,
                           device=self.device, dtype=self.dtype)
        return KVCache(data)

    @torch.inference_mode()
    def forward(
        self,
        tokens: Sequence[Sequence[int]],
        caches: Sequence[KVCache],
        *,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Compute ``tokens[i]`` (new token ids) of each sequence ``i`` after the
        ``caches[i].num_tokens`` already in its cache, all sequences in one batch.

        Mutates the caches: the new keys and values are written and ``num_tokens``
        advances by ``len(tokens[i])``. Returns float32 logits ``[num_seqs, vocab]`` at
        each sequence's last new position, or with ``all_logits`` ``[num_tokens, vocab]``
        at every new position (sequences in order).
        """
        if len(tokens) != len(caches) or not tokens:
            raise ValueError(f"{len(tokens)} token lists for {len(caches)} caches")
        lengths = [len(t) for t in tokens]
        starts = [c.num_tokens for c in caches]
        for n, start, cache in zip(lengths, starts, caches, strict=True):
            if n == 0 or start + n > cache.max_tokens:
                raise ValueError(f"{n} new tokens after {start} in a cache of "
                                 f"{cache.max_tokens}")
        ids = torch.tensor(np.concatenate(tokens), dtype=torch.long, device=self.device)
        positions = torch.from_numpy(
            np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        ).to(self.device)
        x = F.embedding(ids, self.embedding)
        cos, sin = self.cos[positions], self.sin[positions]
        for index, layer in enumerate(self.layers):
            x = self._layer(index, layer, x, cos, sin, lengths, starts, caches)
        for cache, n in zip(caches, lengths, strict=True):
            cache.num_tokens += n
        if not all_logits:
            last = torch.tensor(np.cumsum(lengths) - 1, device=self.device)
            x = x[last]
        x = F.rms_norm(x, (self.spec.hidden_size,), self.final_norm, _NORM_EPS)
        return F.linear(x, self.lm_head).float()

    def step(self, tokens: Sequence[Sequence[int]], caches: Sequence[KVCache]) -> list[int]:
        """One serving iteration: ``forward`` then greedy sampling; the next token id of
        each sequence, on the host (so the device is synchronised on return)."""
        return self.forward(tokens, caches).argmax(dim=-1).tolist()

    def _layer(
        self,
        index: int,
        layer: _Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        lengths: list[int],
        starts: list[int],
        caches: Sequence[KVCache],
    ) -> torch.Tensor:
        s = self.spec
        num_tokens, hq, hkv, d = x.shape[0], s.num_heads, s.num_kv_heads, s.head_dim
        h = F.rms_norm(x, (s.hidden_size,), layer.input_norm, _NORM_EPS)
        qkv = F.linear(h, layer.qkv).view(num_tokens, hq + 2 * hkv, d)
        qk = qkv[:, : hq + hkv]
        qk = torch.addcmul(qk * cos, torch.roll(qk, d // 2, dims=-1), sin)
        q, k, v = qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv :]
        outputs = []
        offset = 0
        for n, start, cache in zip(lengths, starts, caches, strict=True):
            end, stop = offset + n, start + n
            kv = cache.data[index]  # [2, kv_heads, max_tokens, head_dim]
            kv[0, :, start:stop] = k[offset:end].transpose(0, 1)
            kv[1, :, start:stop] = v[offset:end].transpose(0, 1)
            outputs.append(self._attend(q[offset:end], kv[:, :, :stop], start).transpose(0, 1))
            offset = end
        attn = torch.cat(outputs).view(num_tokens, hq * d)
        x = x + F.linear(attn, layer.o_proj)
        h = F.rms_norm(x, (s.hidden_size,), layer.post_norm, _NORM_EPS)
        gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.down)

    @staticmethod
    def _attend(q: torch.Tensor, kv: torch.Tensor, start: int) -> torch.Tensor:
        """One sequence's attention: ``q`` ``[n, heads, d]`` at positions ``start..start+n``
        over ``kv`` ``[2, kv_heads, start+n, d]``; returns ``[heads, n, d]``."""
        n = q.shape[0]
        mask = None
        if n > 1 and start > 0:  # causal, aligned to the end of the keys
            keys = torch.arange(start + n, device=q.device)
            mask = keys[None, :] <= (start + torch.arange(n, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], kv[0][None], kv[1][None],
            attn_mask=mask, is_causal=n > 1 and start == 0, enable_gqa=True,
        )
        return out[0]
