"""The ``servesim`` command: run scenarios, list catalogs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
