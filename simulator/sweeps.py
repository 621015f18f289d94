"""Parameter sweeps: the Cartesian product of scenario overrides × replications, run in
this process, in a process pool or on a Ray cluster, into one table.

    >>> table = sweep(base, {"deployment.replicas": [1, 2],
    ...                      "workload.arrival.rate_per_s": [5, 10]}, replications=4)
    >>> summarize(table, by=["deployment.replicas", "workload.arrival.rate_per_s"],
    ...           metrics=["ttft_p99_s"])                        # doctest: +SKIP

Seeds: replication ``r`` runs with seed ``s + r``, where ``s`` is the ``seed`` argument or
``base.seed`` (so replication 0 reproduces the base scenario). The simulator expands a
seed through ``numpy.random.SeedSequence``, so adjacent seeds give independent streams.
Every grid point uses the same seed for the same replication: common random numbers,
the same arrivals and lengths at each point, which cuts the variance of the differences
between points (what a sweep is usually for).

The simulation is deterministic, so the three executors give identical tables apart from
``wall_s`` and ``cached``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import pydantic
from scipy import stats

from simulator.deployment import ScenarioError
from simulator.engine import simulate
from simulator.scenario import Scenario

Executor = Literal["inprocess", "process", "ray"]


class _Outcome(NamedTuple):
    """One run's result: summary metrics (None on error), the error message, wall seconds."""

    metrics: dict[str, float] | None
    error: str | None
    wall_s: float


class _Run(NamedTuple):
    """One point × replication: its grid values, replication index, seed and scenario
    (None when the overrides do not validate; ``error`` then says why)."""

    values: dict[str, Any]
    replication: int
    seed: int
    scenario: Scenario | None
    error: str | None


def _message(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                         for e in exc.errors())
    return str(exc)


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``path`` "a.b.c" (as ``--set`` does, but the value
    is used as given, so dicts and lists work)."""
    parts = path.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{path}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def _point_scenario(base: Scenario, values: Mapping[str, Any], seed: int) -> Scenario:
    data = base.model_dump(mode="json")
    if "engine.preset" in values:
        # As with_overrides: a new preset fills the engine fields the base did not set.
        data["engine"] = base.engine.model_dump(mode="json", exclude_unset=True)
    for path, value in values.items():
        _set_path(data, path, value)
    data["seed"] = seed
    return Scenario.from_dict(data)


def _runs(base: Scenario, grid: Mapping[str, Sequence[Any]], replications: int,
          seed: int) -> list[_Run]:
    paths = list(grid)
    runs = []
    for combo in itertools.product(*(grid[p] for p in paths)):
        values = dict(zip(paths, combo, strict=True))
        for r in range(replications):
            try:
                scenario: Scenario | None = _point_scenario(base, values, seed + r)
                error = None
            except (pydantic.ValidationError, ValueError) as exc:
                scenario, error = None, _message(exc)
            runs.append(_Run(values, r, seed + r, scenario, error))
    return runs


def _simulate_one(scenario: Scenario) -> _Outcome:
    """Simulate one scenario in one process (no nested pool); errors become outcomes."""
    start = time.perf_counter()
    try:
        summary = simulate(scenario, workers=1).summary()
        metrics = {str(name): float(value) for name, value in summary.items()}
    except (ScenarioError, pydantic.ValidationError) as exc:
        return _Outcome(None, _message(exc), time.perf_counter() - start)
    return _Outcome(metrics, None, time.perf_counter() - start)


# ---- cache ----

def _version() -> str:
    try:
        return importlib.metadata.version("servesim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_key(scenario: Scenario) -> str:
    """sha256 of the scenario's JSON and the servesim version: a run's identity."""
    text = scenario.model_dump_json() + "\0servesim " + _version()
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_load(cache: Path, scenario: Scenario) -> _Outcome | None:
    path = cache / f"{cache_key(scenario)}.json"
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    return _Outcome(stored["metrics"], None, stored["wall_s"])


def _cache_store(cache: Path, scenario: Scenario, outcome: _Outcome) -> None:
    """Store a successful run (errors are cheap to find again, and are not stored)."""
    if outcome.metrics is None:
        return
    path = cache / f"{cache_key(scenario)}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"metrics": outcome.metrics, "wall_s": outcome.wall_s}))
    tmp.replace(path)


# ---- executors ----

def _in_process(scenarios: list[Scenario], workers: int | None,
                address: str | None) -> Iterator[tuple[int, _Outcome]]:
    for i, scenario in enumerate(scenarios):
        yield i, _simulate_one(scenario)


def _in_pool(scenarios: list[Scenario], workers: int | None,
             address: str | None) -> Iterator[tuple[int, _Outcome]]:
    method = "fork" if sys.platform == "linux" else "spawn"
    with ProcessPoolExecutor(workers or os.cpu_count(),
                             mp_context=multiprocessing.get_context(method)) as pool:
        futures = {pool.submit(_simulate_one, s): i for i, s in enumerate(scenarios)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _on_ray(scenarios: list[Scenario], workers: int | None,
            address: str | None) -> Iterator[tuple[int, _Outcome]]:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs ray: pip install 'servesim[distributed]'"
                         ) from None
    if not ray.is_initialized():
        # A local instance (address None) is left running for the next sweep; ray shuts
        # it down at exit, or call ray.shutdown().
        kwargs: dict[str, Any] = {"num_cpus": workers} if address is None else {}
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, **kwargs)
    task = ray.remote(_simulate_one)
    refs = [task.remote(s) for s in scenarios]
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield index[ref], ray.get(ref)


_EXECUTORS: dict[str, Callable[[list[Scenario], int | None, str | None],
                               Iterator[tuple[int, _Outcome]]]] = {
    "inprocess": _in_process, "process": _in_pool, "ray": _on_ray,
}


def _cell(value: Any) -> Any:
    """A grid value as a table cell: dicts and lists as their JSON text (Parquet-safe)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def sweep(base: Scenario, grid: Mapping[str, Sequence[Any]], *, replications: int = 1,
          executor: Executor = "process", workers: int | None = None,
          address: str | None = None, cache_dir: str | Path | None = None,
          progress: bool = False, seed: int | None = None) -> pd.DataFrame:
    """Simulate every point of ``grid`` (dotted scenario paths → values, as ``--set``
    takes them) × ``replications``, each with ``simulate(scenario, workers=1)``.

    Returns one row per run, in grid order (last path fastest) then replication: a column
    per grid path (dict/list values as JSON text), ``replication``, ``seed``, every
    ``Results.summary()`` metric, ``wall_s``, ``cached`` (True when loaded from
    ``cache_dir``) and ``error`` (None, or why the point is invalid: its metrics are NaN;
    when no run succeeds there are no metric columns).
    Seeds are ``(seed or base.seed) + replication`` at every point (common random
    numbers; see the module docstring). ``executor``: "inprocess" (a loop), "process" (a
    pool of ``workers``, default the CPU count) or "ray" (``ray.init(address)`` unless
    initialised; ``address`` None starts a local instance with ``workers`` CPUs).
    ``cache_dir`` keeps each finished run under :func:`cache_key`; reruns load it.
    """
    if executor not in _EXECUTORS:
        raise ValueError(f"executor {executor!r}: choose one of {', '.join(_EXECUTORS)}")
    if replications < 1:
        raise ValueError(f"replications must be at least 1, got {replications}")
    if "seed" in grid:
        raise ValueError("grid: vary the seed through replications, not as a grid path")
    base_seed = base.seed if seed is None else seed
    runs = _runs(base, grid, replications, base_seed)
    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    outcomes: list[_Outcome | None] = [None] * len(runs)
    cached = [False] * len(runs)
    todo: list[int] = []
    for i, run in enumerate(runs):
        if run.scenario is None:
            outcomes[i] = _Outcome(None, run.error, 0.0)
        elif cache is not None and (hit := _cache_load(cache, run.scenario)) is not None:
            outcomes[i], cached[i] = hit, True
        else:
            todo.append(i)

    scenarios = [s for s in (runs[i].scenario for i in todo) if s is not None]
    results = _EXECUTORS[executor](scenarios, workers, address)
    with _progress_bar(progress, len(todo)) as advance:
        for j, outcome in results:
            outcomes[todo[j]] = outcome
            if cache is not None:
                _cache_store(cache, scenarios[j], outcome)
            advance()
    return _table(runs, outcomes, cached, list(grid))


class _NoBar:
    def __enter__(self) -> Callable[[], None]:
        return lambda: None

    def __exit__(self, *exc: object) -> None:
        return None


class _RichBar:
    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.task = self.bar.add_task("sweep", total=total)

    def __enter__(self) -> Callable[[], None]:
        self.bar.__enter__()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def _progress_bar(show: bool, total: int) -> _NoBar | _RichBar:
    return _RichBar(total) if show else _NoBar()


def _table(runs: list[_Run], outcomes: list[_Outcome | None], cached: list[bool],
           paths: list[str]) -> pd.DataFrame:
    metric_names: list[str] = []
    for outcome in outcomes:
        if outcome is not None and outcome.metrics is not None:
            metric_names = list(outcome.metrics)
            break
    rows = []
    for run, outcome, hit in zip(runs, outcomes, cached, strict=True):
        assert outcome is not None
        row: dict[str, Any] = {p: _cell(run.values[p]) for p in paths}
        row["replication"] = run.replication
        row["seed"] = run.seed
        metrics = outcome.metrics or {}
        row.update({name: float(metrics.get(name, math.nan)) for name in metric_names})
        row["wall_s"] = outcome.wall_s
        row["cached"] = hit
        row["error"] = outcome.error
        rows.append(row)
    columns = [*paths, "replication", "seed", *metric_names, "wall_s", "cached", "error"]
    table = pd.DataFrame(rows, columns=columns)
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    return table


def summarize(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str],
              confidence: float = 0.95) -> pd.DataFrame:
    """Per group of ``by``: ``n`` (rows) and, per metric, ``<metric>_mean`` with a Student-t
    ``confidence`` interval ``<metric>_ci_low`` / ``<metric>_ci_high`` over the
    replications (NaN values, from error rows, left out; one value: NaN bounds)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    out = []
    for key, group in table.groupby(list(by), sort=False, dropna=False):
        keys = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, keys, strict=True))
        row["n"] = len(group)
        for metric in metrics:
            values = group[metric].to_numpy(dtype=np.float64)
            values = values[~np.isnan(values)]
            mean = float(values.mean()) if values.size else math.nan
            half = math.nan
            if values.size > 1:
                sem = float(values.std(ddof=1)) / math.sqrt(values.size)
                half = float(stats.t.ppf((1 + confidence) / 2, values.size - 1)) * sem
            row[f"{metric}_mean"] = mean
            row[f"{metric}_ci_low"] = mean - half
            row[f"{metric}_ci_high"] = mean + half
        out.append(row)
    return pd.DataFrame(out)


def to_parquet(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a sweep table to Parquet (grid values are already Parquet-safe cells)."""
    path = Path(path)
    table.to_parquet(path, index=False)
    return path
