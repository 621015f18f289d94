"""The ``servesim`` command: run scenarios, list catalogs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pydantic
from rich.console import Console
from rich.table import Table

from hardware.catalog import load_catalog
from simulator.deployment import resolve
from simulator.engine import simulate
from simulator.model_catalog import load_model_catalog
from simulator.report import summary_table
from simulator.scenario import Scenario, load_mapping

log = logging.getLogger(__name__)


def _load(path: str | None, overrides: list[str]) -> Scenario:
    if path is None:
        return Scenario().with_overrides(overrides) if overrides else Scenario()
    return Scenario.from_dict(load_mapping(path), overrides)


def _format_validation(exc: pydantic.ValidationError) -> str:
    lines = [f"invalid scenario ({exc.error_count()} error(s)):"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {where}: {err['msg']}{shown}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    scenario = _load(args.scenario, args.set)
    console.print(f"[bold]servesim[/] running scenario [cyan]{scenario.name}[/] ...")
    results = simulate(scenario)
    summary = results.summary()
    console.print(summary_table(summary, title=f"servesim: {scenario.name}"))
    info = results.info
    if info.workload_report:
        console.print(f"trace: {info.workload_report}", highlight=False)
    console.print(
        f"simulated {info.end_s:.1f} s, {len(results.iterations)} iterations, in "
        f"{info.wall_s:.2f} s wall"
    )
    if args.out:
        paths = results.save(Path(args.out))
        (Path(args.out) / "scenario.yaml").write_text(scenario.to_yaml())
        console.print(f"wrote {len(paths) + 1} files to {args.out}")
    return 0


def _cmd_scenario(args: argparse.Namespace, console: Console) -> int:
    if args.schema:
        sys.stdout.write(json.dumps(Scenario.model_json_schema(), indent=2) + "\n")
        return 0
    scenario = _load(args.scenario, args.set)
    deployment = resolve(scenario)
    sys.stdout.write(scenario.to_yaml())
    console.print(f"# memory per device: {deployment.memory.describe()}", highlight=False)
    return 0


def _cmd_models(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="model catalog")
    table.add_column("name", no_wrap=True)
    for column in ("layers", "hidden", "heads / kv", "experts", "params (B)", "context"):
        table.add_column(column)
    for name, m in sorted(load_model_catalog().items()):
        experts = f"{m.num_experts} top-{m.num_experts_per_token}" if m.is_moe else "-"
        table.add_row(name, str(m.num_layers), str(m.hidden_size),
                      f"{m.num_heads} / {m.num_kv_heads}", experts,
                      f"{m.num_params / 1e9:.1f}", str(m.max_context_tokens))
    console.print(table)
    return 0


def _cmd_hardware(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="accelerator catalog")
    table.add_column("name", no_wrap=True)
    for column in ("memory GiB", "HBM TB/s", "bf16 TFLOP/s", "fp8 TFLOP/s", "W", "$/h"):
        table.add_column(column)
    for name, a in sorted(load_catalog().items()):
        fp8 = a.peak_tflops.get("fp8")
        table.add_row(name, f"{a.memory_gib:g}", f"{a.hbm_tb_per_s:g}",
                      f"{a.peak_tflops.get('bf16', a.peak_tflops.get('fp16', 0)):g}",
                      "-" if fp8 is None else f"{fp8:g}", f"{a.tdp_w:g}",
                      f"{a.price_per_hour_usd:g}")
    console.print(table)
    return 0


def _needs_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ValueError(
            f"servesim {command} runs torch microbenchmarks: install the calibrate extra "
            "(pip install 'servesim[calibrate]'; on a CPU-only machine pip install "
            "torch==2.13.0 first)"
        ) from None


def _cmd_calibrate(args: argparse.Namespace, console: Console) -> int:
    _needs_torch("calibrate")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from calibration.calibrate import calibrate
    from calibration.report import device_table, fit_table, roofline_notes

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"
                  "/{task.total}"), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(suite: str, done: int, total: int) -> None:
            if suite not in tasks:
                tasks[suite] = bar.add_task(suite, total=total)
            bar.update(tasks[suite], completed=done, total=total)

        profile = calibrate(args.device, quick=args.quick, time_budget_s=args.time_budget,
                            num_threads=args.threads, progress=progress)
    profile.to_json(args.out)
    console.print(device_table(profile))
    console.print(fit_table(profile))
    for note in roofline_notes(profile):
        console.print(f"- {note}", highlight=False)
    console.print(f"wrote {args.out} ({len(profile.points)} points, torch "
                  f"{profile.host.torch_version}, {profile.host.num_threads} threads); use it "
                  f"with: servesim run --set hardware.profile={args.out}")
    return 0


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    _needs_torch("validate")
    from calibration.report import fit_table
    from calibration.validate import (
        TARGET_ITERATION_MAPE,
        TARGET_MEDIAN_ERROR,
        plot_html,
        validate_size,
    )
    from hardware.profile import load_profile

    profile_path = Path(args.profile)
    profile = load_profile(profile_path)
    console.print(fit_table(profile))
    reports = []
    for size in args.sizes:
        console.print(f"serving the reference model [cyan]{size}[/] for real, then "
                      f"simulating it ...")
        reports.append(validate_size(profile, profile_path, size,
                                     num_requests=args.num_requests, rate_per_s=args.rate,
                                     num_threads=args.threads))
    table = Table(title=f"validation: simulator with {profile_path.name} against real runs "
                        f"(targets: iteration MAPE <= {TARGET_ITERATION_MAPE:.0%}, median "
                        f"TTFT/TPOT within {TARGET_MEDIAN_ERROR:.0%})")
    for column in ("model", "iterations", "iteration MAPE", "by kind", "loop overhead",
                   "TTFT p50 real / sim", "TPOT p50 real / sim", "targets"):
        table.add_column(column)
    for r in reports:
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in r.iteration_mape_by_kind.items())
        table.add_row(
            r.model, str(r.num_iterations), f"{r.iteration_mape:.1%}", kinds,
            f"{r.loop_overhead_s * 1e6:.0f} us",
            f"{r.ttft_p50_measured_s * 1e3:.2f} / {r.ttft_p50_simulated_s * 1e3:.2f} ms "
            f"({r.ttft_error:+.0%})",
            f"{r.tpot_p50_measured_s * 1e3:.2f} / {r.tpot_p50_simulated_s * 1e3:.2f} ms "
            f"({r.tpot_error:+.0%})",
            "met" if r.meets_targets else "MISSED")
    console.print(table)
    if args.plot and plot_html(reports, Path(args.plot)):
        console.print(f"wrote {args.plot}")
    return 0 if all(r.meets_targets for r in reports) else 1


def _cmd_fit(args: argparse.Namespace, console: Console) -> int:
    import numpy as np

    from workloads.config import TraceWorkload
    from workloads.fit import fit_workload
    from workloads.trace import load_trace

    fields: dict[str, Any] = {"path": args.trace}
    if args.format:
        fields["format"] = args.format
    loaded = load_trace(TraceWorkload.model_validate(fields), np.random.default_rng(0))
    console.print(loaded.report.summary(), highlight=False)
    fit = fit_workload(loaded.requests)
    report = fit.report()
    table = Table(title=f"fit of {args.trace}")
    columns = ["family", "params", "ks_distance", "verdict", "trace_mean", "fit_mean",
               "trace_p99", "fit_p99"]
    table.add_column("quantity")
    for column in columns:
        table.add_column(column)
    for quantity, row in report.iterrows():
        table.add_row(str(quantity), *(f"{row[c]:.4g}" if isinstance(row[c], float)
                                       else str(row[c]) for c in columns))
    console.print(table)
    console.print(f"gap cv {fit.gap_cv:.3g}, prompt-output Spearman "
                  f"{fit.prompt_output_spearman:.3g} (the look-alike draws them independently)")
    text = fit.to_yaml(args.rate)
    if args.out:
        Path(args.out).write_text(text)
        console.print(f"wrote {args.out}: a scenario of its own (servesim run {args.out}), "
                      "or the workload section of yours")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from simulator.sweeps import sweep, to_parquet

    spec = load_mapping(args.grid)
    unknown = set(spec) - {"base", "grid", "replications"}
    if unknown or not isinstance(spec.get("grid"), dict):
        raise ValueError(f"{args.grid}: needs {{base: scenario or path, grid: {{path: [values]}}, "
                         f"replications: k}}" + (f"; unknown keys {sorted(unknown)}" if unknown
                                                 else ""))
    base = spec.get("base") or {}
    if isinstance(base, str):
        path = Path(base) if Path(base).exists() else Path(args.grid).parent / base
        base = load_mapping(path)
    replications = args.replications or int(spec.get("replications", 1))
    table = sweep(Scenario.from_dict(base), spec["grid"], replications=replications,
                  executor=args.executor, workers=args.workers, address=args.address,
                  cache_dir=args.cache, progress=True)
    shown = [*spec["grid"], "replication", "ttft_p99_s", "tpot_p99_s", "output_tokens_per_s",
             "slo_attainment_frac", "cost_per_million_output_tokens_usd"]
    result = Table(title=f"sweep: {len(table)} runs")
    for column in [*shown, "error"]:
        result.add_column(column)
    for _, row in table.iterrows():
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                 for c in shown]
        result.add_row(*cells, row["error"] or "")
    console.print(result)
    to_parquet(table, args.out)
    console.print(f"wrote {args.out}")
    return 0


def _cmd_plan(args: argparse.Namespace, console: Console) -> int:
    import time

    from simulator.planner import LoadResult, plan_from_mapping

    start = time.perf_counter()
    spec = load_mapping(args.plan)
    base = spec.get("base") or {}
    if isinstance(base, str):
        path = Path(base) if Path(base).exists() else Path(args.plan).parent / base
        base = load_mapping(path)
    if args.executor:
        spec["executor"] = args.executor
    result = plan_from_mapping(spec, Scenario.from_dict(base))
    console.print(result.describe(), highlight=False, markup=False)
    if isinstance(result, LoadResult):
        console.print(result.probes[["rate_per_s", "n", "verdict", "detail"]].to_string(
            index=False), highlight=False, markup=False)
    console.print(f"planned in {time.perf_counter() - start:.1f} s wall")
    return 0


def _cmd_dashboard(args: argparse.Namespace, console: Console) -> int:
    import importlib.util
    import subprocess

    if importlib.util.find_spec("streamlit") is None:
        raise ValueError("servesim dashboard needs streamlit: install the dashboard extra "
                         "(pip install 'servesim[dashboard]')")
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    if not app.is_file():
        raise ValueError(f"the dashboard app is missing ({app}): reinstall servesim")
    command = [sys.executable, "-m", "streamlit", "run", str(app),
               "--server.headless", "true", "--server.address", args.host,
               "--server.port", str(args.port), "--browser.gatherUsageStats", "false",
               "--server.maxUploadSize", "50"]  # MB: the trace upload limit
    console.print(f"servesim dashboard on http://{args.host}:{args.port} (Ctrl-C stops it)")
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servesim", description="Discrete-event simulator of LLM serving systems."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", nargs="?", help="YAML/JSON scenario (default: built-in)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set engine.max_num_seqs=128 (repeatable)")

    run = sub.add_parser("run", help="simulate a scenario and print its summary")
    scenario_args(run)
    run.add_argument("--out", help="write frames (Parquet, CSV), summary and trace to DIR")
    run.set_defaults(func=_cmd_run)
    show = sub.add_parser("scenario", help="print a scenario with every default filled in")
    scenario_args(show)
    show.add_argument("--schema", action="store_true",
                      help="print the JSON schema instead: every field, its unit and meaning")
    show.set_defaults(func=_cmd_scenario)
    cal = sub.add_parser("calibrate", help="measure this machine's torch device, fit the "
                         "cost model to it, write a profile (needs the calibrate extra)")
    cal.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    cal.add_argument("--quick", action="store_true", help="fewer shapes: about a minute")
    cal.add_argument("--time-budget", type=float, default=None, metavar="S",
                     help="stop measuring after S seconds (default 45 quick, 300 full)")
    cal.add_argument("--threads", type=int, default=None,
                     help="torch threads (default: torch's; 1 on a busy machine)")
    cal.add_argument("--out", default="profile.json", help="profile to write (JSON)")
    cal.set_defaults(func=_cmd_calibrate)
    val = sub.add_parser("validate", help="serve reference models for real on this device and "
                         "compare with the simulator using a profile (needs the calibrate extra)")
    val.add_argument("--profile", required=True, help="profile from servesim calibrate")
    val.add_argument("--sizes", nargs="+", default=["small", "medium"],
                     choices=["tiny", "small", "medium"], help="reference model sizes")
    val.add_argument("--num-requests", type=int, default=60)
    val.add_argument("--rate", type=float, default=8.0, help="arrivals per second")
    val.add_argument("--threads", type=int, default=None,
                     help="torch threads (use the calibration's; 1 on a busy machine)")
    val.add_argument("--plot", default="validation.html",
                     help="write measured vs predicted iteration times here (plotly HTML)")
    val.set_defaults(func=_cmd_validate)
    fit = sub.add_parser("fit", help="fit arrival and length distributions to a trace and "
                         "write a synthetic look-alike workload (YAML)")
    fit.add_argument("trace", help="trace file (CSV, JSONL, Parquet or a public format)")
    fit.add_argument("--format", help="csv, jsonl, parquet, azure, burstgpt, mooncake "
                     "(default: from the suffix)")
    fit.add_argument("--rate", type=float, default=None,
                     help="arrival rate of the look-alike, req/s (default: the trace's)")
    fit.add_argument("--out", help="write the workload YAML here (default: stdout)")
    fit.set_defaults(func=_cmd_fit)
    swp = sub.add_parser("sweep", help="simulate a grid of overrides x replications into a "
                         "table (Parquet)")
    swp.add_argument("grid", help="YAML: {base: scenario or path, grid: {path: [values]}, "
                     "replications: k}")
    swp.add_argument("--executor", default="process", choices=["inprocess", "process", "ray"])
    swp.add_argument("--address", help="Ray cluster address (default: start a local one)")
    swp.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    swp.add_argument("--replications", type=int, default=None, help="override the file's")
    swp.add_argument("--out", default="sweep.parquet", help="table to write (Parquet)")
    swp.add_argument("--cache", help="keep finished runs in DIR; reruns load them")
    swp.set_defaults(func=_cmd_sweep)
    pln = sub.add_parser("plan", help="capacity planning: max sustainable rate, or the cheapest "
                         "deployment meeting the SLO (docs/planning.md)")
    pln.add_argument("plan", help="YAML: {base: scenario or path, mode: max_rate | cheapest, ...}")
    pln.add_argument("--executor", default=None, choices=["inprocess", "process", "ray"])
    pln.set_defaults(func=_cmd_plan)
    dash = sub.add_parser("dashboard", help="open the web dashboard (needs the dashboard extra)")
    dash.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1, this machine only)")
    dash.set_defaults(func=_cmd_dashboard)
    sub.add_parser("models", help="list the model catalog").set_defaults(func=_cmd_models)
    sub.add_parser("hardware", help="list the accelerator catalog").set_defaults(
        func=_cmd_hardware
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    err = Console(stderr=True)
    try:
        return int(args.func(args, console))
    except pydantic.ValidationError as exc:
        err.print(_format_validation(exc), highlight=False, markup=False)
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        err.print(f"error: {message}", highlight=False, markup=False)
    return 2


if __name__ == "__main__":
    sys.exit(main())
