"""Format readers: a trace file -> columns of numbers, before validation.

Each reader returns a :class:`Table`: float64 columns keyed by the
:class:`~workloads.config.TraceWorkload` field they fill (``arrival_column``,
``prompt_column``, ...), the names the file gives them (for messages), a ``locate``
that finds a row's place and raw text in the file (called only on the error path),
and the rows the reader dropped, counted by reason. Values are not checked here:
:func:`workloads.trace.load_trace` checks every column the same way for every format.

Generic formats (``csv``, ``jsonl``, ``parquet``) read the columns the config names.
Public traces have fixed columns:

- ``azure``: Azure LLM inference traces 2023/2024 (``TIMESTAMP``, ``ContextTokens``,
  ``GeneratedTokens``; the timestamp a datetime string such as
  ``2023-11-16 18:15:46.6805900``).
- ``burstgpt``: BurstGPT (``Timestamp`` s, ``Request tokens``, ``Response tokens``,
  ``Model``, ``Log Type``); failed rows (0 response tokens) are dropped and counted.
- ``mooncake``: Mooncake / Kimi FAST'25 traces (JSONL: ``timestamp`` ms,
  ``input_length``, ``output_length``, ``hash_ids``); block sharing becomes one prefix
  chain per first block (:func:`mooncake_prefixes`).
- ``sharegpt``: a JSON list of conversations; the first human turn is the prompt and
  the first gpt turn after it the output; arrivals come from ``config.arrival``.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from collections.abc import Callable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from workloads.config import (
    ConstantArrivals,
    GammaArrivals,
    OfflineArrivals,
    PoissonArrivals,
    TraceWorkload,
)

_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_UNITS_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block in the Mooncake traces."""
CHARS_PER_TOKEN = 4.0
"""OpenAI's rule of thumb for English text ("1 token ~= 4 chars"), used without a tokenizer."""

Locate = Callable[[int, str], tuple[str, str]]
"""Maps (0-based data row, column) to (where in the file, e.g. "line 7"; the value as the
file shows it)."""


class Table(NamedTuple):
    """A reader's output: equal-length float64 columns, one row per kept request."""

    values: dict[str, np.ndarray]
    """TraceWorkload field (``arrival_column``, ...) -> float64 values (NaN: unreadable)."""
    columns: dict[str, str]
    """The same fields -> the column as the file names it (for messages)."""
    locate: Locate
    seconds_per_unit: float
    """Seconds per unit of the arrival column."""
    dropped: dict[str, int]
    """Reason -> rows the reader dropped for it, in the order the filters ran."""
    notes: tuple[str, ...] = ()
    """What the reader approximated (e.g. prefix trees it could not represent)."""

    def keep(self, mask: np.ndarray, reason: str) -> Table:
        """The rows where ``mask`` holds; the others are counted under ``reason``.
        Returns a new table; this one is unchanged."""
        rows = np.flatnonzero(mask)
        parent = self.locate
        return self._replace(
            values={f: v[rows] for f, v in self.values.items()},
            locate=lambda row, column: parent(int(rows[row]), column),
            dropped={**self.dropped, reason: self.dropped.get(reason, 0) + len(mask) - len(rows)},
        )


def trace_format(config: TraceWorkload) -> str:
    """``config.format``, or the format its file suffix names; never reads the file."""
    if config.format is not None:
        return config.format
    fmt = _SUFFIX_FORMATS.get(config.path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{config.path}: cannot tell the trace format from the suffix "
            f"{config.path.suffix!r} (known: {', '.join(_SUFFIX_FORMATS)}); "
            "set format: csv, jsonl, parquet, azure, burstgpt, mooncake or sharegpt"
        )
    return fmt


def read_table(config: TraceWorkload, rng: np.random.Generator) -> Table:
    """Read ``config.path`` in its format; the file is only read. ``rng`` draws ShareGPT
    arrival times (other formats do not use it). Raises ValueError for a file that is not
    in the format (naming the file, and the line, row or entry where there is one)."""
    fmt = trace_format(config)
    if fmt == "azure":
        return _read_azure(config.path)
    if fmt == "burstgpt":
        return _read_burstgpt(config)
    if fmt == "mooncake":
        return _read_mooncake(config.path)
    if fmt == "sharegpt":
        return _read_sharegpt(config, rng)
    named = config.columns()
    columns = list(named.values())
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
    values, locate = reader(config.path, columns)
    return Table(dict(zip(named, values, strict=True)), named, locate,
                 1.0 / _UNITS_PER_SECOND[config.time_unit], {})


def _missing_columns(path: Path, expected: list[str], found: list[str], where: str = "") -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(
            f"{path}{where}: missing column(s) {missing}; expected columns {expected}, "
            f"found {found}"
        )


# ---------------------------------------------------------------- CSV


def _csv_frame(path: Path, columns: list[str]) -> pd.DataFrame:
    """The named columns of a CSV file, as pandas parsed them (others not read)."""
    try:
        found = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected a header row with {columns}") from None
    _missing_columns(path, columns, found)
    try:
        return pd.read_csv(path, usecols=columns, low_memory=False)
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: not a valid CSV trace: {e}") from None


def _numbers(column: pd.Series) -> np.ndarray:
    # Non-numeric cells make a column non-numeric; coerce them to NaN so that one
    # vectorised check finds them, and recover their text from the file only on error.
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _read_csv(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    frame = _csv_frame(path, columns)
    values = [_numbers(frame[c]) for c in columns]
    return values, lambda row, column: _csv_locate(path, row, column)


def _csv_locate(path: Path, row: int, column: str) -> tuple[str, str]:
    """Line and quoted text of data row ``row`` in ``column``; rescans the file.

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
                return f"line {start_line}", repr(text) if text.strip() else "no value"
    raise AssertionError(f"{path}: data row {row} not found on rescan")


# ---------------------------------------------------------------- Azure, BurstGPT

AZURE_COLUMNS = {"arrival_column": "TIMESTAMP", "prompt_column": "ContextTokens",
                 "output_column": "GeneratedTokens"}
BURSTGPT_COLUMNS = {"arrival_column": "Timestamp", "prompt_column": "Request tokens",
                    "output_column": "Response tokens"}


def _read_azure(path: Path) -> Table:
    """Azure LLM inference trace: arrival = seconds since the earliest TIMESTAMP."""
    frame = _csv_frame(path, list(AZURE_COLUMNS.values()))
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="ISO8601", errors="coerce")
    ns = stamps.to_numpy(dtype="datetime64[ns]")
    bad = np.isnat(ns)
    ticks = ns.view(np.int64)
    # Subtract in integers first: epoch nanoseconds do not fit a float64 exactly.
    base = ticks[~bad].min() if (~bad).any() else 0
    arrival = (ticks - base).astype(np.float64) / 1e9
    arrival[bad] = np.nan
    values = {"arrival_column": arrival,
              "prompt_column": _numbers(frame["ContextTokens"]),
              "output_column": _numbers(frame["GeneratedTokens"])}
    return Table(values, dict(AZURE_COLUMNS), lambda r, c: _csv_locate(path, r, c), 1.0, {})


def _read_burstgpt(config: TraceWorkload) -> Table:
    """BurstGPT: drops failed rows (0 response tokens), then rows of other models or log
    types when ``config.models`` / ``config.log_types`` are set; all counted."""
    path = config.path
    wanted = list(BURSTGPT_COLUMNS.values())
    filters = [("Model", config.models), ("Log Type", config.log_types)]
    wanted += [column for column, allowed in filters if allowed is not None]
    frame = _csv_frame(path, wanted)
    values = {f: _numbers(frame[c]) for f, c in BURSTGPT_COLUMNS.items()}
    table = Table(values, dict(BURSTGPT_COLUMNS), lambda r, c: _csv_locate(path, r, c), 1.0, {})
    table = table.keep(values["output_column"] != 0, "failed (0 response tokens)")
    kept = np.flatnonzero(values["output_column"] != 0)
    for column, allowed in filters:
        if allowed is not None:
            match = frame[column].astype(str).isin(allowed).to_numpy()[kept]
            table = table.keep(match, f"{column} not in {list(allowed)}")
            kept = kept[match]
    return table


# ---------------------------------------------------------------- JSONL


def _json_numbers(column: Sequence[Any]) -> np.ndarray:
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


def _jsonl_rows(path: Path, columns: list[str]) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The ``columns`` values of each non-blank line (a tuple per row) and its line number."""
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
    return rows, lines


def _read_jsonl_python(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    rows, lines = _jsonl_rows(path, columns)
    raw: list[list[Any]] = (
        [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in columns]
    )
    values = [_json_numbers(col) for col in raw]

    def locate(row: int, column: str) -> tuple[str, str]:
        return f"line {lines[row]}", json.dumps(raw[columns.index(column)][row])

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


# ---------------------------------------------------------------- Parquet


def _read_parquet(path: Path, columns: list[str]) -> tuple[list[np.ndarray], Locate]:
    """Columns of a Parquet file; rows are located as "row N" (1-based, no header)."""
    try:
        found = list(pq.read_schema(path).names)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: not a Parquet file ({e})") from None
    _missing_columns(path, columns, found)
    table = pq.read_table(path, columns=columns)
    values = [_numbers(table.column(c).to_pandas()) for c in columns]

    def locate(row: int, column: str) -> tuple[str, str]:
        value = table.column(column)[row].as_py()
        return f"row {row + 1}", "no value" if value is None else repr(value)

    return values, locate


# ---------------------------------------------------------------- Mooncake

MOONCAKE_COLUMNS = {"arrival_column": "timestamp", "prompt_column": "input_length",
                    "output_column": "output_length", "prefix_id_column": "hash_ids[0]",
                    "prefix_tokens_column": "hash_ids"}


def _read_mooncake(path: Path) -> Table:
    keys = ["timestamp", "input_length", "output_length", "hash_ids"]
    rows, lines = _jsonl_rows(path, keys)
    raw: list[list[Any]] = (
        [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in keys]
    )
    hash_ids = raw[3]
    for row, ids in enumerate(hash_ids):
        if not (isinstance(ids, list) and all(type(b) is int and b >= 0 for b in ids)):
            raise ValueError(f"{path}, line {lines[row]}: column 'hash_ids' has "
                             f"{json.dumps(ids)[:80]}, expected a list of whole numbers >= 0")
    prompt = _json_numbers(raw[1])
    prefix_id, prefix_tokens, note = mooncake_prefixes(hash_ids, prompt)
    values = {"arrival_column": _json_numbers(raw[0]), "prompt_column": prompt,
              "output_column": _json_numbers(raw[2]),
              "prefix_id_column": prefix_id.astype(np.float64),
              "prefix_tokens_column": prefix_tokens}

    def locate(row: int, column: str) -> tuple[str, str]:
        if column in keys:
            return f"line {lines[row]}", json.dumps(raw[keys.index(column)][row])
        return f"line {lines[row]}", json.dumps(hash_ids[row][:1])

    return Table(values, dict(MOONCAKE_COLUMNS), locate, 1e-3, {}, (note,))


def mooncake_prefixes(
    hash_ids: Sequence[Sequence[int]], prompt_tokens: np.ndarray,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Map Mooncake block ids onto one shared prefix per request (a pure function).

    ``prefix_id`` is the request's first block id (-1 without blocks). Each id keeps one
    chain of blocks: the blocks of its first request, extended whenever a later request
    covers the whole chain and goes on. A request's ``prefix_tokens`` is the length of
    its common start with the chain, ``block_tokens`` a block, capped at its prompt.
    Since every declared prefix is a start of the same chain, two requests of one id
    agree on their first ``min(prefix_tokens)`` tokens, as ``Request.prefix_id`` requires.

    Lost: branches. A request that leaves the chain at block k shares only k blocks, even
    where it matches an earlier request on another branch further. The returned note
    counts the prompt tokens shared with earlier requests in the trace and those the
    mapping keeps. Returns (prefix_id int64, prefix_tokens float64, note).
    """
    n = len(hash_ids)
    prefix_id = np.full(n, -1, dtype=np.int64)
    blocks = np.zeros(n, dtype=np.float64)
    chains: dict[int, list[int]] = {}
    trie: dict[tuple[int, int], int] = {}  # (parent node, block id) -> node; -1 is the root
    shared_tokens = kept_tokens = 0.0
    for row, ids in enumerate(hash_ids):
        if not ids:
            continue
        node, shared = -1, 0
        for b in ids:  # blocks any earlier request had, in this order from the start
            child = trie.get((node, b))
            if child is None:
                break
            node, shared = child, shared + 1
        for b in ids[shared:]:
            trie[(node, b)] = node = len(trie)
        chain = chains.setdefault(ids[0], [])
        before = len(chain)
        k = 0
        for a, b in zip(chain, ids, strict=False):
            if a != b:
                break
            k += 1
        if k == before:
            chain.extend(ids[k:])
            k = len(ids)
        prefix_id[row] = ids[0]
        blocks[row] = k
        cap = prompt_tokens[row]
        shared_tokens += min(shared * block_tokens, cap)
        kept_tokens += min(min(k, before) * block_tokens, cap)
    prefix_tokens = np.minimum(blocks * block_tokens, prompt_tokens)
    lost = shared_tokens - kept_tokens
    note = (f"mooncake prefixes: {shared_tokens:.0f} prompt tokens shared with earlier requests, "
            f"{kept_tokens:.0f} kept as one chain per first block, {lost:.0f} lost to branches")
    return prefix_id, prefix_tokens, note


# ---------------------------------------------------------------- ShareGPT

SHAREGPT_COLUMNS = {"arrival_column": "arrival (from config.arrival)",
                    "prompt_column": "first human turn", "output_column": "first gpt reply"}
_HUMAN = {"human", "user"}
_GPT = {"gpt", "chatgpt", "assistant"}


def _read_sharegpt(config: TraceWorkload, rng: np.random.Generator) -> Table:
    """ShareGPT JSON: the first human turn and the first gpt turn after it, in tokens.

    Conversations without such a pair, or with an empty one, are dropped and counted.
    Arrival times are ``config.arrival``'s: the cumulative sum of its gaps from ``rng``.
    """
    path = config.path
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations, got "
                         f"{type(data).__name__}")
    prompts: list[str] = []
    replies: list[str] = []
    index: list[int] = []
    num_unpaired = num_empty = 0
    for i, entry in enumerate(data):
        pair = _first_exchange(path, i, entry)
        if pair is None:
            num_unpaired += 1
        elif not pair[0] or not pair[1]:
            num_empty += 1
        else:
            prompts.append(pair[0])
            replies.append(pair[1])
            index.append(i)
    count = _token_counter(config.tokenizer)
    prompt = np.array(count(prompts), dtype=np.float64)
    output = np.array(count(replies), dtype=np.float64)
    arrival = _arrival_times(config, rng, len(index))
    values = {"arrival_column": arrival, "prompt_column": prompt, "output_column": output}

    def locate(row: int, column: str) -> tuple[str, str]:
        i = index[row]
        shown = {"prompt_column": prompt, "output_column": output}.get(
            next(f for f, c in SHAREGPT_COLUMNS.items() if c == column), arrival)[row]
        return f"conversation {i} (id {data[i].get('id')!r})", f"{shown:g} tokens"

    dropped = {"no human turn followed by a gpt reply": num_unpaired,
               "empty prompt or reply": num_empty}
    note = ("sharegpt tokens: " + (f"tokenizer {config.tokenizer}" if config.tokenizer else
                                   f"about {CHARS_PER_TOKEN:g} characters per token"))
    return Table(values, dict(SHAREGPT_COLUMNS), locate, 1.0, dropped, (note,))


def _arrival_times(config: TraceWorkload, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` arrival times (s) of ``config.arrival``, drawn from ``rng``."""
    process = config.arrival
    assert process is not None  # the config requires it for sharegpt
    if n == 0:
        return np.empty(0)
    if isinstance(process, PoissonArrivals | GammaArrivals | ConstantArrivals | OfflineArrivals):
        return np.cumsum(process.inter_arrivals(rng, n))
    return process.arrival_times(rng, num_requests=n, duration_s=None)


def _first_exchange(path: Path, i: int, entry: Any) -> tuple[str, str] | None:
    """(first human text, first gpt text after it), or None if there is no such pair."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(turns, list):
        raise ValueError(f"{path}: conversation {i}: expected an object with a "
                         f"'conversations' list, got {json.dumps(entry)[:80]}")
    prompt: str | None = None
    for turn in turns:
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)
                and isinstance(turn.get("value"), str)):
            raise ValueError(f"{path}: conversation {i} (id {entry.get('id')!r}): expected "
                             f"turns {{\"from\": str, \"value\": str}}, got "
                             f"{json.dumps(turn)[:80]}")
        if prompt is None and turn["from"] in _HUMAN:
            prompt = turn["value"]
        elif prompt is not None and turn["from"] in _GPT:
            return prompt, turn["value"]
    return None


def _token_counter(name: str | None) -> Callable[[list[str]], list[int]]:
    """Token counts of texts: tiktoken encoding ``name``, else a Hugging Face tokenizer
    ``name``, else (name None) ``ceil(characters / CHARS_PER_TOKEN)``."""
    if name is None:
        return lambda texts: [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
    try:
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        pass
    else:
        if name in tiktoken.list_encoding_names():
            encoding = tiktoken.get_encoding(name)
            return lambda texts: [len(x) for x in encoding.encode_ordinary_batch(texts)]
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        raise ValueError(
            f"tokenizer {name!r}: neither tiktoken (with that encoding) nor transformers is "
            "installed; install one, or leave tokenizer unset for ~4 characters per token"
        ) from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    return lambda texts: [len(ids) for ids in
                          tokenizer(texts, add_special_tokens=False)["input_ids"]]
