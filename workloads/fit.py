"""Fitting a synthetic workload to a trace, so a look-alike can be generated at any rate.

:func:`fit_workload` takes the requests of a trace (:class:`~workloads.trace.RequestArrays`)
and fits, each on its own:

- the arrival process: Poisson and gamma renewal, on the gaps between arrivals;
- prompt and output lengths: log-normal, normal, uniform and Zipf (a single observed
  value gives a fixed length), as the configs of :mod:`workloads.config` define them:
  rounded to integers and clipped to the observed minimum and maximum.

Every candidate gets its log-likelihood, AIC, BIC and Kolmogorov–Smirnov distance; the
one with the lowest BIC is chosen. Lengths are fitted by their exact discrete
likelihood: an integer ``k`` strictly inside the range has the probability the
continuous law gives to ``[k - 0.5, k + 0.5)`` (what the sampler rounds to ``k``), and
the two bounds carry the clipped tails, so the fit is of what the sampler draws.
docs/fitting.md explains the rule and how to read the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from scipy import optimize, stats

from workloads.config import (
    FixedLength,
    GammaArrivals,
    LogNormalLength,
    NormalLength,
    PoissonArrivals,
    SyntheticWorkload,
    UniformLength,
    ZipfLength,
)
from workloads.lengths import MAX_ZIPF_RANGE
from workloads.trace import RequestArrays

ArrivalFamily = Literal["poisson", "gamma"]
LengthFamily = Literal["lognormal", "normal", "uniform", "zipf"]
Quantity = Literal["arrival_gap_s", "prompt_tokens", "output_tokens"]

ArrivalFit = PoissonArrivals | GammaArrivals
LengthFit = FixedLength | UniformLength | NormalLength | LogNormalLength | ZipfLength

STAT_PERCENTILES = (50, 90, 99)
"""Percentiles compared between trace and fit (numpy's default, linear)."""

KS_GOOD = 0.05
KS_FAIR = 0.10
"""Verdict thresholds on the KS distance: <= KS_GOOD "good", <= KS_FAIR "fair", else "poor"."""

_FIT_SAMPLES = 200_000  # draws from a fitted config to measure its mean and percentiles
_FIT_SEED = 20_240_605  # fixed: the report is a pure function of the trace
_TINY = 1e-300  # probability floor inside logs


@dataclass(frozen=True, slots=True)
class Candidate:
    """One family fitted to one quantity. Lower AIC/BIC is better; ``ks_distance`` is the
    largest gap between the trace's and the fit's CDFs (0: identical, 1: disjoint)."""

    quantity: Quantity
    family: str
    config: ArrivalFit | LengthFit  # the fitted config, valid as it stands
    params: dict[str, float]  # the fitted parameters, by config field name
    num_params: int  # free parameters (bounds taken from the data not counted)
    log_likelihood: float  # of the trace under the fit (discrete, for token counts)
    aic: float  # 2 k - 2 log L
    bic: float  # k ln n - 2 log L
    ks_distance: float
    ks_pvalue: float  # tends to 0 on large traces whatever the fit: read ks_distance
    fit_stats: tuple[float, ...]  # mean, then STAT_PERCENTILES, of the fitted distribution

    @property
    def verdict(self) -> Literal["good", "fair", "poor"]:
        """"good" when ks_distance <= KS_GOOD, "fair" when <= KS_FAIR, else "poor"."""
        if self.ks_distance <= KS_GOOD:
            return "good"
        return "fair" if self.ks_distance <= KS_FAIR else "poor"


@dataclass(frozen=True)
class WorkloadFit:
    """The result of :func:`fit_workload`: every candidate per quantity, best (lowest BIC)
    first, the trace's own statistics, and burstiness and correlation measures."""

    num_requests: int
    span_s: float  # last arrival - first arrival
    candidates: dict[Quantity, tuple[Candidate, ...]]  # sorted by BIC, best first
    trace_stats: dict[Quantity, tuple[float, ...]]  # mean, then STAT_PERCENTILES
    gap_cv: float  # std / mean of inter-arrival gaps (1 for Poisson)
    dispersion_index: float  # var / mean of arrivals per window (1 for Poisson)
    dispersion_window_s: float  # the window it was counted over
    prompt_output_spearman: float  # rank correlation of prompt and output lengths
    notes: tuple[str, ...] = field(default=())  # anything the fit had to adjust

    @property
    def rate_per_s(self) -> float:
        """Mean arrival rate of the trace (requests per second): 1 / mean gap."""
        return self.arrival.params["rate_per_s"]

    @property
    def arrival(self) -> Candidate:
        """The chosen arrival process."""
        return self.candidates["arrival_gap_s"][0]

    @property
    def prompt(self) -> Candidate:
        """The chosen prompt-length distribution."""
        return self.candidates["prompt_tokens"][0]

    @property
    def output(self) -> Candidate:
        """The chosen output-length distribution."""
        return self.candidates["output_tokens"][0]

    def to_workload(self, rate_per_s: float | None = None) -> SyntheticWorkload:
        """The fitted workload; ``rate_per_s`` (> 0) replaces the trace's mean rate and
        keeps the gap CV, so the arrival times scale by ``trace rate / rate_per_s``.

        Prompt and output lengths are drawn independently, whatever the trace's
        correlation (see ``prompt_output_spearman``).
        """
        arrival = self.arrival.config
        if rate_per_s is not None:
            data = arrival.model_dump()
            data["rate_per_s"] = rate_per_s
            arrival = type(arrival).model_validate(data)
        prompt, output = self.prompt.config, self.output.config
        assert not isinstance(prompt, PoissonArrivals | GammaArrivals)
        assert not isinstance(output, PoissonArrivals | GammaArrivals)
        assert isinstance(arrival, PoissonArrivals | GammaArrivals)
        return SyntheticWorkload(arrival=arrival, prompt_tokens=prompt, output_tokens=output)

    def to_dict(self, rate_per_s: float | None = None) -> dict[str, Any]:
        """``to_workload(rate_per_s)`` as plain JSON types: a scenario's ``workload``."""
        return self.to_workload(rate_per_s).model_dump(mode="json")

    def to_yaml(self, rate_per_s: float | None = None) -> str:
        """``{"workload": to_dict(rate_per_s)}`` as YAML, to paste into a scenario."""
        return yaml.safe_dump({"workload": self.to_dict(rate_per_s)}, sort_keys=False)

    def report(self, all_candidates: bool = False) -> pd.DataFrame:
        """One row per quantity (the chosen family), or with ``all_candidates`` one per
        (quantity, family), best first. Columns: family, chosen, params, log_likelihood,
        aic, bic, ks_distance, ks_pvalue, verdict, then ``trace_`` and ``fit_`` mean,
        p50, p90 and p99 (seconds for arrival gaps, tokens for lengths)."""
        names = ["mean", *(f"p{p}" for p in STAT_PERCENTILES)]
        rows = []
        for quantity, candidates in self.candidates.items():
            for rank, c in enumerate(candidates if all_candidates else candidates[:1]):
                row: dict[str, Any] = {
                    "quantity": quantity,
                    "family": c.family,
                    "chosen": rank == 0,
                    "params": ", ".join(f"{k}={v:.4g}" for k, v in c.params.items()),
                    "log_likelihood": c.log_likelihood,
                    "aic": c.aic,
                    "bic": c.bic,
                    "ks_distance": c.ks_distance,
                    "ks_pvalue": c.ks_pvalue,
                    "verdict": c.verdict,
                }
                for name, t, f in zip(names, self.trace_stats[quantity], c.fit_stats,
                                      strict=True):
                    row[f"trace_{name}"] = t
                    row[f"fit_{name}"] = f
                rows.append(row)
        frame = pd.DataFrame(rows)
        return frame.set_index(["quantity", "family"] if all_candidates else "quantity")


def fit_workload(
    requests: RequestArrays,
    *,
    arrival_families: Sequence[ArrivalFamily] = ("poisson", "gamma"),
    length_families: Sequence[LengthFamily] = ("lognormal", "normal", "uniform", "zipf"),
    dispersion_window_s: float | None = None,
) -> WorkloadFit:
    """Fit an arrival process and two length distributions to ``requests``; reads them only.

    ``requests`` needs at least 3 requests arriving over a positive span (its optional
    columns are ignored). Each quantity is fitted with every family named, and the
    candidates are ranked by BIC. Lengths are clipped to the observed minimum and
    maximum; a quantity with one observed value is a fixed length. Zero gaps
    (simultaneous arrivals) are raised to half the smallest positive gap, the trace's
    time resolution, before the gamma and KS computations (they carry no likelihood
    otherwise). ``dispersion_window_s`` is the window the index of dispersion counts
    arrivals over; None: the time of 10 mean gaps.

    Raises ValueError for too few requests, a zero span, or an empty family list.
    """
    arrival_s = np.asarray(requests.arrival_s, dtype=np.float64)
    n = len(arrival_s)
    if n < 3:
        raise ValueError(f"fitting needs at least 3 requests, got {n}")
    span_s = float(arrival_s[-1] - arrival_s[0])
    if not span_s > 0:
        raise ValueError(
            f"all {n} requests arrive at t={arrival_s[0]:g} s: an offline batch has no "
            "arrival process to fit"
        )
    if not arrival_families or not length_families:
        raise ValueError("give at least one arrival family and one length family")
    notes: list[str] = []
    gaps = np.diff(arrival_s)
    num_zero = int(np.count_nonzero(gaps <= 0))
    if num_zero:
        floor = 0.5 * float(gaps[gaps > 0].min())
        gaps = np.maximum(gaps, floor)
        notes.append(f"{num_zero} zero gaps raised to {floor:.3g} s (half the smallest gap)")
    rate_per_s = 1.0 / float(np.mean(np.diff(arrival_s)))
    window_s = 10.0 / rate_per_s if dispersion_window_s is None else dispersion_window_s
    rng = np.random.default_rng(_FIT_SEED)

    prompt = np.asarray(requests.prompt_tokens, dtype=np.int64)
    output = np.asarray(requests.output_tokens, dtype=np.int64)
    candidates: dict[Quantity, tuple[Candidate, ...]] = {
        "arrival_gap_s": _rank(_fit_arrivals(gaps, rate_per_s, arrival_families, rng)),
        "prompt_tokens": _rank(_fit_lengths("prompt_tokens", prompt, length_families, rng)),
        "output_tokens": _rank(_fit_lengths("output_tokens", output, length_families, rng)),
    }
    rho = stats.spearmanr(prompt, output).statistic if np.ptp(prompt) and np.ptp(output) else 0.0
    return WorkloadFit(
        num_requests=n,
        span_s=span_s,
        candidates=candidates,
        trace_stats={"arrival_gap_s": _stats(np.diff(arrival_s)),
                     "prompt_tokens": _stats(prompt), "output_tokens": _stats(output)},
        gap_cv=float(np.std(gaps) / np.mean(gaps)),
        dispersion_index=_dispersion_index(arrival_s, window_s),
        dispersion_window_s=window_s,
        prompt_output_spearman=float(rho),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- helpers


def _stats(x: np.ndarray) -> tuple[float, ...]:
    return (float(np.mean(x)), *(float(v) for v in np.percentile(x, STAT_PERCENTILES)))


def _rank(candidates: list[Candidate]) -> tuple[Candidate, ...]:
    return tuple(sorted(candidates, key=lambda c: c.bic))


def _dispersion_index(arrival_s: np.ndarray, window_s: float) -> float:
    """var / mean of arrivals counted in consecutive windows over the trace's span."""
    edges = np.arange(arrival_s[0], arrival_s[-1], window_s)
    if len(edges) < 3:
        return math.nan
    counts = np.histogram(arrival_s, bins=edges)[0]
    mean = counts.mean()
    return float(counts.var() / mean) if mean > 0 else math.nan


def _candidate(quantity: Quantity, family: str, config: ArrivalFit | LengthFit,
               params: dict[str, float], num_params: int, log_likelihood: float, n: int,
               ks: tuple[float, float], fit_sample: np.ndarray) -> Candidate:
    return Candidate(
        quantity=quantity, family=family, config=config, params=params,
        num_params=num_params, log_likelihood=log_likelihood,
        aic=2 * num_params - 2 * log_likelihood,
        bic=num_params * math.log(n) - 2 * log_likelihood,
        ks_distance=ks[0], ks_pvalue=ks[1], fit_stats=_stats(fit_sample),
    )


# ---------------------------------------------------------------- arrivals


def _fit_arrivals(gaps: np.ndarray, rate_per_s: float, families: Sequence[ArrivalFamily],
                  rng: np.random.Generator) -> list[Candidate]:
    """Candidates for the gaps (s). Both families keep the trace's mean rate: the gamma
    MLE with loc 0 matches the sample mean exactly, so only its shape is compared."""
    n = len(gaps)
    out = []
    for family in families:
        if family == "poisson":
            config: ArrivalFit = PoissonArrivals(rate_per_s=rate_per_s)
            dist = stats.expon(scale=1.0 / rate_per_s)
            params = {"rate_per_s": rate_per_s}
            k = 1
        elif family == "gamma":
            if np.ptp(gaps) <= 1e-9 * float(np.mean(gaps)):
                continue  # evenly spaced: the gamma shape diverges (cv -> 0)
            shape, _, _ = stats.gamma.fit(gaps, floc=0)
            cv = 1.0 / math.sqrt(shape)
            config = GammaArrivals(rate_per_s=rate_per_s, cv=cv)
            dist = stats.gamma(shape, scale=1.0 / (rate_per_s * shape))
            params = {"rate_per_s": rate_per_s, "cv": cv}
            k = 2
        else:
            raise ValueError(f"unknown arrival family {family!r}; known: poisson, gamma")
        log_likelihood = float(np.sum(dist.logpdf(gaps)))
        ks = stats.kstest(gaps, dist.cdf)
        sample = config.inter_arrivals(rng, _FIT_SAMPLES)
        out.append(_candidate("arrival_gap_s", family, config, params, k, log_likelihood, n,
                              (float(ks.statistic), float(ks.pvalue)), sample))
    return out


# ---------------------------------------------------------------- lengths

DiscreteCdf = Callable[[np.ndarray], np.ndarray]
"""Integer token counts (float array) -> P(sample <= k) under the rounded, clipped law."""


def _rounded_clipped(continuous_cdf: Callable[[np.ndarray], np.ndarray],
                     lo: int, hi: int) -> DiscreteCdf:
    """CDF of round(X) clipped to [lo, hi]: P(round(X) <= k) = F(k + 0.5) inside."""
    def cdf(k: np.ndarray) -> np.ndarray:
        inside = continuous_cdf(np.clip(k, lo, hi) + 0.5)
        return np.where(k < lo, 0.0, np.where(k >= hi, 1.0, inside))
    return cdf


def _log_likelihood(cdf: DiscreteCdf, values: np.ndarray, counts: np.ndarray) -> float:
    pmf = cdf(values) - cdf(values - 1.0)
    return float(np.sum(counts * np.log(np.maximum(pmf, _TINY))))


def _ks_discrete(cdf: DiscreteCdf, values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Exact KS distance between the empirical and a discrete CDF, both steps at the
    integers: the sup over the reals is reached at an observed value or just before it.
    The p-value is the continuous-data one (kstwo), conservative for discrete data."""
    n = int(counts.sum())
    empirical = np.cumsum(counts) / n
    empirical_before = np.concatenate([[0.0], empirical[:-1]])
    d = max(float(np.max(np.abs(empirical - cdf(values)))),
            float(np.max(np.abs(empirical_before - cdf(values - 1.0)))))
    return d, float(stats.kstwo.sf(d, n))


def _fit_location_scale(values: np.ndarray, counts: np.ndarray, lo: int, hi: int,
                        make_cdf: Callable[[float, float], DiscreteCdf],
                        start: tuple[float, float]) -> tuple[float, float]:
    """(location, scale) maximising the discrete likelihood, from moment estimates."""
    def nll(theta: np.ndarray) -> float:
        return -_log_likelihood(make_cdf(float(theta[0]), math.exp(theta[1])), values, counts)

    x0 = np.array([start[0], math.log(max(start[1], 1e-6))])
    res = optimize.minimize(nll, x0, method="Nelder-Mead",
                            options={"xatol": 1e-6, "fatol": 1e-6, "maxiter": 2000})
    best = res.x if res.fun <= nll(x0) else x0
    return float(best[0]), math.exp(float(best[1]))


def _fit_lengths(quantity: Quantity, x: np.ndarray, families: Sequence[LengthFamily],
                 rng: np.random.Generator) -> list[Candidate]:
    values_int, counts = np.unique(x, return_counts=True)
    values = values_int.astype(np.float64)
    lo, hi = int(values_int[0]), int(values_int[-1])
    n = len(x)
    if lo == hi:
        fixed = FixedLength(tokens=lo)
        return [_candidate(quantity, "fixed", fixed, {"tokens": lo}, 0, 0.0, n, (0.0, 1.0),
                           fixed.sample(rng, _FIT_SAMPLES))]
    out = []
    for family in families:
        config: LengthFit
        if family == "lognormal":
            logs = np.log(values)
            mu0 = float(np.average(logs, weights=counts))
            s0 = math.sqrt(float(np.average((logs - mu0) ** 2, weights=counts)))

            def lognormal_cdf(mu: float, s: float) -> DiscreteCdf:
                return _rounded_clipped(lambda y: stats.norm.cdf((np.log(y) - mu) / s), lo, hi)

            mu, sigma = _fit_location_scale(values, counts, lo, hi, lognormal_cdf, (mu0, s0))
            config = LogNormalLength(median_tokens=math.exp(mu), sigma=sigma,
                                     min_tokens=lo, max_tokens=hi)
            cdf, k = lognormal_cdf(mu, sigma), 2
            params = {"median_tokens": math.exp(mu), "sigma": sigma}
        elif family == "normal":
            m0 = float(np.average(values, weights=counts))
            sd0 = math.sqrt(float(np.average((values - m0) ** 2, weights=counts)))

            def normal_cdf(m: float, sd: float) -> DiscreteCdf:
                return _rounded_clipped(lambda y: stats.norm.cdf((y - m) / sd), lo, hi)

            mean, sd = _fit_location_scale(values, counts, lo, hi, normal_cdf, (m0, sd0))
            if not mean > 0:  # the config needs a positive mean; the moments always have one
                mean, sd = m0, sd0
            config = NormalLength(mean_tokens=mean, std_tokens=sd, min_tokens=lo, max_tokens=hi)
            cdf, k = normal_cdf(mean, sd), 2
            params = {"mean_tokens": mean, "std_tokens": sd}
        elif family == "uniform":
            config = UniformLength(min_tokens=lo, max_tokens=hi)
            cdf, k = _uniform_cdf(lo, hi), 0
            params = {}
        elif family == "zipf":
            if hi - lo + 1 > MAX_ZIPF_RANGE:
                continue  # the config cannot hold the range
            exponent, cdf = _fit_zipf(values, counts, lo, hi)
            config = ZipfLength(exponent=exponent, min_tokens=lo, max_tokens=hi)
            k = 1
            params = {"exponent": exponent}
        else:
            raise ValueError(
                f"unknown length family {family!r}; known: lognormal, normal, uniform, zipf"
            )
        out.append(_candidate(quantity, family, config, params, k,
                              _log_likelihood(cdf, values, counts), n,
                              _ks_discrete(cdf, values, counts),
                              config.sample(rng, _FIT_SAMPLES)))
    return out


def _uniform_cdf(lo: int, hi: int) -> DiscreteCdf:
    return lambda k: np.clip((k - lo + 1) / (hi - lo + 1), 0.0, 1.0)


def _fit_zipf(values: np.ndarray, counts: np.ndarray, lo: int,
              hi: int) -> tuple[float, DiscreteCdf]:
    """Exponent s > 1 maximising the truncated Zipf likelihood on [lo, hi], and its CDF."""
    support_log = np.log(np.arange(lo, hi + 1, dtype=np.float64))
    total_log = float(np.sum(counts * np.log(values)))
    n = float(counts.sum())

    def nll(s: float) -> float:
        # log sum_k k^-s, shifted by its largest term for stability
        a = -s * support_log
        return s * total_log + n * (a.max() + math.log(float(np.sum(np.exp(a - a.max())))))

    res = optimize.minimize_scalar(nll, bounds=(1.0 + 1e-6, 20.0), method="bounded")
    s = float(res.x)
    pmf = np.exp(-s * support_log - (-s * support_log).max())
    table = np.cumsum(pmf) / pmf.sum()

    def cdf(k: np.ndarray) -> np.ndarray:
        idx = np.clip(k, lo, hi).astype(np.int64) - lo
        return np.where(k < lo, 0.0, table[idx])

    return s, cdf
