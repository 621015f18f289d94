"""report: the summary table shows sections, milliseconds and "–" for missing values."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from simulator.report import render_summary, summary_table


def _line(text: str, label: str) -> list[str]:
    """The cells of the one row whose label is exactly ``label`` (cells are set apart by
    two or more spaces; a cell's own words by one)."""
    (line,) = [ln for ln in text.splitlines() if ln.strip().split("  ")[0] == label]
    return line.split()


def _summary(**values: float) -> pd.Series:
    return pd.Series(values, dtype=float)


def test_latency_in_milliseconds_with_four_columns():
    text = render_summary(_summary(
        ttft_mean_s=1.0, ttft_p50_s=0.75, ttft_p90_s=1.7, ttft_p99_s=1.97,
        tpot_mean_s=0.0125, tpot_p50_s=0.012, tpot_p90_s=0.02, tpot_p99_s=math.nan,
    ))
    assert "Latency (ms)" in text
    assert _line(text, "Latency (ms)")[-4:] == ["mean", "p50", "p90", "p99"]
    assert _line(text, "TTFT") == ["TTFT", "1,000", "750", "1,700", "1,970"]
    assert _line(text, "TPOT") == ["TPOT", "12.5", "12", "20", "–"]
    assert _line(text, "ITL") == ["ITL", "–", "–", "–", "–"]  # absent from the summary


def test_sections_counts_and_fractions():
    text = render_summary(_summary(
        num_requests=1234.0, num_finished=1200.0, slo_attainment_frac=0.975,
        mfu_frac=0.42, cost_usd=12.5, energy_j=3.5e6, output_tokens_per_s=math.nan,
    ))
    for section in ("Requests", "Throughput", "SLO", "Utilisation", "Cost & energy"):
        assert section in text
    assert _line(text, "requests")[-1] == "1,234"
    assert _line(text, "SLO attainment")[-2:] == ["97.5", "%"]
    assert _line(text, "MFU (busy time)")[-2:] == ["42.0", "%"]
    assert _line(text, "cost (USD)")[-1] == "12.50"
    assert _line(text, "energy (kJ)")[-1] == "3,500"
    assert _line(text, "output tokens/s")[-1] == "–"
    assert all(len(line) <= 100 for line in text.splitlines())


def test_summary_table_is_a_titled_rich_table():
    summary = _summary(ttft_mean_s=0.1)
    table = summary_table(summary, title="my run")
    assert isinstance(table, Table)
    assert table.title == "my run"
    assert "my run" in render_summary(summary, title="my run")
    assert summary.to_dict() == {"ttft_mean_s": 0.1}
