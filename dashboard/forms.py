"""Scenario forms generated from ``Scenario.model_json_schema()``, and upload handling.

Pure functions (no streamlit): what widget a schema field gets, how widget values
become a scenario mapping, how validation errors map to fields, and how an uploaded
trace is stored and checked. The Scenario page draws the widgets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pydantic
import yaml

from simulator import Scenario
from workloads import TraceWorkload, read_trace

WidgetKind = Literal["int", "float", "enum", "bool", "text", "yaml"]
TRACE_SUFFIXES = ("csv", "jsonl", "ndjson", "parquet")
MAX_TRACE_BYTES = 50 * 1024 * 1024


class FieldSpec(NamedTuple):
    """One editable field: its dotted path, widget kind and what the schema says of it."""

    path: str  # dotted, e.g. "engine.max_num_seqs"
    label: str
    kind: WidgetKind
    nullable: bool  # None is a valid value (an empty widget means None)
    options: tuple[Any, ...]  # enum values; empty unless kind == "enum"
    help: str


class Section(NamedTuple):
    """A tab of the form: a top-level object of the scenario, or the top-level scalars."""

    name: str  # "" for the top-level scalars
    fields: list[FieldSpec]


def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: dict[str, Any] = root["$defs"][ref.rsplit("/", 1)[-1]]
        return target
    return schema


def _field(path: str, name: str, schema: dict[str, Any], root: dict[str, Any]) -> FieldSpec:
    """The widget for one field: scalars get typed inputs, everything else YAML."""
    help_text = str(schema.get("description", ""))
    options = schema.get("anyOf")
    nullable = False
    inner = _deref(schema, root)
    if isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        nullable = len(rest) < len(options)
        inner = _deref(rest[0], root) if len(rest) == 1 else {}
    kind: WidgetKind = "yaml"
    values: tuple[Any, ...] = ()
    if "enum" in inner:
        kind, values = "enum", tuple(inner["enum"])
    elif inner.get("type") == "boolean":
        kind = "bool"
    elif inner.get("type") == "integer":
        kind = "int"
    elif inner.get("type") == "number":
        kind = "float"
    elif inner.get("type") == "string":
        kind = "text"
    if kind == "enum" and nullable:
        values = (None, *values)
    return FieldSpec(path, name, kind, nullable, values, help_text)


def form_sections(skip: frozenset[str] = frozenset()) -> list[Section]:
    """Tabs generated from the scenario's JSON schema: one per object section, plus one
    for the top-level scalars. Unions (workload, model, policies) are one YAML field.
    ``skip`` leaves out dotted paths drawn elsewhere (e.g. ``engine.preset``)."""
    root = Scenario.model_json_schema()
    top: list[FieldSpec] = []
    sections: list[Section] = []
    for name, prop in root["properties"].items():
        target = _deref(prop, root)
        if "$ref" in prop and target.get("type") == "object" and "properties" in target:
            fields = [_field(f"{name}.{sub}", sub, schema, root)
                      for sub, schema in target["properties"].items()
                      if f"{name}.{sub}" not in skip]
            sections.append(Section(name, fields))
        elif "oneOf" in prop or "discriminator" in prop:
            sections.append(Section(name, [_field(name, name, prop, root)]))
        elif name not in skip:
            top.append(_field(name, name, prop, root))
    return [Section("", top), *sections]


def get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def to_yaml_text(value: Any) -> str:
    """A value as the text a YAML field shows (a bare name stays a bare name)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).strip().removesuffix(
        "..."
    ).strip()


def parse_widget(spec: FieldSpec, raw: Any) -> Any:
    """A widget's value as scenario data; raises ValueError for YAML that does not parse."""
    if spec.kind == "yaml":
        try:
            return yaml.safe_load(str(raw)) if str(raw).strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML: {exc}") from None
    if spec.kind == "text" and spec.nullable and raw == "":
        return None
    return raw


def widget_value(spec: FieldSpec, value: Any) -> Any:
    """The initial widget value for scenario data ``value`` (inverse of parse_widget)."""
    if spec.kind == "yaml":
        return to_yaml_text(value)
    if spec.kind == "text":
        return "" if value is None else str(value)
    if spec.kind == "float" and value is not None:
        return float(value)
    return value


def error_paths(exc: pydantic.ValidationError, paths: list[str]) -> Iterator[tuple[str, str]]:
    """(field path, message) per error: the longest field path that prefixes the error's
    ``loc``, else its section (the loc's first part), else "" (the whole scenario)."""
    known = set(paths)
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        where = ""
        for n in range(len(loc), 0, -1):
            candidate = ".".join(loc[:n])
            if candidate in known:
                where = candidate
                break
        else:
            where = loc[0] if loc else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        yield where, f"{'.'.join(loc) or 'scenario'}: {message}"


def format_errors(exc: pydantic.ValidationError) -> str:
    """Every error of ``exc`` on its own line, as ``dotted.loc: message``."""
    return "\n".join(f"- {msg}" for _, msg in error_paths(exc, []))


def save_trace_upload(name: str, data: bytes, directory: Path,
                      max_bytes: int = MAX_TRACE_BYTES) -> Path:
    """Store an uploaded trace in ``directory`` and check it reads as a trace.

    Raises ValueError with the reader's message for a file too large, of an unknown
    suffix, or that does not parse (garbage bytes, missing columns)."""
    if len(data) > max_bytes:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MiB; the limit is "
                         f"{max_bytes / 2**20:.0f} MiB")
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in TRACE_SUFFIXES:
        raise ValueError(f"{name}: a trace must be one of .{', .'.join(TRACE_SUFFIXES)}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / Path(name).name
    path.write_bytes(data)
    try:
        read_trace(TraceWorkload(path=path))
    except (ValueError, pydantic.ValidationError, OSError) as exc:
        path.unlink(missing_ok=True)
        raise ValueError(f"{name} is not a usable trace: {exc}") from None
    return path


def scenario_from_upload(data: bytes) -> Scenario:
    """A scenario from uploaded YAML/JSON bytes; ValueError or ValidationError if bad."""
    try:
        mapping = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"not a YAML/JSON file: {exc}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"a scenario file holds a mapping of fields, got "
                         f"{type(mapping).__name__}")
    return Scenario.from_dict(mapping)
