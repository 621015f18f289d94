"""Routing imbalance in mixture-of-experts layers: how the routed tokens spread over experts
and over the devices that hold them.

A router sends each token to ``top_k`` distinct experts. ``ExpertLoadConfig`` says how
popular each expert is; from it follow each expert's share of the routed token-expert
pairs, the probability that one token activates it, and, with experts placed
contiguously on expert-parallel devices (as vLLM places them: device i holds experts
i*E/n .. (i+1)*E/n - 1), each device's share of the pairs. Under expert parallelism the
device with the largest share sets the pace of every MoE layer (``simulator.cost``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UniformExpertLoad(_Frozen):
    """Every expert equally popular (a well-trained router with a balancing loss)."""

    kind: Literal["uniform"] = Field(default="uniform", description="Uniform routing.")


class ZipfExpertLoad(_Frozen):
    """Expert popularity falls off as a power of its rank: expert i (0-based, so the hottest
    experts sit together on the first expert-parallel device) gets load ~ (i + 1)^-s."""

    kind: Literal["zipf"] = Field(default="zipf", description="Zipf-distributed routing.")
    exponent: float = Field(
        ge=0,
        description="Zipf exponent s, dimensionless: 0 is uniform, 1 gives the hottest of 8 "
        "experts 37% of the load and the coldest 5%; larger is more skewed.",
    )


class GivenExpertLoad(_Frozen):
    """Measured or assumed load per expert (e.g. token counts per expert from a trace)."""

    kind: Literal["given"] = Field(default="given", description="Per-expert weights given.")
    weights: tuple[float, ...] = Field(
        min_length=1,
        description="Relative load of each routed expert, in expert order; any positive "
        "scale (normalised to shares). One entry per expert (len == the model's num_experts).",
    )

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        if min(weights) < 0 or not sum(weights) > 0:
            raise ValueError(f"weights={list(weights)} must be >= 0 with a positive sum")
        return weights


ExpertLoadConfig = Annotated[
    UniformExpertLoad | ZipfExpertLoad | GivenExpertLoad, Field(discriminator="kind")
]
"""How routed tokens spread over experts: ``{kind: uniform}``, ``{kind: zipf, exponent: s}``
or ``{kind: given, weights: [...]}``."""


def check_expert_load(load: ExpertLoadConfig, num_experts: int, model_name: str) -> None:
    """Raise ``ValueError`` when ``load`` cannot describe a model of ``num_experts`` routed
    experts (given weights of another length). A query: mutates nothing."""
    if isinstance(load, GivenExpertLoad) and len(load.weights) != num_experts:
        raise ValueError(
            f"expert_load.weights has {len(load.weights)} entries ({list(load.weights)}) but "
            f"{model_name} has num_experts={num_experts}; give one weight per routed expert"
        )


def expert_pair_shares(load: ExpertLoadConfig, num_experts: int, top_k: int) -> np.ndarray:
    """Each expert's share of the routed token-expert pairs (sums to 1).

    A token picks ``top_k`` distinct experts, so no expert can take more than 1/top_k of
    the pairs: shares above that are capped and the excess spread over the others in
    proportion to their load (evenly where they have none).
    """
    check_expert_load(load, num_experts, "the model")
    if not 0 < top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
    if isinstance(load, UniformExpertLoad):
        return np.full(num_experts, 1.0 / num_experts)
    if isinstance(load, ZipfExpertLoad):
        raw = np.arange(1, num_experts + 1, dtype=float) ** -load.exponent
    else:
        raw = np.asarray(load.weights, dtype=float)
    shares = raw / raw.sum()
    cap = 1.0 / top_k
    capped = np.zeros(num_experts, dtype=bool)
    while (over := ~capped & (shares > cap * (1 + 1e-12))).any():
        excess = float((shares[over] - cap).sum())
        shares[over] = cap
        capped |= over
        free = ~capped
        weight = shares[free].sum()
        shares[free] += excess * (shares[free] / weight if weight > 0 else 1.0 / free.sum())
    return shares


def expert_token_probs(load: ExpertLoadConfig, num_experts: int, top_k: int) -> np.ndarray:
    """Probability that one token activates each expert: top_k x its pair share (in [0, 1],
    summing to top_k)."""
    return np.minimum(top_k * expert_pair_shares(load, num_experts, top_k), 1.0)


def device_pair_shares(
    load: ExpertLoadConfig, num_experts: int, top_k: int, num_devices: int
) -> np.ndarray:
    """Each expert-parallel device's share of the routed token-expert pairs, experts placed
    contiguously (num_experts / num_devices per device). Sums to 1; uniform routing gives
    1/num_devices each."""
    if num_experts % num_devices:
        raise ValueError(
            f"num_experts={num_experts} is not divisible by {num_devices} expert-parallel "
            f"devices"
        )
    shares = expert_pair_shares(load, num_experts, top_k)
    return shares.reshape(num_devices, num_experts // num_devices).sum(axis=1)


def experts_touched(token_probs: np.ndarray, num_tokens: float) -> float:
    """Expected distinct experts among ``token_probs`` that ``num_tokens`` independently
    routed tokens activate: sum over experts of 1 - (1 - p)^T."""
    return float((1.0 - (1.0 - token_probs) ** num_tokens).sum())


def max_experts_touched(device_token_probs: np.ndarray, num_tokens: float) -> float:
    """Expected number of activated experts on the device that has the most of them, when
    ``num_tokens`` >= 1 tokens are routed; ``device_token_probs[i, j]`` is the chance one
    token picks device i's j-th expert.

    Every device's weight reads wait for the slowest, so under expert parallelism an MoE
    layer reads as many experts as its busiest device: one token on eight devices of one
    expert each reads a whole expert, not the average 2/8. Experts are treated as touched
    independently (each with 1 - (1 - p)^T), each device's count is a Poisson-binomial,
    and E[max] = sum_x 1 - prod_i P(count_i <= x), x < experts per device. Some device
    always reads at least one expert (a token activates some), so each outcome's maximum
    is floored at 1.
    """
    probs = np.atleast_2d(device_token_probs)
    num_devices, per_device = probs.shape
    touched = 1.0 - (1.0 - probs) ** num_tokens
    if num_devices == 1:
        return float(touched.sum())
    if touched.min() > 1.0 - 1e-12:  # a large batch touches every expert
        return float(per_device)
    # Devices with the same probabilities (uniform routing: all of them) share one count
    # distribution: P(max <= x) = prod over distinct rows of P(count <= x)^copies.
    rows, copies = np.unique(touched, axis=0, return_counts=True)
    dist = np.zeros((len(rows), per_device + 1))
    dist[:, 0] = 1.0
    for j in range(per_device):  # add expert j of every device to its count's distribution
        q = rows[:, j:j + 1]
        moved = dist[:, :-1] * q
        dist *= 1.0 - q
        dist[:, 1:] += moved
    cdf = np.cumsum(dist, axis=1)[:, :-1]  # P(count <= x) for x < per_device
    below = (cdf ** copies[:, None]).prod(axis=0)  # P(max <= x)
    # E[max(1, M)] = sum_x P(max(1, M) > x): the x = 0 term is 1, whatever the independent
    # model says about every expert staying idle.
    return float(1.0 + (1.0 - below[1:]).sum())
