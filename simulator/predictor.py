"""Output-length predictors: what length-aware policies may know of the hidden truth.

The engine holds every request's true output length; a policy that orders by length
asks the scenario's predictor instead, named in ``engine.predictor``:

- ``oracle``: the true length (an upper bound on what prediction can buy);
- ``noisy``: the true length times ``exp(N(0, sigma))``, drawn once per request from the
  scenario's seed, so the same request gets the same guess on every run and replica.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from workloads.trace import RequestArrays


class OraclePredictor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["oracle"] = "oracle"


class NoisyPredictor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["noisy"] = "noisy"
    sigma: float = Field(
        gt=0, description="Std. dev. of the natural-log error of each prediction."
    )


_NOISE_STREAM = 0x5EED

Predictor = Callable[[int, int, int], float]
"""(request id, prompt tokens, true output tokens) -> predicted output tokens; picklable
(runs in worker processes)."""

PredictorConfig = Annotated[OraclePredictor | NoisyPredictor, Field(discriminator="kind")]


def build_predictor(config: OraclePredictor | NoisyPredictor, seed: int,
                    requests: RequestArrays | None = None) -> Predictor:
    """The predictor ``config`` names; ``requests`` (the workload) is what a learning
    predictor learns from."""
    if isinstance(config, OraclePredictor):
        return _Oracle()
    return _Noisy(config.sigma, seed)


class _Oracle:
    def __call__(self, request_id: int, prompt_tokens: int, output_tokens: int) -> float:
        return float(output_tokens)


class _Noisy:
    def __init__(self, sigma: float, seed: int) -> None:
        self.sigma = sigma
        self.seed = seed

    def __call__(self, request_id: int, prompt_tokens: int, output_tokens: int) -> float:
        # One stream per request: the guess does not depend on who asks first.
        z = np.random.default_rng([self.seed, _NOISE_STREAM, request_id]).standard_normal()
        return output_tokens * math.exp(self.sigma * float(z))
