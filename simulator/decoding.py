"""Multi-token decoding steps: what speculative and lookahead decoding do per step.

A ``MultiTokenStep`` says how many positions each decoding sequence computes per step
(``query_tokens``), draws how many tokens each sequence keeps (vectorised over the
batch, from the replica's own seeded stream) and prices a step: the target's
verification forward plus the proposer's work. ``simulator.speculative`` runs them.

Acceptance in speculative decoding: each of the γ proposed tokens is accepted with
probability α while all before it were (Leviathan et al., ICML 2023), so a step keeps
k + 1 tokens with P(k) = α^k (1 - α) for k < γ and P(γ) = α^γ, whose mean is
(1 - α^(γ+1)) / (1 - α).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from hardware.spec import GIB
from simulator.cost import CostModel
from simulator.memory import MemoryPlan, weight_bytes_per_device
from simulator.model import ModelSpec
from simulator.model_catalog import get_model
from simulator.optimizations import (
    BetaAcceptance,
    DecodingConfig,
    LookaheadDecoding,
    SpeculativeDecoding,
)
from simulator.request import Request


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Mean tokens a speculative step keeps per sequence: (1 - α^(γ+1)) / (1 - α)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


class MultiTokenStep(Protocol):
    """One kind of multi-token decode step (see the module docstring)."""

    query_tokens: int
    """Positions each decoding sequence computes per step."""
    num_proposed: int
    """Tokens proposed per sequence per step (what acceptance is measured against)."""

    def request_rate(self, request: Request, rng: np.random.Generator) -> float:
        """The per-request parameter its draws use (α for speculative decoding)."""
        ...

    def draw(self, rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
        """Tokens kept by each sequence this step (int64, 1..query_tokens)."""
        ...

    def price(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
              prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        """(seconds, flops, hbm_bytes) of one step with these prefill chunks beside."""
        ...

    def price_run(self, num_seqs: int, context_tokens: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per step of a run of decode-only steps differing only in the attended
        context: (seconds, flops, hbm_bytes) arrays."""
        ...

    def propose(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
                prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        """The proposer's part of one step (nothing for a step without a proposer)."""
        ...


@dataclass(slots=True)
class SpeculativeStep:
    """γ proposals per sequence, verified in one target forward of γ + 1 positions.

    Proposer costs per step: ``draft`` runs the draft model γ times (one token per
    sequence each, over its own KV cache, the same length as the target's) and also
    prefills every prompt chunk the target prefills; ``eagle`` and ``mtp`` run one
    decoder layer of the target's shape (and its LM head) γ times, as EAGLE's head and
    DeepSeek-V3's MTP module are one layer; ``medusa`` runs its γ heads once, priced
    as one such layer pass (its heads are each a residual block and an LM head)."""

    config: SpeculativeDecoding
    target: CostModel
    proposer: CostModel
    """The draft model, or a one-layer slice of the target for the head proposers."""
    query_tokens: int = field(init=False)
    num_proposed: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_proposed = self.config.num_speculative_tokens
        self.query_tokens = self.num_proposed + 1

    def request_rate(self, request: Request, rng: np.random.Generator) -> float:
        by_priority = self.config.acceptance_by_priority
        if request.priority in by_priority:
            return by_priority[request.priority]
        acceptance = self.config.acceptance
        if isinstance(acceptance, BetaAcceptance):
            a = acceptance.mean * acceptance.concentration
            b = (1.0 - acceptance.mean) * acceptance.concentration
            return float(rng.beta(a, b))
        return acceptance.rate

    def draw(self, rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
        accepted = rng.random((len(rates), self.num_proposed)) < rates[:, None]
        # Proposals are kept up to the first rejection; the target adds one token.
        return np.cumprod(accepted, axis=1).sum(axis=1) + 1

    def price(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
              prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        s, f, b = self.target.verify(num_seqs, self.query_tokens, context_tokens,
                                     prefill_tokens, prefill_context_tokens)
        ps, pf, pb = self.propose(num_seqs, context_tokens, prefill_tokens,
                                  prefill_context_tokens)
        return s + ps, f + pf, b + pb

    def propose(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
                prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        """The proposer's part of a step: (seconds, flops, hbm_bytes)."""
        s = f = b = 0.0
        proposer = self.proposer
        passes = 1 if self.config.proposer == "medusa" else self.num_proposed
        if num_seqs:
            # Each pass proposes one more token per sequence, over a growing context.
            for i in range(passes):
                ps, pf, pb = proposer.iteration([], [], num_seqs,
                                                context_tokens + i * num_seqs)
                s, f, b = s + ps, f + pf, b + pb
        if prefill_tokens and self.config.proposer == "draft":
            ps, pf, pb = proposer.iteration(prefill_tokens, prefill_context_tokens, 0, 0.0)
            s, f, b = s + ps, f + pf, b + pb
        return s, f, b

    def price_run(self, num_seqs: int, context_tokens: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, f, b = self.target.verify_run(num_seqs, self.query_tokens, context_tokens)
        passes = 1 if self.config.proposer == "medusa" else self.num_proposed
        for i in range(passes):
            ps, pf, pb = self.proposer.decode_run(num_seqs, context_tokens + i * num_seqs)
            s, f, b = s + ps, f + pf, b + pb
        return s, f, b


@dataclass(slots=True)
class LookaheadStep:
    """Lookahead decoding: W (N - 1) lookahead and G (N - 1) verification positions
    beside the current token, in one forward; keeps 1 + Poisson(mean - 1) tokens,
    capped at N."""

    config: LookaheadDecoding
    target: CostModel
    query_tokens: int = field(init=False)
    num_proposed: int = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.query_tokens = 1 + (c.window + c.candidates) * (c.ngram - 1)
        self.num_proposed = c.ngram - 1

    def request_rate(self, request: Request, rng: np.random.Generator) -> float:
        return self.config.mean_accepted_tokens - 1.0

    def draw(self, rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
        return 1 + np.minimum(rng.poisson(rates), self.config.ngram - 1)

    def price(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
              prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        return self.target.verify(num_seqs, self.query_tokens, context_tokens,
                                  prefill_tokens, prefill_context_tokens)

    def price_run(self, num_seqs: int, context_tokens: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.target.verify_run(num_seqs, self.query_tokens, context_tokens)

    def propose(self, num_seqs: int, context_tokens: float, prefill_tokens: list[int],
                prefill_context_tokens: list[int]) -> tuple[float, float, float]:
        return 0.0, 0.0, 0.0  # the lookahead branch is part of the verified positions


def draft_model_spec(config: SpeculativeDecoding, target: ModelSpec) -> ModelSpec:
    """The draft model of a ``draft`` proposer; ValueError naming the field if unknown
    or if its vocabulary differs from the target's (its tokens must be the target's)."""
    ref = config.draft_model
    assert ref is not None
    try:
        draft = ref if isinstance(ref, ModelSpec) else get_model(ref)
    except KeyError as exc:
        raise ValueError(f"engine.decoding.draft_model: {exc.args[0]}") from None
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"engine.decoding.draft_model={draft.name!r} has a vocabulary of "
            f"{draft.vocab_size} tokens, {target.name} of {target.vocab_size}: a draft model "
            f"must share the target's tokenizer"
        )
    return draft


def build_step(config: DecodingConfig, target: CostModel) -> MultiTokenStep | None:
    """The multi-token step of ``config`` over ``target`` (the whole model on one
    replica), or None for one token per step (autoregressive, beams, samples)."""
    if isinstance(config, LookaheadDecoding):
        return LookaheadStep(config, target)
    if not isinstance(config, SpeculativeDecoding):
        return None
    if config.proposer == "draft":
        # The draft is its own model: the target's per-layer formats and transforms of
        # its linear layers do not carry over (its weight format does).
        proposer = dataclasses.replace(target, model=draft_model_spec(config, target.model),
                                       layer_range=None, iteration_overhead_s=0.0,
                                       layer_weight_dtypes=None, sparsity=None,
                                       low_rank=None)
    else:  # one decoder layer of the target's shape, with its LM head
        n = target.model.num_layers
        proposer = dataclasses.replace(target, layer_range=(n - 1, n),
                                       iteration_overhead_s=0.0)
    return SpeculativeStep(config, target, proposer)


def with_draft(memory: MemoryPlan, step: MultiTokenStep | None) -> MemoryPlan:
    """``memory`` with a draft model's weights and KV cache on the same devices: its
    weights come out of the KV budget, and each block holds both models' KV for its
    tokens. Unchanged for other steps."""
    if not (isinstance(step, SpeculativeStep) and step.config.proposer == "draft"):
        return memory
    draft = step.proposer
    weights = weight_bytes_per_device(draft.model, draft)
    per_token = memory.kv_bytes_per_token + draft.kv_bytes_per_token
    block_bytes = per_token * memory.block_size_tokens
    available = memory.usable_bytes - memory.weight_bytes - weights - memory.activation_bytes \
        - memory.reserved_bytes - memory.state_bytes
    blocks = int(available // block_bytes) if available > 0 else 0
    if blocks < 1:
        raise ValueError(
            f"engine.decoding.draft_model={draft.model.name!r}: its weights "
            f"({weights / GIB:.2f} GiB per device) leave no room for KV beside "
            f"{memory.describe()}"
        )
    return dataclasses.replace(memory, weight_bytes=memory.weight_bytes + weights,
                               kv_bytes=blocks * block_bytes, kv_bytes_per_token=per_token,
                               num_kv_blocks=blocks)
