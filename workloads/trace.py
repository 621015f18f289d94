"""Reading request traces into arrays, with errors that point at the line.

A trace has one request per row: an arrival time, a prompt length and an output
length, and optionally a priority, a TTFT target and a shared prefix (id and length).
:mod:`workloads.readers` reads each format (generic CSV, JSONL and Parquet with the
columns the :class:`~workloads.config.TraceWorkload` names; Azure, BurstGPT, Mooncake
and ShareGPT with fixed ones); this module checks every row, the same way for every
format, and the first bad one is reported with the file, where in it (a CSV's 1-based
line, the header being line 1; a Parquet row; a ShareGPT conversation) and the value.
Then it windows and samples, and counts in a :class:`TraceReport` every row it or the
reader left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workloads.config import TraceWorkload
from workloads.readers import (
    Locate,
    Table,
    _read_jsonl_pyarrow,
    _read_jsonl_python,
    read_table,
    trace_format,
)

__all__ = [
    "Dependencies",
    "LoadedTrace",
    "RequestArrays",
    "TraceReport",
    "_read_jsonl_pyarrow",
    "_read_jsonl_python",
    "load_trace",
    "read_trace",
    "trace_format",
]

logger = logging.getLogger(__name__)

_MAX_TOKENS = 2**53  # largest integer a float64 holds exactly


class Dependencies(NamedTuple):
    """How requests reach the engine (:meth:`RequestArrays.dependencies`): one entry per
    row, every column filled (defaults where the workload sets none)."""

    depends_on: np.ndarray
    """int64 row that must finish before this one is issued; -1: none."""
    group_id: np.ndarray
    """int64 row of the first part of the client request this row belongs to (its own
    row for a request that was not split)."""
    preprocess_s: np.ndarray
    """float64 seconds from issue (the client's arrival, or the parent's finish) to the
    engine."""


class RequestArrays(NamedTuple):
    """A stream of requests as equal-length columns, in arrival order.

    ``arrival_s`` is float64 seconds, non-decreasing, starting at >= 0;
    ``prompt_tokens`` and ``output_tokens`` are int64 and >= 1; the optional columns
    are None or arrays of the same length. Row ``i`` of each array describes request
    ``i``.

    ``arrival_s`` is when the client sent the request. Input transforms
    (:mod:`workloads.transforms`) may set the last three columns: a row with no parent
    reaches the engine at ``arrival_s + preprocess_s``; a row whose ``depends_on`` is
    set is issued when that parent row finishes and reaches the engine
    ``preprocess_s`` later (its ``arrival_s`` is the parent's, a placeholder that keeps
    the rows sorted). Parents come before their dependents, and every row of a group
    after the group's first row.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    priority: np.ndarray | None = None
    """int64 priority per request (lower is served first); None: all 0."""
    ttft_slo_s: np.ndarray | None = None
    """float64 TTFT target per request (NaN: the scenario's); None: the scenario's."""
    prefix_id: np.ndarray | None = None
    """int64 shared-prefix content id per request (-1: none); see ``Request.prefix_id``."""
    prefix_tokens: np.ndarray | None = None
    """int64 tokens of the prompt that are the ``prefix_id`` content (<= prompt)."""
    depends_on: np.ndarray | None = None
    """int64 row of the request that must finish before this one is issued (-1: none,
    issued at ``arrival_s``); None: no row depends on another."""
    group_id: np.ndarray | None = None
    """int64 row of the first part of the client request this row is part of (its own
    row for a request not split); None: every row is its own group."""
    preprocess_s: np.ndarray | None = None
    """float64 seconds from issue to the engine (compression, retrieval); None: all 0."""

    def take(self, index: np.ndarray | slice) -> RequestArrays:
        """The requests at ``index`` (a slice, integer array or boolean mask), every
        column alike; ``depends_on`` and ``group_id`` are renumbered to the new rows.

        Raises ValueError when a taken row's parent or group's first row is not taken
        (a dependency would be lost)."""
        a, p, o, *optional = self
        taken = RequestArrays(a[index], p[index], o[index],
                              *(None if c is None else c[index] for c in optional))
        if self.depends_on is None and self.group_id is None:
            return taken
        n = len(self.arrival_s)
        old = np.arange(n)[index]  # each taken row's old number
        new = np.full(n, -1, dtype=np.int64)  # old number -> new number (-1: not taken)
        new[old] = np.arange(len(old))
        renumbered: dict[str, np.ndarray] = {}
        for field in ("depends_on", "group_id"):
            rows = getattr(taken, field)
            if rows is None:
                continue
            linked = rows >= 0
            renumbered[field] = np.where(linked, new[np.where(linked, rows, 0)], -1)
            lost = np.flatnonzero(linked & (renumbered[field] < 0))
            if len(lost):
                raise ValueError(
                    f"take: row {int(old[lost[0]])} is taken but its {field} row "
                    f"{int(rows[lost[0]])} is not; take whole groups"
                )
        return taken._replace(**renumbered)

    def attributes(self) -> list[tuple[int, float, int, int]] | None:
        """Per request (priority, ttft_slo_s, prefix_id, prefix_tokens) as Python values,
        or None when no optional column is set (requests then take the defaults)."""
        optional = (self.priority, self.ttft_slo_s, self.prefix_id, self.prefix_tokens)
        if all(c is None for c in optional):
            return None
        n = len(self.arrival_s)
        defaults = (np.zeros(n, np.int64), np.full(n, np.nan), np.full(n, -1, np.int64),
                    np.zeros(n, np.int64))
        columns = [d if c is None else c for c, d in zip(optional, defaults, strict=True)]
        return list(zip(*(c.tolist() for c in columns), strict=True))

    def dependencies(self) -> Dependencies | None:
        """The columns saying how each row reaches the engine, defaults filled in
        (depends_on -1, group_id its own row, preprocess_s 0), or None when none is set
        (every request then reaches the engine at its ``arrival_s``). Reads only."""
        if self.depends_on is None and self.group_id is None and self.preprocess_s is None:
            return None
        n = len(self.arrival_s)
        return Dependencies(
            np.full(n, -1, np.int64) if self.depends_on is None else self.depends_on,
            np.arange(n, dtype=np.int64) if self.group_id is None else self.group_id,
            np.zeros(n) if self.preprocess_s is None else self.preprocess_s,
        )


@dataclass(frozen=True, slots=True)
class TraceReport:
    """What loading a trace kept and left out; nothing is dropped without a count here.

    ``num_rows`` = ``num_requests`` + the sum of ``dropped``.
    """

    path: Path
    format: str
    num_rows: int
    """Data rows (ShareGPT: conversations) in the file."""
    num_requests: int
    """Requests kept, after the reader's filters, the window and sampling."""
    dropped: Mapping[str, int]
    """Reason -> rows dropped for it, in the order the filters ran (each counts among the
    rows the previous ones kept); only the filters that ran are listed."""
    notes: tuple[str, ...] = ()
    """What the reader approximated (token counting, prefix trees)."""

    def summary(self) -> str:
        """One line: kept of read, each drop reason with its count, then the notes."""
        parts = [f"{self.path} ({self.format}): {self.num_requests} of {self.num_rows} rows kept"]
        parts += [f"{n} dropped: {reason}" for reason, n in self.dropped.items()]
        return "; ".join(parts + list(self.notes))


class LoadedTrace(NamedTuple):
    """A trace's requests and the report of what was kept."""

    requests: RequestArrays
    report: TraceReport


def read_trace(config: TraceWorkload, rng: np.random.Generator | None = None) -> RequestArrays:
    """The requests of :func:`load_trace`; its report is logged at INFO."""
    requests, report = load_trace(config, rng)
    logger.info("%s", report.summary())
    return requests


def load_trace(config: TraceWorkload, rng: np.random.Generator | None = None) -> LoadedTrace:
    """Load the trace ``config.path`` names; the file is only read, never written.

    Arrival times are converted to seconds and shifted so the first request arrives
    at t = 0 (the trace's clock). The window keeps ``start_s <= t < end_s`` on that
    clock, then sampling keeps every ``sample_every``-th request or each with
    probability ``sample_frac``; the kept times become ``(t - start_s) / time_scale``
    (``start_s`` None: 0). Optional columns fill the ``RequestArrays`` columns of the
    same meaning. ``rng`` draws ``sample_frac`` and ShareGPT arrivals (two children are
    spawned from it; None: a generator seeded 0); other traces use no randomness.

    Raises ValueError, naming the file (and line, row or conversation where there is
    one), when a column is missing, a value is missing, non-numeric or out of range
    (arrival < 0, token counts not whole numbers >= 1, a priority not a whole number, a
    TTFT target not > 0, a prefix id not a whole number >= -1, prefix tokens not a whole
    number from 0 to the prompt's length), the arrival times decrease, or no request is
    left.
    """
    sample_rng, reader_rng = (np.random.default_rng(0) if rng is None else rng).spawn(2)
    table = read_table(config, reader_rng)
    fmt = trace_format(config)
    arrival = table.values["arrival_column"]
    if len(arrival) == 0:
        raise ValueError(f"{config.path}: the trace has no requests{_dropped_note(table)}")
    _check_values(config.path, _checks(table.columns, table.values), table.locate)
    _check_sorted(config.path, table.columns["arrival_column"], arrival, table.locate)
    num_rows = len(arrival) + sum(table.dropped.values())
    shifted_s = (arrival - arrival[0]) * table.seconds_per_unit
    table = table._replace(values={**table.values, "arrival_column": shifted_s})
    start_s = 0.0 if config.start_s is None else config.start_s
    if config.start_s is not None:
        table = table.keep(table.values["arrival_column"] >= start_s, "before start_s")
    if config.end_s is not None:
        table = table.keep(table.values["arrival_column"] < config.end_s, "at or after end_s")
    n = len(table.values["arrival_column"])
    if config.sample_every is not None:
        table = table.keep(np.arange(n) % config.sample_every == 0, "sample_every")
    if config.sample_frac is not None:
        table = table.keep(sample_rng.random(n) < config.sample_frac, "sample_frac")
    v = table.values
    report = TraceReport(config.path, fmt, num_rows, len(v["arrival_column"]),
                         dict(table.dropped), table.notes)
    if len(v["arrival_column"]) == 0:
        raise ValueError(f"{config.path}: no request left: {report.summary()}")

    def ints(field: str) -> np.ndarray | None:
        x = v.get(field)
        return None if x is None else x.astype(np.int64)

    requests = RequestArrays(
        (v["arrival_column"] - start_s) / config.time_scale,
        v["prompt_column"].astype(np.int64),
        v["output_column"].astype(np.int64),
        priority=ints("priority_column"),
        ttft_slo_s=v.get("ttft_slo_column"),
        prefix_id=ints("prefix_id_column"),
        prefix_tokens=ints("prefix_tokens_column"),
    )
    return LoadedTrace(requests, report)


def _dropped_note(table: Table) -> str:
    dropped = [f"{n} dropped: {reason}" for reason, n in table.dropped.items() if n]
    return f" ({'; '.join(dropped)})" if dropped else ""

# ---------------------------------------------------------------- validation

Requirement = Callable[[int], str]
"""Data row -> what its value should have been (for the error message)."""


def _bad_arrival(x: np.ndarray) -> np.ndarray:
    return ~(np.isfinite(x) & (x >= 0))


def _whole(x: np.ndarray, low: float, high: float | np.ndarray) -> np.ndarray:
    """Whole numbers in [low, high] (NaN and inf are not)."""
    with np.errstate(invalid="ignore"):
        return (x >= low) & (x <= high) & (np.floor(x) == x)


def _bad_tokens(x: np.ndarray) -> np.ndarray:
    return ~_whole(x, 1, _MAX_TOKENS)


def _checks(
    named: dict[str, str], values: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray, Requirement]]:
    """(column, mask of bad rows, requirement) for every column read, in config order."""
    prompt = values["prompt_column"]
    tests: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Requirement]] = {
        "arrival_column": (_bad_arrival, lambda row: "a number >= 0"),
        "prompt_column": (_bad_tokens, lambda row: "a whole number >= 1"),
        "output_column": (_bad_tokens, lambda row: "a whole number >= 1"),
        "priority_column": (
            lambda x: ~_whole(x, -_MAX_TOKENS, _MAX_TOKENS), lambda row: "a whole number"
        ),
        "ttft_slo_column": (lambda x: ~(x > 0), lambda row: "a number of seconds > 0"),
        "prefix_id_column": (
            lambda x: ~_whole(x, -1, _MAX_TOKENS), lambda row: "a whole number >= -1"
        ),
        "prefix_tokens_column": (
            lambda x: ~_whole(x, 0, prompt),
            # The prompt column comes first, so on this row it holds a whole number.
            lambda row: f"a whole number from 0 to the prompt's {int(prompt[row])} tokens",
        ),
    }
    return [(column, tests[f][0](values[f]), tests[f][1]) for f, column in named.items()]


def _check_values(
    path: Path, checks: list[tuple[str, np.ndarray, Requirement]], locate: Locate
) -> None:
    """Raise for the first row (in file order) holding a value outside its column's range;
    on one row, the first column in ``checks`` order."""
    first: tuple[int, int] | None = None  # (row, index in checks)
    for j, (_, bad_mask, _) in enumerate(checks):
        bad = np.flatnonzero(bad_mask)
        if len(bad) and (first is None or bad[0] < first[0]):
            first = (int(bad[0]), j)
    if first is None:
        return
    row, j = first
    column, _, requirement = checks[j]
    where, shown = locate(row, column)
    raise ValueError(
        f"{path}, {where}: column {column!r} has {shown}, expected {requirement(row)}"
    )


def _check_sorted(path: Path, column: str, arrival: np.ndarray, locate: Locate) -> None:
    """Raise if an arrival time is earlier than the one on the row before it."""
    drops = np.flatnonzero(np.diff(arrival) < 0)
    if len(drops) == 0:
        return
    row = int(drops[0]) + 1
    where, raw = locate(row, column)
    prev_where, prev_raw = locate(row - 1, column)
    raise ValueError(
        f"{path}, {where}: {column} {raw} is earlier than {prev_raw} on {prev_where}; "
        "a trace must list requests in non-decreasing arrival order"
    )
