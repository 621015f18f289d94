"""Output-length predictors: what length-aware policies may know of the hidden truth.

The engine holds every request's true output length; a policy that orders by length
asks the scenario's predictor instead, named in ``engine.predictor``:

- ``oracle``: the true length (an upper bound on what prediction can buy);
- ``noisy``: the true length times ``exp(N(0, sigma))``, drawn once per request from the
  scenario's seed, so the same request gets the same guess on every run and replica;
- ``bucket_mean``: the mean output length of the request's prompt-length bucket, learned
  offline from the workload's own requests (DESIGN.md's "learned from the trace"). It
  is fitted on the very requests it then predicts (in-sample, so somewhat optimistic),
  and it needs them before the run: a closed-loop workload, whose requests are drawn
  during the run, is refused.
"""

from __future__ import annotations

import bisect
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


class BucketMeanPredictor(BaseModel):
    """Mean output length per prompt-length bucket, learned from the workload's requests.

    Bucket ``k`` holds prompts of ``[growth**k, growth**(k+1))`` tokens (log2 buckets by
    default); a bucket with no request in the workload predicts the overall mean.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["bucket_mean"] = "bucket_mean"
    growth: float = Field(
        default=2.0, gt=1,
        description="Ratio of consecutive bucket edges (prompt tokens): 2.0 makes buckets "
        "[1, 2), [2, 4), [4, 8), ...",
    )


_NOISE_STREAM = 0x5EED

Predictor = Callable[[int, int, int], float]
"""(request id, prompt tokens, true output tokens) -> predicted output tokens; picklable
(runs in worker processes)."""

PredictorConfig = Annotated[
    OraclePredictor | NoisyPredictor | BucketMeanPredictor, Field(discriminator="kind")
]


def build_predictor(config: OraclePredictor | NoisyPredictor | BucketMeanPredictor,
                    seed: int, requests: RequestArrays | None = None) -> Predictor:
    """The predictor ``config`` names; ``requests`` (the workload, None for a closed loop)
    is what a learning predictor learns from. Raises ValueError for ``bucket_mean``
    without requests, or with none to learn from."""
    if isinstance(config, OraclePredictor):
        return _Oracle()
    if isinstance(config, NoisyPredictor):
        return _Noisy(config.sigma, seed)
    if requests is None:
        raise ValueError(
            "engine.predictor: bucket_mean learns from the workload's requests before the "
            "run, but a closed-loop workload draws them during the run; use {kind: oracle} "
            "or {kind: noisy, sigma: ...}, or an open-loop arrival process"
        )
    return _BucketMean.fit(config.growth, requests.prompt_tokens, requests.output_tokens)


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


class _BucketMean:
    """Per-bucket mean output lengths; ``edges[k]`` is bucket k's smallest prompt."""

    def __init__(self, edges: list[float], means: list[float]) -> None:
        self.edges = edges
        self.means = means

    @classmethod
    def fit(cls, growth: float, prompt_tokens: np.ndarray,
            output_tokens: np.ndarray) -> _BucketMean:
        if len(prompt_tokens) == 0:
            raise ValueError("engine.predictor: bucket_mean has no requests to learn from")
        num_edges = 1
        while growth ** (num_edges - 1) <= prompt_tokens.max():
            num_edges += 1
        edges = growth ** np.arange(num_edges, dtype=np.float64)  # a bucket past the largest
        bucket = np.searchsorted(edges, prompt_tokens, side="right") - 1
        counts = np.bincount(bucket, minlength=num_edges)
        sums = np.bincount(bucket, weights=output_tokens.astype(np.float64),
                           minlength=num_edges)
        overall = float(output_tokens.mean())
        means = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        return cls(edges.tolist(), means.tolist())

    def __call__(self, request_id: int, prompt_tokens: int, output_tokens: int) -> float:
        k = bisect.bisect_right(self.edges, prompt_tokens) - 1
        return self.means[min(k, len(self.means) - 1)]
