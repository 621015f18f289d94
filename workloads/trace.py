"""Reading request traces (CSV or JSONL) into arrays, with errors that point at the line.

A trace has one request per row: an arrival time, a prompt length and an output
length, and optionally a priority, a TTFT target and a shared prefix (id and length),
in columns named by the :class:`~workloads.config.TraceWorkload`. Other columns are
ignored. Every row is checked; the first bad one is reported with the
file, its 1-based line number in the file (a CSV header is line 1) and the value.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from workloads.config import TraceWorkload

_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_UNITS_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}
_MAX_TOKENS = 2**53  # largest integer a float64 holds exactly

Locate = Callable[[int, str], tuple[int, str]]
"""Maps (0-based data row, column) to (1-based file line, the value as the file shows it)."""


class RequestArrays(NamedTuple):
    """A stream of requests as equal-length columns, in arrival order.

    ``arrival_s`` is float64 seconds, non-decreasing, starting at >= 0;
    ``prompt_tokens`` and ``output_tokens`` are int64 and >= 1; the optional columns
    are None or arrays of the same length. Row ``i`` of each array describes request
    ``i``.
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

    def take(self, index: np.ndarray | slice) -> RequestArrays:
        """The requests at ``index`` (a slice or integer array), every column alike."""
        a, p, o, *optional = self
        return RequestArrays(a[index], p[index], o[index],
                             *(None if c is None else c[index] for c in optional))

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


def trace_format(config: TraceWorkload) -> str:
    """``config.format``, or the format its file suffix names; never reads the file."""
    if config.format is not None:
        return config.format
    fmt = _SUFFIX_FORMATS.get(config.path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{config.path}: cannot tell the trace format from the suffix "
            f"{config.path.suffix!r} (known: {', '.join(_SUFFIX_FORMATS)}); "
            "set format: csv or jsonl"
        )
    return fmt


def read_trace(config: TraceWorkload) -> RequestArrays:
    """Load the trace ``config.path`` names; the file is only read, never written.

    Arrival times are converted from ``config.time_unit`` to seconds, shifted so the
    first request arrives at t = 0, and divided by ``config.time_scale``. Optional
    columns the config names fill the ``RequestArrays`` columns of the same meaning.

    Raises ValueError, naming the file (and line where there is one), when a column is
    missing, a value is missing, non-numeric or out of range (arrival < 0, token
    counts not whole numbers >= 1, a priority not a whole number, a TTFT target not > 0,
    a prefix id not a whole number >= -1, prefix tokens not a whole number from 0 to the
    prompt's length), the arrival times decrease, or the trace is empty.
    """
    named = config.columns()
    columns = list(named.values())
    if trace_format(config) == "csv":
        values, locate = _read_csv(config.path, columns)
    else:
        values, locate = _read_jsonl(config.path, columns)
    by_field = dict(zip(named, values, strict=True))
    arrival = by_field["arrival_column"]
    if len(arrival) == 0:
        raise ValueError(f"{config.path}: the trace has no requests")
    _check_values(config.path, _checks(named, by_field), locate)
    _check_sorted(config.path, config.arrival_column, arrival, locate)
    arrival_s = (arrival - arrival[0]) / (_UNITS_PER_SECOND[config.time_unit] * config.time_scale)

    def ints(field: str) -> np.ndarray | None:
        x = by_field.get(field)
        return None if x is None else x.astype(np.int64)

    return RequestArrays(
        arrival_s,
        by_field["prompt_column"].astype(np.int64),
        by_field["output_column"].astype(np.int64),
        priority=ints("priority_column"),
        ttft_slo_s=by_field.get("ttft_slo_column"),
        prefix_id=ints("prefix_id_column"),
        prefix_tokens=ints("prefix_tokens_column"),
    )


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
    line, shown = locate(row, column)
    raise ValueError(
        f"{path}, line {line}: column {column!r} has {shown}, expected {requirement(row)}"
    )


def _check_sorted(path: Path, column: str, arrival: np.ndarray, locate: Locate) -> None:
    """Raise if an arrival time is earlier than the one on the row before it."""
    drops = np.flatnonzero(np.diff(arrival) < 0)
    if len(drops) == 0:
        return
    row = int(drops[0]) + 1
    line, raw = locate(row, column)
    prev_line, prev_raw = locate(row - 1, column)
    raise ValueError(
        f"{path}, line {line}: {column} {raw} is earlier than {prev_raw} on line {prev_line}; "
        "a trace must list requests in non-decreasing arrival order"
    )


def _missing_columns(path: Path, expected: list[str], found: list[str], where: str = "") -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(
            f"{path}{where}: missing column(s) {missing}; expected columns {expected}, "
            f"found {found}"
        )


# ---------------------------------------------------------------- CSV


def _read_csv(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    try:
        found = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected a header row with {columns}") from None
    _missing_columns(path, columns, found)
    try:
        frame = pd.read_csv(path, usecols=columns, low_memory=False)
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: not a valid CSV trace: {e}") from None
    # Non-numeric cells make a column non-numeric; coerce them to NaN so that one
    # vectorised check finds them, and recover their text from the file only on error.
    values = [
        pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for c in columns
    ]
    return values, lambda row, column: _csv_locate(path, row, column)


def _csv_locate(path: Path, row: int, column: str) -> tuple[int, str]:
    """Line number and quoted text of data row ``row`` in ``column``; rescans the file.

    Only called on the error path. Blank lines are skipped as pandas skips them, and
    a quoted field spanning lines reports the line its row starts on.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        data_row = -1
        while True:
            start_line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if header is None:
                header = fields
                continue
            data_row += 1
            if data_row == row:
                k = header.index(column)
                text = fields[k] if k < len(fields) else ""
                return start_line, repr(text) if text.strip() else "no value"
    raise AssertionError(f"{path}: data row {row} not found on rescan")


# ---------------------------------------------------------------- JSONL


def _json_numbers(column: list[Any]) -> np.ndarray:
    """float64 array of JSON numbers; anything else (string, bool, null...) becomes NaN."""
    # bool is an int subclass, but true/false is not a token count: compare types exactly.
    if set(map(type, column)) <= {int, float}:
        return np.array(column, dtype=np.float64)
    return np.array(
        [float(v) if type(v) in (int, float) else math.nan for v in column], dtype=np.float64
    )


def _read_jsonl(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    """Columns of a JSONL trace: pyarrow when the file is plainly well formed, else Python.

    The line-by-line Python reader is the reference; pyarrow (about 10x faster) is
    used only when it parses every line into one row of non-null numbers, and
    then errors found later are located by rescanning with the Python reader.
    """
    values = _read_jsonl_pyarrow(path, columns)
    if values is None:
        return _read_jsonl_python(path, columns)
    return values, lambda row, column: _read_jsonl_python(path, columns)[1](row, column)


def _read_jsonl_pyarrow(path: Path, columns: list[str]) -> list[np.ndarray] | None:
    schema = pa.schema([(c, pa.float64()) for c in columns])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pa_json.read_json(path, parse_options=options)
    except pa.ArrowInvalid:
        return None  # a string, bool, array or malformed line: let the Python reader say where
    if any(table.column(c).null_count for c in columns):
        return None  # a key missing or null
    # pyarrow also accepts several objects on one line; the Python reader does not.
    num_rows = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    if table.num_rows != num_rows:
        return None
    return [table.column(c).to_numpy() for c in columns]


def _read_jsonl_python(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    get = itemgetter(*columns)  # a tuple of values: there are at least three columns
    rows: list[tuple[Any, ...]] = []
    lines: list[int] = []
    loads = json.loads
    with path.open(encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            try:
                row = get(loads(text))
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                # Slow path, off the loop's hot code: a blank line, or an error to explain.
                if not text.strip():
                    continue
                _explain_jsonl_line(path, line_no, text, columns)
                raise
            rows.append(row)
            lines.append(line_no)
    raw: list[list[Any]] = (
        [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in columns]
    )
    values = [_json_numbers(col) for col in raw]

    def locate(row: int, column: str) -> tuple[int, str]:
        return lines[row], json.dumps(raw[columns.index(column)][row])

    return values, locate


def _explain_jsonl_line(path: Path, line_no: int, text: str, columns: list[str]) -> None:
    """Raise a ValueError saying why line ``line_no`` is not a trace row."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path}, line {line_no}: expected a JSON object, got {type(obj).__name__}"
        )
    _missing_columns(path, columns, list(obj), where=f", line {line_no}")
