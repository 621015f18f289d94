"""Human-readable summary: ``Results.summary()`` as a rich table, grouped by section.

Presentation only: seconds are shown in milliseconds, fractions as percentages and
missing values (NaN, or a metric the summary lacks) as "–". No numbers are computed
here beyond unit conversion.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

MISSING = "–"

Formatter = Callable[[float], str]


def _count(x: float) -> str:
    return f"{x:,.0f}"


def _number(x: float) -> str:
    if abs(x) >= 10_000:
        return f"{x:,.0f}"
    return f"{x:,.4g}" if abs(x) >= 1 else f"{x:.3g}"


def _ms(x: float) -> str:
    return _number(x * 1e3)


def _percent(x: float) -> str:
    return f"{x * 100:.1f} %"


def _kilo(x: float) -> str:
    return _number(x / 1e3)


def _usd(x: float) -> str:
    return f"{x:,.2f}" if abs(x) >= 1 else f"{x:.3g}"


_SECTIONS: list[tuple[str, list[tuple[str, str, Formatter]]]] = [
    ("Requests", [
        ("requests", "num_requests", _count),
        ("finished", "num_finished", _count),
        ("rejected", "num_rejected", _count),
        ("in flight at stop", "num_in_flight", _count),
        ("preemptions", "num_preemptions", _count),
        ("recomputed tokens", "recomputed_tokens", _count),
        ("swapped (GB, per device)", "swap_bytes", lambda x: _number(x / 1e9)),
        ("longest wait to schedule (s)", "queue_max_s", _number),
        ("duration (s)", "duration_s", _number),
    ]),
    ("Throughput", [
        ("requests/s", "request_throughput_per_s", _number),
        ("input tokens/s", "input_tokens_per_s", _number),
        ("output tokens/s", "output_tokens_per_s", _number),
        ("total tokens/s", "total_tokens_per_s", _number),
        ("output tokens/s per device", "output_tokens_per_s_per_device", _number),
        ("total tokens/s per device", "total_tokens_per_s_per_device", _number),
    ]),
    ("SLO", [
        ("goodput (req/s)", "goodput_requests_per_s", _number),
        ("SLO attainment", "slo_attainment_frac", _percent),
    ]),
    ("Utilisation", [
        ("MFU (busy time)", "mfu_frac", _percent),
        ("MBU (busy time)", "mbu_frac", _percent),
        ("busy", "busy_frac", _percent),
        ("KV cache mean", "kv_utilization_mean_frac", _percent),
        ("KV cache max", "kv_utilization_max_frac", _percent),
        ("pipeline waits", "pipeline_wait_frac", _percent),
        ("tokens per decode step", "tokens_per_step_mean", _number),
        ("proposals accepted", "acceptance_rate_frac", _percent),
        ("KV hand-over mean (ms)", "kv_transfer_mean_s", lambda x: _number(x * 1e3)),
    ]),
    ("Cost & energy", [
        ("devices (mean over the run)", "num_devices_mean", _number),
        ("cost (USD)", "cost_usd", _usd),
        ("USD per M output tokens", "cost_per_million_output_tokens_usd", _usd),
        ("USD per M total tokens", "cost_per_million_total_tokens_usd", _usd),
        ("energy (kJ)", "energy_j", _kilo),
        ("energy per output token (J)", "energy_per_output_token_j", _number),
    ]),
]

_ONLY_WHEN_ACTIVE = {"pipeline_wait_frac", "kv_transfer_mean_s", "acceptance_rate_frac"}
"""Rows shown only for runs with pipeline stages or disaggregated pools."""

_LATENCY = [("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E", "e2e"),
            ("queue", "queue")]
_LATENCY_STATS = ("mean", "p50", "p90", "p99")


def _cell(summary: pd.Series, key: str, fmt: Formatter) -> str:
    value = summary.get(key)
    if value is None:
        return MISSING
    x = float(value)
    return MISSING if math.isnan(x) else fmt(x)


def summary_table(summary: pd.Series, title: str = "servesim summary") -> Table:
    """A table of ``summary`` (as returned by ``Results.summary()``) in sections:
    Requests, Latency (ms) with mean/p50/p90/p99 columns, Throughput, SLO, Utilisation,
    Cost & energy. Does not modify ``summary``."""
    table = Table(title=title, show_header=False, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric", no_wrap=True)
    for _ in _LATENCY_STATS:
        table.add_column(justify="right", no_wrap=True)

    def heading(name: str, *columns: str) -> None:
        cells = [f"[bold]{c}[/]" for c in columns]
        table.add_row(f"[bold]{name}[/]", *cells, *[""] * (len(_LATENCY_STATS) - len(cells)))

    def rows(entries: list[tuple[str, str, Formatter]]) -> None:
        for label, key, fmt in entries:
            if key in _ONLY_WHEN_ACTIVE and not summary.get(key, 0) > 0:
                continue  # a layout this run does not have (NaN or 0)
            table.add_row(f"  {label}", _cell(summary, key, fmt), "", "", "")

    sections = iter(_SECTIONS)
    name, entries = next(sections)  # Requests first, then latency
    heading(name)
    rows(entries)
    table.add_section()
    heading("Latency (ms)", *_LATENCY_STATS)
    for label, metric in _LATENCY:
        table.add_row(f"  {label}",
                      *[_cell(summary, f"{metric}_{stat}_s", _ms) for stat in _LATENCY_STATS])
    for name, entries in sections:
        table.add_section()
        heading(name)
        rows(entries)
    return table


def render_summary(summary: pd.Series, title: str = "servesim summary") -> str:
    """``summary_table(summary)`` rendered to plain text, 100 columns wide."""
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(summary_table(summary, title=title))
    return console.export_text()
