"""Capacity planning: the most load a deployment sustains under an SLO, and the cheapest
deployment that sustains a given load. See docs/planning.md.

Every verdict accounts for noise. A point is simulated with ``replications`` seeds (the
same seeds at every point: common random numbers, through :func:`simulator.sweeps.sweep`),
each constrained metric gets a Student-t confidence interval over the replications, and
a target ``metric <= limit`` is

- **meets** when the interval's unfavourable end (its high end) is within the limit,
- **fails** when its favourable end (its low end) is beyond the limit,
- **uncertain** otherwise: the interval straddles the limit. Never reported as meeting.

A point meets when every target meets, fails when any target fails, else is uncertain.
Intervals need two or more replications; a metric that is NaN (e.g. no finished request)
is uncertain.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from simulator.cost import BatchShape, CostModel
from simulator.deployment import ScenarioError, resolve, resolve_accelerator
from simulator.scenario import Scenario
from simulator.sweeps import Executor, summarize, sweep
from workloads.config import (
    ConstantArrivals,
    GammaArrivals,
    PoissonArrivals,
    SyntheticWorkload,
)
from workloads.generate import open_loop_requests

Verdict = Literal["meets", "fails", "uncertain"]
RATE_PATH = "workload.arrival.rate_per_s"


class Target(NamedTuple):
    """One SLO constraint: the mean of ``metric`` over replications must be <= ``limit``
    (``direction="max"``) or >= ``limit`` (``"min"``, e.g. ``slo_attainment_frac``)."""

    metric: str
    limit: float
    direction: Literal["max", "min"] = "max"

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.direction == 'max' else '>='} {self.limit:g}"


def slo_targets(base: Scenario, *, min_attainment_frac: float | None = None) -> list[Target]:
    """The default criterion: p99 TTFT <= ``slo.ttft_s`` and p99 TPOT <= ``slo.tpot_s``
    (a None target is left out), plus ``slo_attainment_frac >= min_attainment_frac`` when
    given. Does not modify ``base``."""
    targets = []
    if base.slo.ttft_s is not None:
        targets.append(Target("ttft_p99_s", base.slo.ttft_s))
    if base.slo.tpot_s is not None:
        targets.append(Target("tpot_p99_s", base.slo.tpot_s))
    if min_attainment_frac is not None:
        targets.append(Target("slo_attainment_frac", min_attainment_frac, "min"))
    if not targets:
        raise ValueError("no SLO target: set slo.ttft_s / slo.tpot_s or pass targets")
    return targets


class Judgement(NamedTuple):
    """A point's verdict; ``metric`` names the target that decided a failure (or the one
    left uncertain) and ``detail`` says by how much, with the interval."""

    verdict: Verdict
    metric: str | None
    detail: str


def judge(stats: Mapping[str, float], targets: Sequence[Target]) -> Judgement:
    """Verdict of one point from its ``<metric>_mean/_ci_low/_ci_high`` (as
    :func:`simulator.sweeps.summarize` gives). A query: changes nothing."""
    worst: tuple[float, Target] | None = None
    uncertain: Target | None = None
    for t in targets:
        mean, low, high = (stats[f"{t.metric}_{k}"] for k in ("mean", "ci_low", "ci_high"))
        bad_end, good_end = (high, low) if t.direction == "max" else (low, high)
        if any(math.isnan(v) for v in (mean, low, high)):
            uncertain = uncertain or t
            continue
        beyond = (lambda v, t=t: v > t.limit) if t.direction == "max" else (
            lambda v, t=t: v < t.limit)
        if beyond(good_end):
            excess = (mean / t.limit if t.direction == "max" else t.limit / max(mean, 1e-12))
            if worst is None or excess > worst[0]:
                worst = (excess, t)
        elif beyond(bad_end):
            uncertain = uncertain or t
    if worst is not None:
        t = worst[1]
        return Judgement("fails", t.metric, f"{_interval(stats, t.metric)} vs {t.describe()} "
                         f"({worst[0]:.2f}x)")
    if uncertain is not None:
        return Judgement("uncertain", uncertain.metric,
                         f"{_interval(stats, uncertain.metric)} straddles {uncertain.describe()}")
    return Judgement("meets", None, "all targets met")


def _interval(stats: Mapping[str, float], metric: str) -> str:
    return (f"{metric} {stats[f'{metric}_mean']:.4g} "
            f"[{stats[f'{metric}_ci_low']:.4g}, {stats[f'{metric}_ci_high']:.4g}]")


def _replicate(base: Scenario, point: Mapping[str, Any], *, replications: int,
               first_seed: int, executor: Executor, workers: int | None) -> pd.DataFrame:
    """Raw sweep rows of one point, seeds ``first_seed .. first_seed + replications - 1``."""
    return sweep(base, {k: [v] for k, v in point.items()}, replications=replications,
                 executor=executor, workers=workers, seed=first_seed)


def _with_values(base: Scenario, values: Mapping[str, Any]) -> Scenario:
    """``base`` with ``{dotted path: value}`` set (a new engine preset fills the engine
    fields the base did not set, as ``with_overrides`` does)."""
    data = base.model_dump(mode="json")
    if "engine.preset" in values:
        data["engine"] = base.engine.model_dump(mode="json", exclude_unset=True)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Scenario.from_dict(data)


def _stats(rows: pd.DataFrame, targets: Sequence[Target], confidence: float) -> dict[str, Any]:
    rows = rows.assign(_point=0)
    metrics = sorted({t.metric for t in targets})
    summary = summarize(rows, ["_point"], metrics, confidence).iloc[0]
    out: dict[str, Any] = {str(k): v for k, v in summary.items()}
    out.pop("_point")
    errors = [e for e in rows["error"] if e is not None]
    out["error"] = errors[0] if errors else None
    return out


# ---------------------------------------------------------------- max sustainable load


@dataclass(frozen=True)
class LoadResult:
    """The answer of :func:`max_sustainable_rate`.

    ``rate_per_s`` is the highest probed rate that surely meets every target (None if
    none did), ``fails_rate_per_s`` the lowest that surely fails (None if none did):
    the sustainable rate lies in between. ``uncertain_rates`` are probes in that
    interval whose intervals straddled a target even at ``max_replications``.
    ``binding_constraint`` is the target metric that failed at ``fails_rate_per_s``.
    ``probes`` has one row per probe: rate, n, each metric's mean/ci_low/ci_high,
    verdict, metric, detail.
    """

    rate_per_s: float | None
    fails_rate_per_s: float | None
    uncertain_rates: tuple[float, ...]
    binding_constraint: str | None
    targets: tuple[Target, ...]
    probes: pd.DataFrame
    wall_s: float

    def describe(self) -> str:
        meets = "none" if self.rate_per_s is None else f"{self.rate_per_s:.4g} req/s"
        fails = "none found" if self.fails_rate_per_s is None else \
            f"{self.fails_rate_per_s:.4g} req/s"
        lines = [f"max sustainable rate: {meets} surely meets; lowest sure failure: {fails}",
                 f"targets: {', '.join(t.describe() for t in self.targets)}",
                 f"binding constraint: {self.binding_constraint or 'none'}"]
        if self.uncertain_rates:
            lines.append("uncertain (CI straddles a target): "
                         + ", ".join(f"{r:.4g}" for r in self.uncertain_rates))
        return "\n".join(lines)


def _check_rate_workload(base: Scenario) -> None:
    workload = base.workload
    if not (isinstance(workload, SyntheticWorkload) and isinstance(
            workload.arrival, PoissonArrivals | GammaArrivals | ConstantArrivals)):
        kind = workload.arrival.kind if isinstance(workload, SyntheticWorkload) else \
            workload.kind
        raise ValueError(
            f"max_sustainable_rate searches workload.arrival.rate_per_s of a synthetic "
            f"open-loop workload (poisson, gamma or constant arrivals); got {kind!r}"
        )


def max_sustainable_rate(
    base: Scenario, *, targets: Sequence[Target] | None = None, replications: int = 3,
    max_replications: int = 9, confidence: float = 0.95, low_rate_per_s: float = 1.0,
    high_rate_per_s: float = 1e4, tolerance_frac: float = 0.05, max_probes: int = 24,
    executor: Executor = "process", workers: int | None = None,
) -> LoadResult:
    """The highest arrival rate ``base`` sustains under ``targets`` (default
    :func:`slo_targets`), searched over ``workload.arrival.rate_per_s``.

    Brackets by doubling from ``low_rate_per_s`` (halving if it already fails), then
    bisects until the gap between the highest sure "meets" and the lowest sure "fails"
    is within ``tolerance_frac`` of the former, or ``max_probes`` are spent. A probe
    whose interval straddles a target gets ``replications`` more seeds, up to
    ``max_replications``; still straddling, it is recorded as uncertain and the search
    narrows the uncertain band from both sides. Every probe uses the seeds
    ``base.seed, base.seed + 1, ...`` (common random numbers). Assumes the verdict is
    monotone in the rate; a "meets" above a "fails" is ignored.
    """
    if replications < 2:
        raise ValueError("replications must be >= 2: a confidence interval needs two runs")
    if not 0 < low_rate_per_s <= high_rate_per_s:
        raise ValueError("need 0 < low_rate_per_s <= high_rate_per_s")
    _check_rate_workload(base)
    chosen = tuple(targets) if targets is not None else tuple(slo_targets(base))
    start = time.perf_counter()
    probes: list[dict[str, Any]] = []

    def probe(rate: float) -> Verdict:
        rows = _replicate(base, {RATE_PATH: rate}, replications=replications,
                          first_seed=base.seed, executor=executor, workers=workers)
        while True:
            stats = _stats(rows, chosen, confidence)
            judgement = judge(stats, chosen)
            if judgement.verdict != "uncertain" or len(rows) >= max_replications:
                break
            more = min(replications, max_replications - len(rows))
            extra = _replicate(base, {RATE_PATH: rate}, replications=more,
                               first_seed=base.seed + len(rows), executor=executor,
                               workers=workers)
            rows = pd.concat([rows, extra], ignore_index=True)
        probes.append({"rate_per_s": rate, **stats, **judgement._asdict()})
        return judgement.verdict

    meets: float | None = None   # highest sure meet
    fails: float | None = None   # lowest sure fail
    uncertain: list[float] = []

    def record(rate: float) -> None:
        nonlocal meets, fails
        verdict = probe(rate)
        if verdict == "meets" and (fails is None or rate < fails):
            meets = rate if meets is None else max(meets, rate)
        elif verdict == "fails":
            fails = rate if fails is None else min(fails, rate)
        elif verdict == "uncertain":
            uncertain.append(rate)

    # Bracket.
    rate = low_rate_per_s
    record(rate)
    while len(probes) < max_probes and fails is None and rate < high_rate_per_s:
        rate = min(2 * rate, high_rate_per_s)
        record(rate)
    rate = low_rate_per_s
    while len(probes) < max_probes and meets is None and fails is not None:
        rate /= 2
        if rate < low_rate_per_s / 1024:
            break
        record(rate)
    # Bisect the gaps on either side of the uncertain band.
    while len(probes) < max_probes and meets is not None and fails is not None:
        inside = [r for r in uncertain if meets < r < fails]
        lo_gap = (meets, min(inside)) if inside else (meets, fails)
        hi_gap = (max(inside), fails) if inside else (meets, fails)
        gaps = [g for g in {lo_gap, hi_gap} if g[1] - g[0] > tolerance_frac * meets]
        if not gaps:
            break
        a, b = max(gaps, key=lambda g: g[1] - g[0])
        record((a + b) / 2)
    band = tuple(sorted(r for r in uncertain if (meets is None or r > meets)
                        and (fails is None or r < fails)))
    table = pd.DataFrame(probes).sort_values("rate_per_s", ignore_index=True)
    binding = None
    if fails is not None:
        binding = str(table.loc[table["rate_per_s"] == fails, "metric"].iloc[0])
    return LoadResult(meets, fails, band, binding, chosen, table, time.perf_counter() - start)


# ---------------------------------------------------------------- cheapest deployment


class SearchSpace(BaseModel):
    """The deployments :func:`cheapest_deployment` considers: the product of the lists
    (a None list keeps the base scenario's value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accelerators: tuple[str, ...] = Field(min_length=1, description="Catalog names.")
    tensor_parallel: tuple[int, ...] = Field(default=(1,), min_length=1,
                                             description="TP degrees (devices per replica).")
    replicas: tuple[int, ...] = Field(default=(1,), min_length=1,
                                      description="Replica counts.")
    pipeline_parallel: tuple[int, ...] | None = Field(
        default=None, description="Pipeline stages per replica (devices multiply).")
    decoding: tuple[dict[str, Any], ...] | None = Field(
        default=None, description="Decoding strategies (engine.decoding values).")
    presets: tuple[str | None, ...] | None = Field(default=None,
                                                   description="Engine presets.")
    max_num_seqs: tuple[int, ...] | None = Field(default=None, description="Engine values.")
    max_num_batched_tokens: tuple[int, ...] | None = Field(default=None,
                                                           description="Engine values.")
    weight_dtype: tuple[str, ...] | None = Field(default=None, description="Weight formats.")
    kv_cache_dtype: tuple[str, ...] | None = Field(default=None, description="KV formats.")

    def points(self) -> list[dict[str, Any]]:
        """Every candidate as ``{dotted path: value}`` overrides. A query."""
        axes: dict[str, Sequence[Any] | None] = {
            "hardware.accelerator": self.accelerators,
            "deployment.tensor_parallel": self.tensor_parallel,
            "deployment.replicas": self.replicas,
            "deployment.pipeline_parallel": self.pipeline_parallel,
            "engine.decoding": self.decoding,
            "engine.preset": self.presets,
            "engine.max_num_seqs": self.max_num_seqs,
            "engine.max_num_batched_tokens": self.max_num_batched_tokens,
            "deployment.weight_dtype": self.weight_dtype,
            "deployment.kv_cache_dtype": self.kv_cache_dtype,
        }
        used = {k: v for k, v in axes.items() if v is not None}
        return [dict(zip(used, combo, strict=True)) for combo in itertools.product(*used.values())]


class Ceiling(NamedTuple):
    """The analytic throughput ceiling of a deployment (requests/s, all replicas) and
    the per-request device seconds it rests on."""

    requests_per_s: float
    token_bound_s: float
    iteration_bound_s: float


def _mean_lengths(scenario: Scenario, replications: int) -> tuple[float, float, int, bool]:
    """Lowest per-seed mean (prompt + output) sample over the replications' seeds, with
    its output mean; the smallest prompt; whether prompts share prefixes."""
    workload = scenario.workload
    assert isinstance(workload, SyntheticWorkload)
    best: tuple[float, float] | None = None
    min_prompt = 1 << 30
    shared = False
    for r in range(replications):
        seed = np.random.SeedSequence(scenario.seed + r).spawn(3)[0]
        arrays = open_loop_requests(workload, num_requests=scenario.stop.num_requests,
                                    duration_s=scenario.stop.duration_s,
                                    rng=np.random.default_rng(seed))
        prompt, output = float(arrays.prompt_tokens.mean()), float(arrays.output_tokens.mean())
        if best is None or prompt + output < sum(best):
            best = (prompt, output)
        min_prompt = min(min_prompt, int(arrays.prompt_tokens.min()))
        shared = shared or (arrays.prefix_id is not None and bool((arrays.prefix_id >= 0).any()))
    assert best is not None
    return best[0], best[1], min_prompt, shared


def _dense_s(cost: CostModel, num_tokens: int) -> float:
    """Seconds of an iteration of ``num_tokens`` tokens, attention left out (>= 0)."""
    priced = cost.price(BatchShape(prefill_tokens=[num_tokens], prefill_context_tokens=[0]))
    return float(priced.seconds) - float(priced.ops["attention_prefill"].seconds) - float(
        priced.ops["attention_decode"].seconds)


def throughput_ceiling(scenario: Scenario, *, replications: int = 1) -> Ceiling:
    """An upper bound on the requests/s ``scenario``'s deployment can serve, sustained.

    Why it is an upper bound: every iteration computes N <= max_num_batched_tokens (T)
    tokens of at most max_num_seqs (S) sequences, and costs at least its
    attention-free part dense(N) (attention time is >= 0). The cost model's dense part
    is a sum of rooflines max(a + bN, c + dN) plus fixed terms, so dense(N)/N falls with
    N and dense(N) rises with N; taking the minima over a grid of N up to T gives, for
    every iteration, dense(N) >= N * l and dense(N) >= f, where l is the least
    per-token and f the least per-iteration price. A request needs prompt + output
    tokens computed (prefix-cache hits may skip its prompt, so prompts count 0 when the
    workload shares prefixes) and output - 1 decode steps, each in a separate iteration
    holding at most S_eff = min(S, KV tokens / (shortest prompt + 1)) decoding
    sequences. So one replica spends at least w = max((P + O) * l, (O - 1) / S_eff * f)
    seconds per request, P and O the lowest per-seed means of the replications' own
    requests, and R replicas serve at most R / w requests/s. Above it the backlog grows
    for the whole run (a finite run can still absorb a small excess: see
    ``ceiling_margin_frac``). Raises ScenarioError when the deployment does not fit.
    """
    deployment = resolve(scenario)
    eng = scenario.engine
    prompt, output, min_prompt, shared = _mean_lengths(scenario, replications)
    rates: dict[str, float] = {"mixed": 0.0, "prefill": 0.0, "decode": 0.0}
    first: tuple[float, float] | None = None
    for group in deployment.groups:
        dp = group.layout.attention_data_parallel
        budget = eng.max_num_batched_tokens * dp
        grid = sorted({*(2 ** k for k in range(budget.bit_length())), budget})
        # Every stage of a pipeline computes every token, one micro-batch at a time:
        # the slowest stage bounds the replica.
        token_bound = iteration_bound = 0.0
        for stage in group.stages:
            dense = [_dense_s(stage, n) for n in grid]
            per_token_s = min(d / n for d, n in zip(dense, grid, strict=True))
            per_iteration_s = min(dense)
            kv_seqs = group.num_kv_blocks * eng.block_size_tokens // (min_prompt + 1)
            seqs = max(1, min(eng.max_num_seqs * dp, kv_seqs)) if not shared else (
                eng.max_num_seqs * dp)
            # A prefill replica computes prompts; a decode replica the outputs' tokens.
            computed = {"mixed": (0.0 if shared else prompt) + output,
                        "prefill": 0.0 if shared else prompt, "decode": output}[group.role]
            # A multi-token step keeps at most its verified positions per sequence.
            most = group.step.query_tokens if group.step is not None else 1
            steps = 0.0 if group.role == "prefill" else max(output - 1.0, 0.0) / most
            token_bound = max(token_bound, computed * per_token_s)
            iteration_bound = max(iteration_bound, steps / seqs * per_iteration_s)
        work_s = max(token_bound, iteration_bound)
        rates[group.role] += math.inf if work_s <= 0 else group.max_replicas / work_s
        if first is None:
            first = (token_bound, iteration_bound)
    assert first is not None
    rate = rates["mixed"] if rates["mixed"] else min(rates["prefill"], rates["decode"])
    return Ceiling(rate, *first)


@dataclass(frozen=True)
class PlanResult:
    """The answer of :func:`cheapest_deployment`.

    ``candidates``: one row per point of the space with its overrides, ``num_devices``,
    ``cost_per_hour_usd``, ``ceiling_requests_per_s``, ``status`` (pruned_memory, pruned_invalid,
    pruned_ceiling, meets, fails, uncertain, error, not_simulated), ``reason`` and, when
    simulated, each target metric's mean/ci_low/ci_high. ``ranked``: the feasible
    ("meets") rows by cost then p99 TTFT; ``best`` its first row (None if empty);
    ``pareto``: the feasible rows no other feasible row beats on both cost and p99 TTFT.
    """

    best: pd.Series | None
    ranked: pd.DataFrame
    pareto: pd.DataFrame
    candidates: pd.DataFrame
    rate_per_s: float
    targets: tuple[Target, ...]
    wall_s: float

    @property
    def num_pruned(self) -> int:
        return int(self.candidates["status"].str.startswith("pruned").sum())

    def rejected(self) -> pd.DataFrame:
        """Rows that are not feasible, with their reasons. A query."""
        return self.candidates[self.candidates["status"] != "meets"]

    def describe(self) -> str:
        """The answer, the ranked table, the Pareto front and every rejection, as text."""
        axes = [c for c in self.candidates.columns if "." in c]
        ttft = [c for c in ("ttft_p99_s_mean", "ttft_p99_s_ci_low", "ttft_p99_s_ci_high",
                            "tpot_p99_s_mean") if c in self.candidates]
        shown = [*axes, "num_devices", "cost_per_hour_usd", *ttft]
        if self.best is None:
            head = f"no deployment in the space surely meets the SLO at {self.rate_per_s:g} req/s"
        else:
            head = (f"cheapest at {self.rate_per_s:g} req/s: "
                    + ", ".join(f"{a}={self.best[a]}" for a in axes)
                    + f" -> {self.best['cost_per_hour_usd']:.2f} USD/h")
        lines = [head, f"targets: {', '.join(t.describe() for t in self.targets)}",
                 f"feasible, ranked by cost then p99 TTFT ({len(self.ranked)}):",
                 self.ranked[shown].to_string(index=False) if len(self.ranked) else "  none",
                 f"Pareto front, cost vs p99 TTFT ({len(self.pareto)}):",
                 self.pareto[shown].to_string(index=False) if len(self.pareto) else "  none",
                 f"pruned before simulation: {self.num_pruned} of {len(self.candidates)}",
                 "rejected:"]
        for _, row in self.rejected().iterrows():
            where = ", ".join(f"{a}={row[a]}" for a in axes)
            lines.append(f"  {where}: {row['status']}: {row['reason']}")
        return "\n".join(lines)


def cost_per_hour(scenario: Scenario) -> float:
    """Hourly price of the deployment's devices at the start of the run, every group at
    its own accelerator's price (``price_per_hour_usd`` overrides, else the catalog's)."""
    return sum(
        group.replicas * group.layout.devices_per_replica * resolve_accelerator(
            scenario, group.accelerator, group.price_per_hour_usd).price_per_hour_usd
        for group in scenario.deployment.layouts()
    )


def pareto_front(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows of ``table`` not dominated on (``x``, ``y``), both lower-is-better, sorted by
    ``x``. A query."""
    ordered = table.sort_values([x, y], ignore_index=False)
    keep, best_y = [], math.inf
    for index, value in ordered[y].items():
        if value < best_y:
            keep.append(index)
            best_y = value
    return ordered.loc[keep]


def cheapest_deployment(
    base: Scenario, space: SearchSpace, *, rate_per_s: float,
    targets: Sequence[Target] | None = None, replications: int = 2, confidence: float = 0.95,
    exhaustive: bool = True, ceiling_margin_frac: float = 0.1,
    executor: Executor = "process", workers: int | None = None,
) -> PlanResult:
    """The cheapest deployment in ``space`` that serves ``rate_per_s`` under ``targets``
    (default :func:`slo_targets`), cost = devices x hourly price per device.

    Each candidate is first screened without simulation: it is pruned when
    :func:`simulator.deployment.resolve` finds it does not fit memory, or when the rate
    exceeds its :func:`throughput_ceiling` by more than ``ceiling_margin_frac``. The rest
    are simulated cheapest first with ``replications`` seeds and judged as the module
    docstring says; with ``exhaustive=False`` the search stops at the first that meets
    (the rest are ``not_simulated``; the Pareto front then holds only what was run).
    """
    if replications < 2:
        raise ValueError("replications must be >= 2: a confidence interval needs two runs")
    _check_rate_workload(base)
    start = time.perf_counter()
    loaded = _with_values(base, {RATE_PATH: rate_per_s})
    chosen = tuple(targets) if targets is not None else tuple(slo_targets(base))
    rows: list[dict[str, Any]] = []
    for point in space.points():
        row: dict[str, Any] = {**point, "num_devices": math.nan, "cost_per_hour_usd": math.nan,
                               "ceiling_requests_per_s": math.nan}
        rows.append(row)
        try:
            scenario = _with_values(loaded, point)
            row["num_devices"] = scenario.deployment.num_devices
            row["cost_per_hour_usd"] = cost_per_hour(scenario)
            ceiling = throughput_ceiling(scenario, replications=replications)
        except (ScenarioError, ValueError) as exc:
            # Too big for its devices, or a combination servesim cannot run (say,
            # speculative decoding with pipeline stages): either way, never simulated.
            reason = str(exc).splitlines()[0]
            row["status"] = "pruned_memory" if "does not fit" in reason else "pruned_invalid"
            row["reason"] = reason
            continue
        row["ceiling_requests_per_s"] = ceiling.requests_per_s
        if rate_per_s > ceiling.requests_per_s * (1 + ceiling_margin_frac):
            row["status"] = "pruned_ceiling"
            row["reason"] = (f"rate {rate_per_s:g} req/s > ceiling {ceiling.requests_per_s:.3g}"
                             f" req/s (x{1 + ceiling_margin_frac:g} margin)")
        else:
            row["status"], row["reason"] = "not_simulated", "stopped at a cheaper feasible one"
    table = pd.DataFrame(rows)
    order = table[table["status"] == "not_simulated"].sort_values("cost_per_hour_usd").index
    for index in order:
        point = {k: table.at[index, k] for k in space.points()[0]}
        runs = _replicate(loaded, {k: _plain(v) for k, v in point.items()},
                          replications=replications, first_seed=base.seed,
                          executor=executor, workers=workers)
        stats = _stats(runs, chosen, confidence)
        for key, value in stats.items():
            if key != "error":
                table.loc[index, key] = value
        judgement = judge(stats, chosen)
        if stats["error"] is not None:
            table.loc[index, ["status", "reason"]] = ["error", stats["error"]]
        else:
            table.loc[index, ["status", "reason"]] = [judgement.verdict, judgement.detail]
        if judgement.verdict == "meets" and stats["error"] is None and not exhaustive:
            break
    feasible = table[table["status"] == "meets"]
    ttft = "ttft_p99_s_mean" if "ttft_p99_s_mean" in table else "cost_per_hour_usd"
    ranked = feasible.sort_values(["cost_per_hour_usd", ttft])
    pareto = pareto_front(feasible, "cost_per_hour_usd", ttft) if len(feasible) else feasible
    best = ranked.iloc[0] if len(ranked) else None
    return PlanResult(best, ranked, pareto, table, rate_per_s, chosen,
                      time.perf_counter() - start)


def _plain(value: Any) -> Any:
    """A table cell back to a plain Python value (numpy scalars to int/float)."""
    return value.item() if isinstance(value, np.generic) else value


def plan_from_mapping(spec: Mapping[str, Any], base: Scenario) -> LoadResult | PlanResult:
    """Run the plan a ``servesim plan`` file describes (its ``base`` already loaded):
    ``mode: max_rate`` takes max_sustainable_rate's keyword arguments, ``mode: cheapest``
    takes ``rate_per_s``, ``space`` (a SearchSpace mapping) and cheapest_deployment's.
    ``targets`` is a list of ``{metric, limit, direction}``; default: the scenario's SLO."""
    options = {k: v for k, v in spec.items() if k not in ("base", "mode", "targets", "space")}
    targets = [Target(**t) for t in spec["targets"]] if spec.get("targets") else None
    mode = spec.get("mode")
    if mode == "max_rate":
        return max_sustainable_rate(base, targets=targets, **options)
    if mode == "cheapest":
        if "space" not in spec or "rate_per_s" not in spec:
            raise ValueError("mode cheapest needs space: {accelerators: [...], ...} and rate_per_s")
        return cheapest_deployment(base, SearchSpace.model_validate(spec["space"]),
                                   targets=targets, **options)
    raise ValueError(f"plan mode {mode!r}: choose max_rate or cheapest")
