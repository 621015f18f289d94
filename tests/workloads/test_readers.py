"""Public trace readers (Azure, BurstGPT, Mooncake, ShareGPT, Parquet), windowing,
sampling and the report of what was dropped, on small files in the real formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from simulator import simulate
from simulator.conformance import tiny_scenario
from workloads.config import TraceWorkload
from workloads.readers import mooncake_prefixes
from workloads.trace import load_trace, read_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,879,34
2023-11-16 18:16:01.0000000,91,7
"""

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5.0,ChatGPT,472,18,490,Conversation log
45.0,ChatGPT,1087,0,1087,Conversation log
118.0,GPT-4,417,276,693,API log
122.5,ChatGPT,1360,4,1364,API log
130.0,GPT-4,30,0,30,Conversation log
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mooncake_lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


MOONCAKE = [
    {"timestamp": 0, "input_length": 1200, "output_length": 10, "hash_ids": [1, 2, 3]},
    {"timestamp": 250, "input_length": 2000, "output_length": 20, "hash_ids": [1, 2, 3, 4]},
    {"timestamp": 500, "input_length": 1100, "output_length": 30, "hash_ids": [1, 2, 9]},
    {"timestamp": 750, "input_length": 1600, "output_length": 40, "hash_ids": [1, 2, 9, 10]},
    {"timestamp": 1000, "input_length": 300, "output_length": 5, "hash_ids": [7]},
]


def sharegpt(entries: list[list[tuple[str, str]]]) -> str:
    return json.dumps([{"id": f"c{i}", "conversations": [{"from": f, "value": v} for f, v in c]}
                       for i, c in enumerate(entries)])


SHAREGPT = sharegpt([
    [("human", "a" * 40), ("gpt", "b" * 401), ("human", "more"), ("gpt", "reply")],
    [("gpt", "hello"), ("human", "x" * 9), ("gpt", "y" * 8)],  # starts with gpt: skip to human
    [("human", "only a question")],  # no reply: dropped
    [("human", ""), ("gpt", "reply")],  # empty prompt: dropped
    [("system", "s"), ("human", "q" * 4), ("gpt", "r")],
])


# ---------------------------------------------------------------- Azure


def test_azure_timestamps_become_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE)
    got = read_trace(TraceWorkload(path=path, format="azure"))
    assert np.allclose(got.arrival_s, [0.0, 4.314579, 4.314579, 14.31941])
    assert got.prompt_tokens.tolist() == [374, 396, 879, 91]
    assert got.output_tokens.tolist() == [44, 109, 34, 7]


def test_azure_2024_timestamps_without_fraction(tmp_path: Path) -> None:
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,10,1\n"
            "2024-05-10 00:00:01.5000000,20,2\n")
    got = read_trace(TraceWorkload(path=write(tmp_path, "a.csv", text), format="azure"))
    assert got.arrival_s.tolist() == [0.0, 1.5]


def test_azure_bad_timestamp_names_line_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE.replace("2023-11-16 18:15:50.9951690,879",
                                                  "yesterday,879"))
    with pytest.raises(ValueError, match=r"a\.csv, line 4: column 'TIMESTAMP' has 'yesterday'"):
        read_trace(TraceWorkload(path=path, format="azure"))


def test_azure_missing_column_lists_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['GeneratedTokens'\]; expected "
                       r"columns \['TIMESTAMP', 'ContextTokens', 'GeneratedTokens'\], found "
                       r"\['TIMESTAMP', 'ContextTokens'\]"):
        read_trace(TraceWorkload(path=path, format="azure"))


def test_azure_out_of_order_rows_are_reported(tmp_path: Path) -> None:
    lines = AZURE.splitlines()
    text = "\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n"
    with pytest.raises(ValueError, match=r"line 3: TIMESTAMP '2023-11-16 18:15:46.6805900' is "
                       r"earlier than '2023-11-16 18:15:50.9951690' on line 2"):
        read_trace(TraceWorkload(path=write(tmp_path, "a.csv", text), format="azure"))


def test_public_formats_refuse_column_mappings() -> None:
    with pytest.raises(ValueError, match="fixed columns"):
        TraceWorkload(path=Path("a.csv"), format="azure", arrival_column="TIMESTAMP")


# ---------------------------------------------------------------- BurstGPT


def test_burstgpt_drops_and_counts_failures(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    requests, report = load_trace(TraceWorkload(path=path, format="burstgpt"))
    assert requests.arrival_s.tolist() == [0.0, 113.0, 117.5]
    assert requests.prompt_tokens.tolist() == [472, 417, 1360]
    assert requests.output_tokens.tolist() == [18, 276, 4]
    assert report.num_rows == 5 and report.num_requests == 3
    assert report.dropped == {"failed (0 response tokens)": 2}
    assert "2 dropped: failed (0 response tokens)" in report.summary()


def test_burstgpt_model_and_log_type_filters(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    config = TraceWorkload(path=path, format="burstgpt", models=("ChatGPT",),
                           log_types=("API log",))
    requests, report = load_trace(config)
    assert requests.prompt_tokens.tolist() == [1360]
    assert report.dropped == {"failed (0 response tokens)": 2,
                              "Model not in ['ChatGPT']": 1,
                              "Log Type not in ['API log']": 1}
    assert report.num_rows == report.num_requests + sum(report.dropped.values())


def test_burstgpt_bad_value_line_is_the_file_line(tmp_path: Path) -> None:
    # The failed row before it is dropped; the line must still be the file's.
    path = write(tmp_path, "b.csv", BURSTGPT.replace("417,276", "4x7,276"))
    with pytest.raises(ValueError, match=r"b\.csv, line 4: column 'Request tokens' has '4x7'"):
        read_trace(TraceWorkload(path=path, format="burstgpt"))


def test_burstgpt_filters_need_their_format() -> None:
    with pytest.raises(ValueError, match="models applies to format burstgpt only"):
        TraceWorkload(path=Path("a.csv"), models=("GPT-4",))


# ---------------------------------------------------------------- Mooncake


def test_mooncake_arrivals_lengths_and_prefix_chain(tmp_path: Path) -> None:
    path = write(tmp_path, "mooncake_trace.jsonl", mooncake_lines(MOONCAKE))
    requests, report = load_trace(TraceWorkload(path=path, format="mooncake"))
    assert requests.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert requests.prompt_tokens.tolist() == [1200, 2000, 1100, 1600, 300]
    assert requests.prefix_id is not None and requests.prefix_tokens is not None
    assert requests.prefix_id.tolist() == [1, 1, 1, 1, 7]
    # Chain of id 1: [1, 2, 3] then extended by [.., 4]; [1, 2, 9] leaves it at block 2,
    # and so does [1, 2, 9, 10], although it shares 3 blocks with the request before.
    assert requests.prefix_tokens.tolist() == [1200, 2000, 1024, 1024, 300]
    assert "lost to branches" in report.notes[0]


def test_mooncake_same_id_shares_first_min_prefix_tokens() -> None:
    g = np.random.default_rng(3)
    hash_ids: list[list[int]] = []
    for _ in range(300):  # random trees: children of earlier requests' block lists
        base = hash_ids[g.integers(len(hash_ids))] if hash_ids and g.random() < 0.8 else []
        keep = int(g.integers(0, len(base) + 1))
        hash_ids.append(base[:keep] + [int(b) for b in g.integers(0, 50, g.integers(1, 4))])
    prompt = np.array([512.0 * len(h) for h in hash_ids])
    prefix_id, prefix_tokens, _ = mooncake_prefixes(hash_ids, prompt)
    for i in range(len(hash_ids)):
        for j in range(i):
            if prefix_id[i] == prefix_id[j]:
                k = int(min(prefix_tokens[i], prefix_tokens[j])) // 512
                assert hash_ids[i][:k] == hash_ids[j][:k]


def test_mooncake_bad_hash_ids_names_line(tmp_path: Path) -> None:
    rows = [*MOONCAKE[:2], {**MOONCAKE[2], "hash_ids": "abc"}]
    path = write(tmp_path, "m.jsonl", mooncake_lines(rows))
    with pytest.raises(ValueError, match=r"m\.jsonl, line 3: column 'hash_ids' has \"abc\""):
        read_trace(TraceWorkload(path=path, format="mooncake"))


def test_mooncake_missing_key_lists_expected(tmp_path: Path) -> None:
    rows = [MOONCAKE[0], {k: v for k, v in MOONCAKE[1].items() if k != "output_length"}]
    path = write(tmp_path, "m.jsonl", mooncake_lines(rows))
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2: missing column\(s\) "
                       r"\['output_length'\]; expected columns \['timestamp'"):
        read_trace(TraceWorkload(path=path, format="mooncake"))


# ---------------------------------------------------------------- ShareGPT


def test_sharegpt_first_exchange_and_char_estimate(tmp_path: Path) -> None:
    path = write(tmp_path, "sg.json", SHAREGPT)
    config = TraceWorkload(path=path, format="sharegpt",
                           arrival={"kind": "constant", "rate_per_s": 2.0})
    requests, report = load_trace(config)
    assert requests.prompt_tokens.tolist() == [10, 3, 1]  # ceil(chars / 4)
    assert requests.output_tokens.tolist() == [101, 2, 1]
    assert requests.arrival_s.tolist() == [0.0, 0.5, 1.0]
    assert report.dropped == {"no human turn followed by a gpt reply": 1,
                              "empty prompt or reply": 1}
    assert report.num_rows == 5 and "4 characters per token" in report.notes[0]


def test_sharegpt_needs_an_arrival_process() -> None:
    with pytest.raises(ValueError, match="set arrival"):
        TraceWorkload(path=Path("sg.json"), format="sharegpt")


def test_sharegpt_malformed_entry_names_conversation(tmp_path: Path) -> None:
    path = write(tmp_path, "sg.json", json.dumps([{"id": "a", "conversations": [{"x": 1}]}]))
    config = TraceWorkload(path=path, format="sharegpt", arrival={"kind": "offline"})
    with pytest.raises(ValueError, match=r"sg\.json: conversation 0 \(id 'a'\): expected turns"):
        read_trace(config)


# ---------------------------------------------------------------- Parquet


def test_parquet_round_trip_and_bad_row(tmp_path: Path) -> None:
    frame = pd.DataFrame({"arrival_s": [3.0, 3.5, 4.0], "prompt_tokens": [5, 6, 7],
                          "output_tokens": [1, 2, 3]})
    frame.to_parquet(tmp_path / "t.parquet")
    got = read_trace(TraceWorkload(path=tmp_path / "t.parquet"))
    assert got.arrival_s.tolist() == [0.0, 0.5, 1.0] and got.prompt_tokens.tolist() == [5, 6, 7]
    frame.assign(output_tokens=[1, 0, 3]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet, row 2: column 'output_tokens' has 0"):
        read_trace(TraceWorkload(path=tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ts'\]"):
        read_trace(TraceWorkload(path=tmp_path / "t.parquet", arrival_column="ts"))


# ---------------------------------------------------------------- window and sampling


def test_window_keeps_start_to_end_and_shifts_to_start(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    config = TraceWorkload(path=path, format="burstgpt", start_s=100.0, end_s=117.5,
                           time_scale=2.0)
    requests, report = load_trace(config)
    # Trace clock (first kept row at 0): 0, 113, 117.5; window [100, 117.5) keeps 113.
    assert requests.arrival_s.tolist() == [(113.0 - 100.0) / 2.0]
    assert report.dropped == {"failed (0 response tokens)": 2, "before start_s": 1,
                              "at or after end_s": 1}


def test_sampling_every_and_frac_are_counted(tmp_path: Path) -> None:
    n = 1000
    text = "arrival_s,prompt_tokens,output_tokens\n" + "".join(
        f"{i * 0.1},{i + 1},1\n" for i in range(n))
    path = write(tmp_path, "t.csv", text)
    every, report = load_trace(TraceWorkload(path=path, sample_every=3))
    assert every.prompt_tokens.tolist() == list(range(1, n + 1, 3))
    assert report.dropped == {"sample_every": n - len(every.prompt_tokens)}
    config = TraceWorkload(path=path, sample_frac=0.25)
    a, report = load_trace(config, np.random.default_rng(7))
    b, _ = load_trace(config, np.random.default_rng(7))
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)  # same seed, same sample
    assert 180 < len(a.prompt_tokens) < 320
    assert report.dropped["sample_frac"] == n - len(a.prompt_tokens)


def test_nothing_left_reports_why(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    with pytest.raises(ValueError, match=r"no request left: .*3 dropped: before start_s"):
        read_trace(TraceWorkload(path=path, format="burstgpt", start_s=1000.0))


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize(
    ("name", "text", "extra"),
    [
        ("AzureLLMInferenceTrace_code.csv", AZURE, {}),
        ("BurstGPT_1.csv", BURSTGPT, {}),
        ("mooncake_trace.jsonl", mooncake_lines(MOONCAKE), {}),
        ("sharegpt.json", SHAREGPT, {"arrival": {"kind": "poisson", "rate_per_s": 5.0}}),
    ],
)
def test_replay_through_simulate(name: str, text: str, extra: dict[str, Any],
                                 tmp_path: Path) -> None:
    fmt = {"A": "azure", "B": "burstgpt", "m": "mooncake", "s": "sharegpt"}[name[0]]
    path = write(tmp_path, name, text)
    workload = {"kind": "trace", "format": fmt, "path": str(path), "time_scale": 10.0, **extra}
    results = simulate(tiny_scenario(workload=workload, stop={"num_requests": None}))
    expected = len(read_trace(TraceWorkload.model_validate(workload)).arrival_s)
    assert (results.requests.status == "finished").sum() == expected


def test_what_a_replay_dropped_reaches_the_results(tmp_path: Path) -> None:
    # Nothing silently dropped: the two failed rows and the row the stop bound cut are
    # both said in the run's info (the CLI prints it under the summary).
    from simulator.conformance import tiny_scenario
    from simulator.engine import simulate

    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    s = tiny_scenario(workload={"kind": "trace", "format": "burstgpt", "path": str(path)},
                      stop={"num_requests": 2})
    report = simulate(s).info.workload_report
    assert report is not None
    assert "3 of 5 rows kept" in report and "2 dropped: failed (0 response tokens)" in report
    assert "1 more after the stop bound" in report
