"""Trace reading: round trips, time handling, and errors that name the file and line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator import simulate
from simulator.conformance import tiny_scenario
from workloads.config import TraceWorkload
from workloads.generate import RequestArrays
from workloads.trace import _read_jsonl_pyarrow, _read_jsonl_python, read_trace

HEADER = "arrival_s,prompt_tokens,output_tokens\n"


def sample_requests(n: int = 1000, seed: int = 0) -> RequestArrays:
    g = np.random.default_rng(seed)
    return RequestArrays(
        12.5 + np.cumsum(g.exponential(0.1, n)),
        g.integers(1, 4000, n, dtype=np.int64),
        g.integers(1, 900, n, dtype=np.int64),
    )


def write_csv(path: Path, r: RequestArrays) -> None:
    pd.DataFrame(r._asdict()).dropna(axis=1, how='all').to_csv(path, index=False)


def write_jsonl(path: Path, r: RequestArrays) -> None:
    with path.open("w") as f:
        for a, p, o in zip(*(c.tolist() for c in r[:3]), strict=True):
            f.write(json.dumps({"arrival_s": a, "prompt_tokens": p, "output_tokens": o}) + "\n")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "writer"), [("t.csv", write_csv), ("t.jsonl", write_jsonl)])
def test_round_trip_shifts_first_arrival_to_zero(
    name: str, writer: Callable[[Path, RequestArrays], None], tmp_path: Path
) -> None:
    r = sample_requests()
    path = tmp_path / name
    writer(path, r)
    got = read_trace(TraceWorkload(path=path))
    assert got.arrival_s.dtype == np.float64 and got.prompt_tokens.dtype == np.int64
    assert np.array_equal(got.arrival_s, r.arrival_s - r.arrival_s[0])
    assert np.array_equal(got.prompt_tokens, r.prompt_tokens)
    assert np.array_equal(got.output_tokens, r.output_tokens)


def test_jsonl_readers_agree(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, sample_requests(300))
    columns = ["arrival_s", "prompt_tokens", "output_tokens"]
    fast = _read_jsonl_pyarrow(path, columns)
    slow, _ = _read_jsonl_python(path, columns)
    assert fast is not None
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)


def test_time_scale_divides_arrival_times(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", HEADER + "10,1,1\n12,1,1\n17,1,1\n")
    assert np.array_equal(read_trace(TraceWorkload(path=path)).arrival_s, [0, 2, 7])
    fast = read_trace(TraceWorkload(path=path, time_scale=4.0))
    assert np.array_equal(fast.arrival_s, [0, 0.5, 1.75])


def test_time_units_and_custom_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        '{"ts": 1000, "in": 5, "out": 7, "user": "a"}\n\n{"ts": 3500, "in": 6, "out": 8}\n',
    )
    config = TraceWorkload(
        path=path, arrival_column="ts", prompt_column="in", output_column="out", time_unit="ms"
    )
    r = read_trace(config)
    assert np.array_equal(r.arrival_s, [0.0, 2.5])
    assert np.array_equal(r.prompt_tokens, [5, 6]) and np.array_equal(r.output_tokens, [7, 8])
    us = read_trace(config.model_copy(update={"time_unit": "us"}))
    assert np.array_equal(us.arrival_s, [0.0, 0.0025])


def test_extra_columns_are_ignored_and_format_can_be_forced(tmp_path: Path) -> None:
    path = write(tmp_path, "trace.txt", "note,output_tokens,arrival_s,prompt_tokens\nhi,2,0,3\n")
    with pytest.raises(ValueError, match="cannot tell the trace format"):
        read_trace(TraceWorkload(path=path))
    r = read_trace(TraceWorkload(path=path, format="csv"))
    assert (r.arrival_s.tolist(), r.prompt_tokens.tolist(), r.output_tokens.tolist()) == (
        [0.0],
        [3],
        [2],
    )


def test_equal_arrival_times_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", HEADER + "5,1,1\n5,1,1\n5,2,2\n")
    assert np.array_equal(read_trace(TraceWorkload(path=path)).arrival_s, [0, 0, 0])


# ---------------------------------------------------------------- errors

CSV_BAD_ROWS = [
    # (body after the header, line, column, shown value)
    ("0,5,6\n1,abc,6\n", 3, "prompt_tokens", "'abc'"),
    ("0,5,6\n1,,6\n", 3, "prompt_tokens", "no value"),
    ("0,5,6\n1,5\n", 3, "output_tokens", "no value"),
    ("0,5,6\n-1,5,6\n", 3, "arrival_s", "'-1'"),
    ("0,5,6\nsoon,5,6\n", 3, "arrival_s", "'soon'"),
    ("0,0,6\n", 2, "prompt_tokens", "'0'"),
    ("0,5,0\n", 2, "output_tokens", "'0'"),
    ("0,5,-3\n", 2, "output_tokens", "'-3'"),
    ("0,5.5,6\n", 2, "prompt_tokens", "'5.5'"),
    ("0,5,6\n\n1,5,6\n2,5,x\n", 5, "output_tokens", "'x'"),  # blank line still counted
    ("0,5,6\n3,1,0\n2,0,1\n", 3, "output_tokens", "'0'"),  # the first bad row wins
]


@pytest.mark.parametrize(("body", "line", "column", "shown"), CSV_BAD_ROWS)
def test_bad_csv_row_names_file_line_column_and_value(
    tmp_path: Path, body: str, line: int, column: str, shown: str
) -> None:
    path = write(tmp_path, "bad.csv", HEADER + body)
    with pytest.raises(ValueError) as err:
        read_trace(TraceWorkload(path=path))
    message = str(err.value)
    assert str(path) in message
    assert f"line {line}:" in message
    assert f"column {column!r} has {shown}" in message


JSONL_BAD_ROWS = [
    ('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": "6"}\n', 1, "output_tokens", '"6"'),
    ('{"arrival_s": 0, "prompt_tokens": true, "output_tokens": 6}\n', 1, "prompt_tokens", "true"),
    ('{"arrival_s": null, "prompt_tokens": 5, "output_tokens": 6}\n', 1, "arrival_s", "null"),
    (
        '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 6}\n\n'
        '{"arrival_s": -2, "prompt_tokens": 5, "output_tokens": 6}\n',
        3,
        "arrival_s",
        "-2",
    ),
    ('{"arrival_s": 0, "prompt_tokens": 0, "output_tokens": 6}\n', 1, "prompt_tokens", "0"),
]


@pytest.mark.parametrize(("text", "line", "column", "shown"), JSONL_BAD_ROWS)
def test_bad_jsonl_row_names_file_line_column_and_value(
    tmp_path: Path, text: str, line: int, column: str, shown: str
) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(ValueError) as err:
        read_trace(TraceWorkload(path=path))
    message = str(err.value)
    assert str(path) in message and f"line {line}:" in message
    assert f"column {column!r} has {shown}" in message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 6}\nnot json\n',
            2,
            "not valid JSON",
        ),
        ("[0, 5, 6]\n", 1, "expected a JSON object, got list"),
        (
            '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 6}'
            '{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 6}\n',
            1,
            "not valid JSON",
        ),
    ],
)
def test_malformed_jsonl_lines(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(ValueError, match=f"line {line}: {fragment}") as err:
        read_trace(TraceWorkload(path=path))
    assert str(path) in str(err.value)


def test_missing_csv_column_lists_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "time,prompt_tokens,out\n0,1,1\n")
    with pytest.raises(ValueError) as err:
        read_trace(TraceWorkload(path=path))
    message = str(err.value)
    assert str(path) in message
    assert "expected columns ['arrival_s', 'prompt_tokens', 'output_tokens']" in message
    assert "found ['time', 'prompt_tokens', 'out']" in message


def test_missing_jsonl_key_lists_expected_and_found_with_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 6}\n'
        '{"arrival_s": 1, "prompt_tokens": 5}\n',
    )
    with pytest.raises(ValueError) as err:
        read_trace(TraceWorkload(path=path))
    message = str(err.value)
    assert f"{path}, line 2" in message
    assert "missing column(s) ['output_tokens']" in message
    assert "found ['arrival_s', 'prompt_tokens']" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("t.csv", HEADER + "0,1,1\n5,1,1\n4,1,1\n"),
        (
            "t.jsonl",
            '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n'
            '{"arrival_s": 5, "prompt_tokens": 1, "output_tokens": 1}\n'
            '{"arrival_s": 4, "prompt_tokens": 1, "output_tokens": 1}\n',
        ),
    ],
)
def test_decreasing_arrival_times_are_refused(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    first_line = 2 if name.endswith(".csv") else 1
    with pytest.raises(ValueError, match="non-decreasing") as err:
        read_trace(TraceWorkload(path=path))
    message = str(err.value)
    assert str(path) in message
    assert f"line {first_line + 2}:" in message and f"on line {first_line + 1}" in message


@pytest.mark.parametrize(("name", "text"), [("t.csv", HEADER), ("t.jsonl", "\n"), ("e.csv", "")])
def test_empty_traces_are_refused(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=r"no requests|empty file"):
        read_trace(TraceWorkload(path=path))


@pytest.mark.slow
def test_a_million_row_csv_loads_quickly(tmp_path: Path) -> None:
    n = 1_000_000
    path = tmp_path / "big.csv"
    write_csv(path, sample_requests(n))
    start = time.perf_counter()
    r = read_trace(TraceWorkload(path=path))
    assert len(r.arrival_s) == n
    assert time.perf_counter() - start < 5.0  # typically ~0.3 s


# ---------------------------------------------------------------- optional columns

OPTIONAL = {"priority_column": "prio", "ttft_slo_column": "slo",
            "prefix_id_column": "pid", "prefix_tokens_column": "ptok"}


def with_attributes(n: int = 500, seed: int = 1) -> RequestArrays:
    g = np.random.default_rng(seed)
    r = sample_requests(n, seed)
    prefix_id = g.integers(-1, 5, n, dtype=np.int64)
    return r._replace(
        priority=g.integers(-3, 4, n, dtype=np.int64),
        ttft_slo_s=g.choice([0.25, 1.0, 7.5], n),
        prefix_id=prefix_id,
        prefix_tokens=np.where(prefix_id >= 0, g.integers(0, r.prompt_tokens + 1), 0),
    )


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
def test_optional_columns_round_trip(tmp_path: Path, name: str) -> None:
    r = with_attributes()
    frame = pd.DataFrame({"arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
                          "output_tokens": r.output_tokens, "prio": r.priority,
                          "slo": r.ttft_slo_s, "pid": r.prefix_id, "ptok": r.prefix_tokens})
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    got = read_trace(TraceWorkload(path=path, **OPTIONAL))
    for column in ("priority", "prefix_id", "prefix_tokens"):
        assert getattr(got, column).dtype == np.int64
    for column in ("prompt_tokens", "output_tokens", "priority", "ttft_slo_s", "prefix_id",
                   "prefix_tokens"):
        assert np.array_equal(getattr(got, column), getattr(r, column)), column
    plain = read_trace(TraceWorkload(path=path))  # not named: not read
    assert plain.priority is None and plain.prefix_id is None and plain.ttft_slo_s is None


OPTIONAL_HEADER = "arrival_s,prompt_tokens,output_tokens,prio,slo,pid,ptok\n"
CSV_BAD_OPTIONAL = [
    # (body after the header, line, column, shown value, expected)
    ("0,5,6,0,1,0,2\n1,5,6,1.5,1,0,2\n", 3, "prio", "'1.5'", "a whole number"),
    ("0,5,6,high,1,0,2\n", 2, "prio", "'high'", "a whole number"),
    ("0,5,6,0,0,0,2\n", 2, "slo", "'0'", "a number of seconds > 0"),
    ("0,5,6,0,-2,0,2\n", 2, "slo", "'-2'", "a number of seconds > 0"),
    ("0,5,6,0,,0,2\n", 2, "slo", "no value", "a number of seconds > 0"),
    ("0,5,6,0,1,-2,2\n", 2, "pid", "'-2'", "a whole number >= -1"),
    ("0,5,6,0,1,0,6\n", 2, "ptok", "'6'", "a whole number from 0 to the prompt's 5 tokens"),
    ("0,5,6,0,1,0,-1\n", 2, "ptok", "'-1'", "a whole number from 0 to the prompt's 5 tokens"),
    ("0,5,6,0,1,0,2\n1,0,6,0,1,0,2\n", 3, "prompt_tokens", "'0'", "a whole number >= 1"),
]


@pytest.mark.parametrize(("body", "line", "column", "shown", "expected"), CSV_BAD_OPTIONAL)
def test_bad_optional_value_names_file_line_column_and_value(
    tmp_path: Path, body: str, line: int, column: str, shown: str, expected: str
) -> None:
    path = write(tmp_path, "bad.csv", OPTIONAL_HEADER + body)
    with pytest.raises(ValueError) as err:
        read_trace(TraceWorkload(path=path, **OPTIONAL))
    assert str(err.value) == (
        f"{path}, line {line}: column {column!r} has {shown}, expected {expected}"
    )


def test_bad_optional_jsonl_value_and_missing_optional_key(tmp_path: Path) -> None:
    good = '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 6, "prio": 1}\n'
    path = write(tmp_path, "t.jsonl", good + good.replace('"prio": 1', '"prio": "urgent"'))
    with pytest.raises(ValueError, match=r"line 2: column 'prio' has \"urgent\", expected"):
        read_trace(TraceWorkload(path=path, priority_column="prio"))
    path = write(tmp_path, "u.jsonl", good + good.replace(', "prio": 1', ""))
    with pytest.raises(ValueError, match=r"line 2: missing column\(s\) \['prio'\]"):
        read_trace(TraceWorkload(path=path, priority_column="prio"))


def test_a_missing_optional_csv_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", HEADER + "0,5,6\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['slo'\]"):
        read_trace(TraceWorkload(path=path, ttft_slo_column="slo"))


def test_trace_attributes_reach_the_results_frame(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", OPTIONAL_HEADER + "0,50,6,2,0.5,1,20\n0.01,60,6,-1,3,-1,0\n")
    workload = {"kind": "trace", "path": str(path), **OPTIONAL}
    frame = simulate(tiny_scenario(workload=workload, stop={"num_requests": None})).requests
    assert frame.priority.tolist() == [2, -1]
    assert frame.ttft_slo_s.tolist() == [0.5, 3.0]
    assert frame.prefix_id.tolist() == [1, -1]
