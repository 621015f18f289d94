"""Workload configuration: length distributions, arrival processes and workloads.

Every model is frozen pydantic with ``extra="forbid"``, and each family is a union
discriminated on ``kind``, so a YAML scenario validates end to end and an unknown
kind is answered with the list of known ones. Models carry their sampling method;
the numerical work lives in :mod:`workloads.lengths` and :mod:`workloads.arrivals`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workloads.arrivals import constant_gaps, gamma_gaps, poisson_gaps
from workloads.lengths import (
    MAX_ZIPF_RANGE,
    sample_fixed,
    sample_lognormal,
    sample_normal,
    sample_uniform,
    sample_zipf,
)

_KIND_DESC = "Discriminator: selects this model within its union."
_MIN_TOKENS_DESC = "Smallest token count a sample may take (samples below are clipped up)."
_MAX_TOKENS_DESC = "Largest token count a sample may take (samples above are clipped down)."
_OPTIONAL_MAX_DESC = _MAX_TOKENS_DESC + " None: no upper clip."


def _check_min_max(min_tokens: int, max_tokens: int | None) -> None:
    if max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) > max_tokens ({max_tokens})")


# ---------------------------------------------------------------- length distributions


class FixedLength(BaseModel):
    """Every request has exactly ``tokens`` tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["fixed"] = Field(default="fixed", description=_KIND_DESC)
    tokens: int = Field(ge=1, description="Token count of every request.")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts (int64), all equal to ``tokens``; ``rng`` is not used."""
        return sample_fixed(n, self.tokens)


class UniformLength(BaseModel):
    """Integers uniform on ``[min_tokens, max_tokens]``, both ends included."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["uniform"] = Field(default="uniform", description=_KIND_DESC)
    min_tokens: int = Field(default=1, ge=1, description="Smallest token count (inclusive).")
    max_tokens: int = Field(ge=1, description="Largest token count (inclusive).")

    @model_validator(mode="after")
    def _check_bounds(self) -> UniformLength:
        _check_min_max(self.min_tokens, self.max_tokens)
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts (int64) drawn from ``rng``, each in [min_tokens, max_tokens]."""
        return sample_uniform(rng, n, self.min_tokens, self.max_tokens)


class NormalLength(BaseModel):
    """Normal(mean_tokens, std_tokens), rounded to integers and clipped to the bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["normal"] = Field(default="normal", description=_KIND_DESC)
    mean_tokens: float = Field(gt=0, description="Mean of the unclipped normal (tokens).")
    std_tokens: float = Field(ge=0, description="Standard deviation of the normal (tokens).")
    min_tokens: int = Field(default=1, ge=1, description=_MIN_TOKENS_DESC)
    max_tokens: int | None = Field(default=None, ge=1, description=_OPTIONAL_MAX_DESC)

    @model_validator(mode="after")
    def _check_bounds(self) -> NormalLength:
        _check_min_max(self.min_tokens, self.max_tokens)
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts (int64) drawn from ``rng``, each in [min_tokens, max_tokens]."""
        return sample_normal(
            rng, n, self.mean_tokens, self.std_tokens, self.min_tokens, self.max_tokens
        )


class LogNormalLength(BaseModel):
    """Log-normal token counts: ``median_tokens * exp(sigma * Z)``, rounded and clipped.

    The usual shape of real prompt and output lengths: a long right tail whose weight
    ``sigma`` sets (``sigma`` ≈ 1 is typical of chat traces).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["lognormal"] = Field(default="lognormal", description=_KIND_DESC)
    median_tokens: float = Field(gt=0, description="Median of the unclipped distribution (tokens).")
    sigma: float = Field(ge=0, description="Standard deviation of ln(tokens) (dimensionless).")
    min_tokens: int = Field(default=1, ge=1, description=_MIN_TOKENS_DESC)
    max_tokens: int | None = Field(default=None, ge=1, description=_OPTIONAL_MAX_DESC)

    @model_validator(mode="after")
    def _check_bounds(self) -> LogNormalLength:
        _check_min_max(self.min_tokens, self.max_tokens)
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts (int64) drawn from ``rng``, each in [min_tokens, max_tokens]."""
        return sample_lognormal(
            rng, n, self.median_tokens, self.sigma, self.min_tokens, self.max_tokens
        )


class ZipfLength(BaseModel):
    """Zipf law on the integers ``[min_tokens, max_tokens]``: P(k) ∝ k^-exponent.

    Truncated, not clipped: the probabilities are renormalised over the range, so no
    mass piles up on the bounds. The range may span at most 2**22 integers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["zipf"] = Field(default="zipf", description=_KIND_DESC)
    exponent: float = Field(gt=1, description="Power-law exponent s in P(k) ∝ k^-s (> 1).")
    min_tokens: int = Field(default=1, ge=1, description="Smallest token count (inclusive).")
    max_tokens: int = Field(ge=1, description="Largest token count (inclusive).")

    @model_validator(mode="after")
    def _check_bounds(self) -> ZipfLength:
        _check_min_max(self.min_tokens, self.max_tokens)
        span = self.max_tokens - self.min_tokens + 1
        if span > MAX_ZIPF_RANGE:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) - min_tokens ({self.min_tokens}) + 1 = {span} "
                f"integers; a Zipf range may span at most {MAX_ZIPF_RANGE}"
            )
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts (int64) drawn from ``rng``, each in [min_tokens, max_tokens]."""
        return sample_zipf(rng, n, self.exponent, self.min_tokens, self.max_tokens)


LengthDist = Annotated[
    FixedLength | UniformLength | NormalLength | LogNormalLength | ZipfLength,
    Field(discriminator="kind"),
]
"""A distribution of token counts per request, chosen by ``kind``."""


# ---------------------------------------------------------------- arrival processes


class PoissonArrivals(BaseModel):
    """Open loop, Poisson process: independent exponential gaps with mean 1/rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["poisson"] = Field(default="poisson", description=_KIND_DESC)
    rate_per_s: float = Field(gt=0, description="Mean arrival rate (requests per second).")

    def inter_arrivals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` gaps (float64 s) drawn from ``rng``; arrival times are their cumsum."""
        return poisson_gaps(rng, n, self.rate_per_s)


class GammaArrivals(BaseModel):
    """Open loop, renewal process with gamma gaps: mean 1/rate, coefficient of variation cv.

    ``cv = 1`` is Poisson; ``cv > 1`` is burstier (clumps and lulls), ``cv < 1`` more
    regular. The gamma shape is ``1 / cv**2``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["gamma"] = Field(default="gamma", description=_KIND_DESC)
    rate_per_s: float = Field(gt=0, description="Mean arrival rate (requests per second).")
    cv: float = Field(gt=0, description="Coefficient of variation of a gap (std / mean).")

    def inter_arrivals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` gaps (float64 s) drawn from ``rng``; arrival times are their cumsum."""
        return gamma_gaps(rng, n, self.rate_per_s, self.cv)


class ConstantArrivals(BaseModel):
    """Open loop, one request every ``1 / rate_per_s`` seconds exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["constant"] = Field(default="constant", description=_KIND_DESC)
    rate_per_s: float = Field(gt=0, description="Arrival rate (requests per second).")

    def inter_arrivals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` gaps of exactly ``1 / rate_per_s`` s; ``rng`` is not used."""
        return constant_gaps(n, self.rate_per_s)


class OfflineArrivals(BaseModel):
    """Offline batch: every request is present at t = 0 (bound it with num_requests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["offline"] = Field(default="offline", description=_KIND_DESC)

    def inter_arrivals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` zero gaps (float64); ``rng`` is not used."""
        return np.zeros(n)


class ClosedLoopArrivals(BaseModel):
    """Closed loop: ``concurrency`` clients, each with at most one request outstanding.

    A client sends a request, waits until it finishes or is rejected, waits
    ``think_time_s``, then sends the next. Arrival times depend on the simulated
    latencies, so the engine drives this process; it has no ``inter_arrivals``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["closed_loop"] = Field(default="closed_loop", description=_KIND_DESC)
    concurrency: int = Field(ge=1, description="Number of clients (requests in flight at most).")
    think_time_s: float = Field(
        default=0.0, ge=0, description="Pause between a response and the client's next request (s)."
    )


OpenLoopArrivals = PoissonArrivals | GammaArrivals | ConstantArrivals | OfflineArrivals
"""Arrival processes whose times do not depend on the simulation (they have inter_arrivals)."""

ArrivalProcess = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | OfflineArrivals | ClosedLoopArrivals,
    Field(discriminator="kind"),
]
"""How requests arrive, chosen by ``kind``."""


# ---------------------------------------------------------------- workloads


class RequestClass(BaseModel):
    """One class of requests in a synthetic workload: its share of the requests, its
    scheduling priority and TTFT target, and optionally its own length distributions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(
        gt=0, description="Relative share of requests in this class (weights need not sum to 1)."
    )
    priority: int = Field(
        default=0, description="Scheduling priority of its requests: lower is served first."
    )
    ttft_slo_s: float | None = Field(
        default=None, gt=0,
        description="TTFT target of its requests (s); None: the scenario's slo.ttft_s.",
    )
    prompt_tokens: LengthDist | None = Field(
        default=None, description="Its prompt lengths (tokens); None: the workload's."
    )
    output_tokens: LengthDist | None = Field(
        default=None, description="Its output lengths (tokens); None: the workload's."
    )


class SharedPrefix(BaseModel):
    """Prompts that start with one of a few shared prefixes (system prompts, few-shot
    examples), which a prefix cache can reuse.

    Each prefix's length is drawn once (or fixed); a request that carries a prefix gets a
    uniformly chosen one, and its prompt is the prefix followed by the sampled prompt
    length (``prompt_tokens`` = prefix + user part).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_prefixes: int = Field(ge=1, description="Distinct prefixes (ids 0 .. num_prefixes-1).")
    tokens: Annotated[int, Field(ge=1)] | LengthDist = Field(
        description="Length of each prefix (tokens): a number, or a distribution drawn once "
        "per prefix."
    )
    request_frac: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests that start with a prefix."
    )


class SyntheticWorkload(BaseModel):
    """Requests drawn at random: arrival process, prompt lengths and output lengths.

    The three are independent: each draws from its own random stream, so changing a
    length distribution leaves the arrival times unchanged. Optional ``classes`` give
    requests priorities, TTFT targets and their own lengths; an optional
    ``shared_prefix`` starts prompts with shared content. Both draw from streams of
    their own, so leaving them out gives exactly the requests of a workload without
    them. Neither is supported with closed-loop arrivals.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["synthetic"] = Field(default="synthetic", description=_KIND_DESC)
    arrival: ArrivalProcess = Field(description="When requests arrive.")
    prompt_tokens: LengthDist = Field(description="Prompt length per request (tokens).")
    output_tokens: LengthDist = Field(
        description="Output length per request (tokens generated, hidden from policies)."
    )
    classes: tuple[RequestClass, ...] | None = Field(
        default=None, min_length=1,
        description="Request classes, each request drawn in proportion to their weights; "
        "None: one class (priority 0, the scenario's TTFT target).",
    )
    shared_prefix: SharedPrefix | None = Field(
        default=None, description="Shared prompt prefixes; None: no request shares one."
    )

    @model_validator(mode="after")
    def _check_closed_loop(self) -> SyntheticWorkload:
        if isinstance(self.arrival, ClosedLoopArrivals) and (
            self.classes is not None or self.shared_prefix is not None
        ):
            raise ValueError(
                "classes and shared_prefix need open-loop arrivals: closed_loop clients draw "
                "their requests during the run, without classes or prefixes; use poisson, "
                "gamma, constant or offline arrivals, or drop them"
            )
        return self


class TraceWorkload(BaseModel):
    """Requests replayed from a file: CSV with a header row, or JSONL (one object a line).

    Arrival times must be non-decreasing in file order; they are shifted so the first
    request arrives at t = 0, then divided by ``time_scale``. Optional columns give
    each request a priority, a TTFT target and a shared prefix; columns not named are
    ignored. The file is read by :func:`workloads.trace.read_trace`, not when the
    config is built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["trace"] = Field(default="trace", description=_KIND_DESC)
    path: Path = Field(description="Trace file; a relative path is relative to the working dir.")
    format: Literal["csv", "jsonl"] | None = Field(
        default=None, description="File format; None: from the suffix (.csv, .jsonl or .ndjson)."
    )
    time_scale: float = Field(
        default=1.0, gt=0, description="Replay speed-up factor: arrival times are divided by it."
    )
    arrival_column: str = Field(
        default="arrival_s", min_length=1, description="Column with arrival times (time_unit)."
    )
    prompt_column: str = Field(
        default="prompt_tokens", min_length=1, description="Column with prompt lengths (tokens)."
    )
    output_column: str = Field(
        default="output_tokens", min_length=1, description="Column with output lengths (tokens)."
    )
    time_unit: Literal["s", "ms", "us"] = Field(
        default="s", description="Unit of the arrival column: seconds, milliseconds, microseconds."
    )
    priority_column: str | None = Field(
        default=None, min_length=1,
        description="Column with each request's priority (an integer, lower served first); "
        "None: all 0.",
    )
    ttft_slo_column: str | None = Field(
        default=None, min_length=1,
        description="Column with each request's TTFT target (s, > 0); None: the scenario's.",
    )
    prefix_id_column: str | None = Field(
        default=None, min_length=1,
        description="Column with each request's shared-prefix id (an integer >= 0, or -1 "
        "for none); needs prefix_tokens_column. None: no shared prefixes.",
    )
    prefix_tokens_column: str | None = Field(
        default=None, min_length=1,
        description="Column with how many of the prompt's first tokens are that prefix "
        "(0 to the prompt's length); needs prefix_id_column.",
    )

    def columns(self) -> dict[str, str]:
        """The columns this config reads: field name -> column name, the three required
        ones first, then the optional ones that are set."""
        fields = ["arrival_column", "prompt_column", "output_column", "priority_column",
                  "ttft_slo_column", "prefix_id_column", "prefix_tokens_column"]
        named = {f: getattr(self, f) for f in fields}
        return {f: c for f, c in named.items() if c is not None}

    @model_validator(mode="after")
    def _check_columns(self) -> TraceWorkload:
        names = [self.arrival_column, self.prompt_column, self.output_column]
        if len(set(names)) < 3:
            raise ValueError(
                f"arrival_column ({self.arrival_column!r}), prompt_column "
                f"({self.prompt_column!r}) and output_column ({self.output_column!r}) "
                "must be three different columns"
            )
        columns = self.columns()
        if len(set(columns.values())) < len(columns):
            named = ", ".join(f"{f} ({c!r})" for f, c in columns.items())
            raise ValueError(f"each column may be named once: {named}")
        if (self.prefix_id_column is None) != (self.prefix_tokens_column is None):
            raise ValueError(
                f"prefix_id_column ({self.prefix_id_column!r}) and prefix_tokens_column "
                f"({self.prefix_tokens_column!r}) go together: set both or neither"
            )
        return self


WorkloadConfig = Annotated[SyntheticWorkload | TraceWorkload, Field(discriminator="kind")]
"""A workload, chosen by ``kind``: synthetic or a trace."""
