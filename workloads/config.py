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

from workloads.arrivals import (
    PiecewiseRate,
    constant_gaps,
    diurnal_arrival_times,
    gamma_gaps,
    mmpp_arrival_times,
    poisson_gaps,
    schedule_arrival_times,
)
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


class ScheduleSegment(BaseModel):
    """One point of a rate schedule: from ``start_s`` on, the rate is ``rate_per_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_s: float = Field(ge=0, description="When this segment starts (s since t = 0).")
    rate_per_s: float = Field(ge=0, description="Arrival rate from start_s on (requests/s).")


class ScheduleArrivals(BaseModel):
    """Open loop, Poisson process whose rate follows a schedule of segments.

    ``ramp: false``: the rate steps to each segment's rate at its start (piecewise
    constant). ``ramp: true``: it moves linearly from one segment point to the next. After
    the last segment's start its rate holds. Generated exactly by time rescaling.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["schedule"] = Field(default="schedule", description=_KIND_DESC)
    segments: tuple[ScheduleSegment, ...] = Field(
        min_length=1, description="Rate segments, sorted by start_s; the first starts at 0."
    )
    ramp: bool = Field(
        default=False, description="Interpolate linearly between segment points (else steps)."
    )

    @model_validator(mode="after")
    def _check_segments(self) -> ScheduleArrivals:
        if self.segments[0].start_s != 0:
            raise ValueError(f"segments[0].start_s must be 0, got {self.segments[0].start_s:g}")
        for i in range(1, len(self.segments)):
            if not self.segments[i].start_s > self.segments[i - 1].start_s:
                raise ValueError(
                    f"segments must be sorted by start_s: segments[{i}].start_s "
                    f"({self.segments[i].start_s:g}) <= segments[{i - 1}].start_s "
                    f"({self.segments[i - 1].start_s:g})"
                )
        if not any(s.rate_per_s > 0 for s in self.segments):
            raise ValueError("segments: at least one rate_per_s must be > 0")
        return self

    def rate(self) -> PiecewiseRate:
        """The schedule as a piecewise rate (knots at the segment starts)."""
        return PiecewiseRate(np.array([s.start_s for s in self.segments]),
                             np.array([s.rate_per_s for s in self.segments]), ramp=self.ramp)

    def arrival_times(self, rng: np.random.Generator, *, num_requests: int | None,
                      duration_s: float | None) -> np.ndarray:
        """Arrival times (float64 s) drawn from ``rng``, cut to the bounds."""
        return schedule_arrival_times(rng, self.rate(), num_requests=num_requests,
                                      duration_s=duration_s)


class DiurnalArrivals(BaseModel):
    """Open loop, Poisson process with a sinusoidal rate (a day's traffic cycle):
    ``mean_rate_per_s * (1 + amplitude_frac * sin(2π (t - phase_s) / period_s))``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["diurnal"] = Field(default="diurnal", description=_KIND_DESC)
    mean_rate_per_s: float = Field(gt=0, description="Rate averaged over a period (requests/s).")
    amplitude_frac: float = Field(
        ge=0, le=1, description="Swing of the rate as a share of the mean (0: Poisson)."
    )
    period_s: float = Field(default=86400.0, gt=0, description="Length of one cycle (s).")
    phase_s: float = Field(
        default=0.0, description="Time (s) at which the rate crosses the mean, rising."
    )

    def arrival_times(self, rng: np.random.Generator, *, num_requests: int | None,
                      duration_s: float | None) -> np.ndarray:
        """Arrival times (float64 s) drawn from ``rng``, cut to the bounds."""
        return diurnal_arrival_times(
            rng, self.mean_rate_per_s, self.amplitude_frac, self.period_s, self.phase_s,
            num_requests=num_requests, duration_s=duration_s,
        )


class MMPPState(BaseModel):
    """One state of a Markov-modulated Poisson process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_s: float = Field(ge=0, description="Arrival rate in this state (requests/s).")
    mean_dwell_s: float = Field(gt=0, description="Mean time spent per visit (s, exponential).")


class MMPPArrivals(BaseModel):
    """Open loop, Markov-modulated Poisson process: Poisson at the current state's rate;
    each visit lasts an exponential time, then the next state is uniform among the others.

    Starts in the first state. The long-run rate is the dwell-weighted mean of the rates,
    ``sum(rate * mean_dwell) / sum(mean_dwell)``; gaps are burstier than Poisson (cv > 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mmpp"] = Field(default="mmpp", description=_KIND_DESC)
    states: tuple[MMPPState, ...] = Field(min_length=2, description="The states (at least 2).")

    @model_validator(mode="after")
    def _check_rates(self) -> MMPPArrivals:
        if not any(s.rate_per_s > 0 for s in self.states):
            raise ValueError("states: at least one rate_per_s must be > 0")
        return self

    def arrival_times(self, rng: np.random.Generator, *, num_requests: int | None,
                      duration_s: float | None) -> np.ndarray:
        """Arrival times (float64 s) drawn from ``rng``, cut to the bounds."""
        return mmpp_arrival_times(
            rng, np.array([s.rate_per_s for s in self.states]),
            np.array([s.mean_dwell_s for s in self.states]),
            num_requests=num_requests, duration_s=duration_s,
        )


RateModulatedArrivals = ScheduleArrivals | DiurnalArrivals | MMPPArrivals
"""Open-loop Poisson processes with a time-varying rate (they have arrival_times)."""

OpenLoopArrivals = (
    PoissonArrivals | GammaArrivals | ConstantArrivals | OfflineArrivals | RateModulatedArrivals
)
"""Arrival processes whose times do not depend on the simulation (renewal processes have
inter_arrivals, rate-modulated ones arrival_times)."""

ArrivalProcess = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | OfflineArrivals | ScheduleArrivals
    | DiurnalArrivals | MMPPArrivals | ClosedLoopArrivals,
    Field(discriminator="kind"),
]
"""How requests arrive, chosen by ``kind``."""


# ---------------------------------------------------------------- input transforms


class PromptCompression(BaseModel):
    """Prompt compression before serving (LLMLingua, LongLLMLingua, LLMLingua-2): a small
    model reads each prompt and drops tokens, and the engine serves the shorter prompt.

    Set exactly one of ``ratio`` (a prompt of p tokens becomes ceil(p / ratio)) and
    ``target_tokens`` (min(p, target_tokens)); a prompt never drops below 1 token. The
    compressor's time, ``compressor_fixed_s + compressor_s_per_token * p`` for the p
    tokens it reads, passes before the request reaches the engine. A shortened prompt
    loses its shared prefix (its ``prefix_id`` becomes -1): compression rewrites the
    prefix too, so its KV can no longer be shared. Only token counts and time are
    modelled, not what compression does to answer quality.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["prompt_compression"] = Field(
        default="prompt_compression", description=_KIND_DESC
    )
    ratio: float | None = Field(
        default=None, ge=1,
        description="Compression ratio (>= 1): a prompt of p tokens becomes ceil(p / ratio) "
        "tokens; every prompt goes through the compressor. None: use target_tokens.",
    )
    target_tokens: int | None = Field(
        default=None, ge=1,
        description="Token budget: a longer prompt is cut to this many tokens; a prompt "
        "already within it is passed on unread (no compressor time). None: use ratio.",
    )
    compressor_s_per_token: float = Field(
        ge=0,
        description="Compressor time per prompt token it reads (s/token). No default: it "
        "depends on the compressor model and its hardware (docs/workloads.md works one out).",
    )
    compressor_fixed_s: float = Field(
        ge=0,
        description="Compressor time per compressed request besides the per-token part (s): "
        "the call, tokenising, detokenising.",
    )

    @model_validator(mode="after")
    def _check_one_mode(self) -> PromptCompression:
        if (self.ratio is None) == (self.target_tokens is None):
            raise ValueError(
                f"set exactly one of ratio ({self.ratio}) and target_tokens "
                f"({self.target_tokens})"
            )
        return self


class Retrieval(BaseModel):
    """Retrieval-augmented generation: before the request reaches the engine, a
    retriever takes ``latency_s`` and adds retrieved passages to its prompt.

    The retrieved tokens go after the request's shared prefix (a system prompt stays
    first and shareable) and before the user's own prompt; their count is drawn per
    request from ``retrieved_tokens``. Only token counts and time are modelled, not what
    is retrieved or how relevant it is.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["retrieval"] = Field(default="retrieval", description=_KIND_DESC)
    retrieved_tokens: LengthDist = Field(
        description="Tokens of retrieved context added to each prompt (a length "
        "distribution, drawn per request)."
    )
    latency_s: float = Field(
        ge=0,
        description="Retrieval time per request (s): embedding the query, the vector search "
        "and fetching the passages, before the request reaches the engine.",
    )


class SkeletonOfThought(BaseModel):
    """Skeleton-of-Thought (Ning et al., ICLR 2024): each request first asks for a
    skeleton of its answer, then expands each of its ``num_points`` points in a request
    of its own, all issued when the skeleton is done.

    A request with prompt p and output o becomes a skeleton request (prompt p +
    ``skeleton_prompt_tokens``, output ``skeleton_tokens``) followed by ``num_points``
    point requests (prompt p + ``point_prompt_tokens`` + ``skeleton_tokens``, output
    ceil(o / num_points)). It must be the last transform.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["skeleton_of_thought"] = Field(
        default="skeleton_of_thought", description=_KIND_DESC
    )
    num_points: int = Field(
        ge=1, description="Points in each skeleton: point-expansion requests per request."
    )
    skeleton_tokens: int = Field(
        ge=1,
        description="Output of the skeleton request (tokens); each point request's prompt "
        "carries the whole skeleton.",
    )
    skeleton_prompt_tokens: int = Field(
        default=100, ge=0,
        description="Instruction tokens the skeleton request adds to the prompt (about the "
        "length of the SoT paper's skeleton template).",
    )
    point_prompt_tokens: int = Field(
        default=60, ge=0,
        description="Instruction tokens each point request adds to the prompt besides the "
        "skeleton (about the length of the SoT paper's point-expanding template).",
    )


InputTransform = Annotated[
    PromptCompression | Retrieval | SkeletonOfThought, Field(discriminator="kind")
]
"""A transform of the request stream between the client and the engine, chosen by
``kind``."""

_TRANSFORMS_DESC = (
    "Input transforms applied in order to the generated or loaded requests (prompt "
    "compression, retrieval, Skeleton-of-Thought); empty: none."
)


def _check_transforms(transforms: tuple[InputTransform, ...]) -> None:
    """Skeleton-of-Thought splits requests into dependent parts, so it comes last, once."""
    sot = [i for i, t in enumerate(transforms) if isinstance(t, SkeletonOfThought)]
    if sot and sot != [len(transforms) - 1]:
        raise ValueError(
            "transforms: skeleton_of_thought must be the last transform and appear once; "
            f"found at position(s) {sot} (from 0) of {len(transforms)} transforms"
        )


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


class Sessions(BaseModel):
    """Multi-turn conversations: the arrival process starts sessions, and each session
    sends several turns (requests), one ``think_time`` after another (open loop: the
    reply is not waited for).

    Turn 1's prompt is drawn from the workload's ``prompt_tokens``; turn k+1's prompt is
    turn k's prompt + turn k's output + a new message. Every turn carries its session's
    id as ``prefix_id`` (sessions numbered 0, 1, ... in start order) and its whole
    prompt as ``prefix_tokens``, so a prefix cache reuses the history.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_turns: Annotated[int, Field(ge=1)] | LengthDist = Field(
        description="Turns per session: a number, or a distribution drawn per session "
        "(its *_tokens fields count turns)."
    )
    message_tokens: LengthDist = Field(
        description="Length of the new user message of turns 2, 3, ... (tokens)."
    )
    mean_think_time_s: float = Field(
        ge=0, description="Mean time from one turn's arrival to the next's (s)."
    )
    think_time_dist: Literal["exponential", "fixed"] = Field(
        default="exponential",
        description="Think times: exponential with that mean, or exactly the mean.",
    )


class SyntheticWorkload(BaseModel):
    """Requests drawn at random: arrival process, prompt lengths and output lengths.

    The three are independent: each draws from its own random stream, so changing a
    length distribution leaves the arrival times unchanged. Optional ``classes`` give
    requests priorities, TTFT targets and their own lengths; an optional
    ``shared_prefix`` starts prompts with shared content. Both draw from streams of
    their own, so leaving them out gives exactly the requests of a workload without
    them. Neither is supported with closed-loop arrivals. ``transforms`` then change the
    requests on their way to the engine (:mod:`workloads.transforms`).
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
    sessions: Sessions | None = Field(
        default=None,
        description="Multi-turn sessions started by the arrival process; None: every "
        "arrival is one independent request.",
    )
    transforms: tuple[InputTransform, ...] = Field(default=(), description=_TRANSFORMS_DESC)

    @model_validator(mode="after")
    def _check_closed_loop(self) -> SyntheticWorkload:
        if isinstance(self.arrival, ClosedLoopArrivals) and (
            self.classes is not None or self.shared_prefix is not None
            or self.sessions is not None
        ):
            raise ValueError(
                "classes, shared_prefix and sessions need open-loop arrivals: closed_loop "
                "clients draw their requests during the run, without classes, prefixes or "
                "sessions; use an open-loop arrival kind, or drop them"
            )
        if self.sessions is not None and (
            self.classes is not None or self.shared_prefix is not None
        ):
            raise ValueError(
                "sessions cannot be combined with classes or shared_prefix: a request has one "
                "prefix_id, the session's, so a tenant prompt could not be shared across "
                "sessions (and classes are not drawn per session); drop one of them"
            )
        if isinstance(self.arrival, ClosedLoopArrivals) and self.transforms:
            kinds = [t.kind for t in self.transforms]
            raise ValueError(
                f"transforms ({kinds}) need open-loop arrivals: closed_loop clients draw "
                "their requests during the run; use an open-loop arrival kind, or drop them"
            )
        _check_transforms(self.transforms)
        return self


TraceFormat = Literal["csv", "jsonl", "parquet", "azure", "burstgpt", "mooncake", "sharegpt"]
"""Trace file formats: generic (columns named in the config) or public traces."""

OpenLoopArrival = Annotated[OpenLoopArrivals, Field(discriminator="kind")]
"""An open-loop arrival process, chosen by ``kind``."""

_COLUMN_FIELDS = ("arrival_column", "prompt_column", "output_column", "priority_column",
                  "ttft_slo_column", "prefix_id_column", "prefix_tokens_column")


class TraceWorkload(BaseModel):
    """Requests replayed from a file: CSV with a header row, JSONL (one object a line),
    Parquet, or a public trace format (Azure, BurstGPT, Mooncake, ShareGPT).

    Arrival times must be non-decreasing in file order; they are shifted so the first
    request arrives at t = 0, then divided by ``time_scale``. Optional columns give
    each request a priority, a TTFT target and a shared prefix; columns not named are
    ignored. The file is read by :func:`workloads.trace.read_trace`, not when the
    config is built. ``transforms`` then change the requests on their way to the engine
    (:mod:`workloads.transforms`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["trace"] = Field(default="trace", description=_KIND_DESC)
    path: Path = Field(description="Trace file; a relative path is relative to the working dir.")
    format: TraceFormat | None = Field(
        default=None,
        description="File format: csv, jsonl, parquet (columns named below) or a public "
        "trace (azure, burstgpt, mooncake, sharegpt; fixed columns, see docs/workloads.md). "
        "None: from the suffix (.csv, .jsonl, .ndjson, .parquet).",
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

    start_s: float | None = Field(
        default=None, ge=0,
        description="Keep requests arriving at or after this time (s on the trace's clock, "
        "first arrival = 0, before time_scale); they are shifted so start_s replays at 0. "
        "None: from the start.",
    )
    end_s: float | None = Field(
        default=None, gt=0,
        description="Keep requests arriving before this time (s on the trace's clock, first "
        "arrival = 0, before time_scale). None: to the end.",
    )
    sample_frac: float | None = Field(
        default=None, gt=0, le=1,
        description="Keep each request with this probability (the scenario's seed); None: all.",
    )
    sample_every: int | None = Field(
        default=None, ge=1, description="Keep every k-th request (the 1st, k+1-th, ...); None: all."
    )
    models: tuple[str, ...] | None = Field(
        default=None, min_length=1,
        description="burstgpt only: keep rows whose Model is one of these; None: all.",
    )
    log_types: tuple[str, ...] | None = Field(
        default=None, min_length=1,
        description="burstgpt only: keep rows whose Log Type is one of these; None: all.",
    )
    arrival: OpenLoopArrival | None = Field(
        default=None,
        description="sharegpt only (required there): the arrival process of the conversations, "
        "which carry no timestamps.",
    )
    tokenizer: str | None = Field(
        default=None, min_length=1,
        description="sharegpt only: a tiktoken encoding or Hugging Face tokenizer name to count "
        "tokens with; None: about 4 characters per token.",
    )
    transforms: tuple[InputTransform, ...] = Field(default=(), description=_TRANSFORMS_DESC)

    def columns(self) -> dict[str, str]:
        """The columns this config reads: field name -> column name, the three required
        ones first, then the optional ones that are set."""
        named = {f: getattr(self, f) for f in _COLUMN_FIELDS}
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
        self._check_format_fields()
        _check_transforms(self.transforms)
        return self

    def _check_format_fields(self) -> None:
        """Public formats have fixed columns; format-specific fields need their format."""
        if self.sample_frac is not None and self.sample_every is not None:
            raise ValueError("set sample_frac or sample_every, not both")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be > start_s ({self.start_s})")
        fmt = self.format
        if fmt in ("azure", "burstgpt", "mooncake", "sharegpt"):
            mapped = sorted(self.model_fields_set & {*_COLUMN_FIELDS, "time_unit"})
            if mapped:
                raise ValueError(f"format {fmt} has fixed columns; remove {mapped}")
        only = {"models": "burstgpt", "log_types": "burstgpt", "arrival": "sharegpt",
                "tokenizer": "sharegpt"}
        for field, owner in only.items():
            if getattr(self, field) is not None and fmt != owner:
                raise ValueError(f"{field} applies to format {owner} only (format is {fmt})")
        if fmt == "sharegpt" and self.arrival is None:
            raise ValueError(
                "format sharegpt has no timestamps: set arrival (e.g. {kind: poisson, "
                "rate_per_s: 5})"
            )


WorkloadConfig = Annotated[SyntheticWorkload | TraceWorkload, Field(discriminator="kind")]
"""A workload, chosen by ``kind``: synthetic or a trace."""
