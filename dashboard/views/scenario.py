"""Scenario page: pick a preset or example, edit every field, upload, download.

The form is generated from ``Scenario.model_json_schema()``: a new config field shows
up here without dashboard changes. Widget values are checked on every rerun; a valid
set replaces the scenario in ``dashboard.state``, an invalid one leaves it unchanged
and shows each error under its field.
"""

from __future__ import annotations

import copy
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydantic
import streamlit as st

from dashboard import forms
from dashboard.state import get_scenario, set_scenario
from simulator import Scenario
from simulator.presets import PRESETS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PREFIX = "sc."  # every widget key of this page; cleared when the scenario is replaced
MESSAGE = "servesim.scenario_page.message"  # (kind, text) from the last callback


@st.cache_data(show_spinner=False)
def example_scenarios() -> dict[str, str]:
    """Example files that are scenarios (plan and sweep files are not), name -> path."""
    found: dict[str, str] = {}
    for path in [*sorted(EXAMPLES.glob("*.yaml")), *sorted(EXAMPLES.glob("layouts/*.yaml"))]:
        try:
            Scenario.from_yaml(path)
        except (ValueError, pydantic.ValidationError):
            continue
        found[str(path.relative_to(EXAMPLES).with_suffix(""))] = str(path)
    return found


def _replace(scenario: Scenario, note: str) -> None:
    """Make ``scenario`` the one edited, and let every widget start from it anew."""
    set_scenario(scenario)
    for key in [k for k in st.session_state if str(k).startswith(PREFIX)]:
        if key not in ("sc.preset", "sc.example", "sc.upload_yaml", "sc.upload_trace"):
            del st.session_state[key]
    st.session_state["sc.preset"] = scenario.engine.preset or "none"
    st.session_state[MESSAGE] = ("success", note)


def _on_preset() -> None:
    name = st.session_state["sc.preset"]
    try:
        scenario = get_scenario().with_overrides(
            [f"engine.preset={'null' if name == 'none' else name}"])
    except pydantic.ValidationError as exc:
        st.session_state[MESSAGE] = ("error", f"preset {name!r} does not fit this scenario:\n"
                                     + forms.format_errors(exc))
        return
    _replace(scenario, f"engine preset: {name}")


def _on_example() -> None:
    name = st.session_state["sc.example"]
    path = example_scenarios().get(name)
    if path is not None:
        _replace(Scenario.from_yaml(path), f"loaded example {name}")


def _on_upload_yaml() -> None:
    upload = st.session_state.get("sc.upload_yaml")
    if upload is None:
        return
    try:
        scenario = forms.scenario_from_upload(upload.getvalue())
    except pydantic.ValidationError as exc:
        st.session_state[MESSAGE] = ("error", f"{upload.name} is not a valid scenario:\n"
                                     + forms.format_errors(exc))
        return
    except ValueError as exc:
        st.session_state[MESSAGE] = ("error", f"{upload.name}: {exc}")
        return
    _replace(scenario, f"loaded {upload.name}")


def _upload_dir() -> Path:
    if "servesim.upload_dir" not in st.session_state:
        st.session_state["servesim.upload_dir"] = tempfile.mkdtemp(prefix="servesim-traces-")
    return Path(st.session_state["servesim.upload_dir"])


def _on_upload_trace() -> None:
    upload = st.session_state.get("sc.upload_trace")
    if upload is None:
        return
    try:
        path = forms.save_trace_upload(upload.name, upload.getvalue(), _upload_dir())
        scenario = get_scenario().with_overrides([f"workload={{kind: trace, path: '{path}'}}"])
    except pydantic.ValidationError as exc:
        st.session_state[MESSAGE] = ("error", forms.format_errors(exc))
        return
    except ValueError as exc:
        st.session_state[MESSAGE] = ("error", str(exc))
        return
    _replace(scenario, f"workload: trace {upload.name}")


def _check(sections: list[forms.Section], scenario: Scenario) -> dict[str, list[str]]:
    """Read every widget, apply the changed values, return errors by field path."""
    full = scenario.model_dump(mode="json")
    # Only what the scenario set itself, so an engine preset keeps filling the rest.
    candidate: dict[str, Any] = copy.deepcopy(scenario.model_dump(mode="json",
                                                                  exclude_unset=True))
    errors: dict[str, list[str]] = defaultdict(list)
    changed = False
    paths = [spec.path for section in sections for spec in section.fields]
    for section in sections:
        for spec in section.fields:
            key = PREFIX + spec.path
            if key not in st.session_state:
                st.session_state[key] = forms.widget_value(spec, forms.get_path(full, spec.path))
            try:
                value = forms.parse_widget(spec, st.session_state[key])
            except ValueError as exc:
                errors[spec.path].append(f"{spec.path}: {exc}")
                continue
            if value != forms.get_path(full, spec.path):
                forms.set_path(candidate, spec.path, value)
                changed = True
    if changed and not errors:
        try:
            updated = Scenario.from_dict(candidate)
        except pydantic.ValidationError as exc:
            for where, message in forms.error_paths(exc, paths):
                errors[where].append(message)
        else:
            if updated != scenario:
                set_scenario(updated)
    return errors


def _widget(spec: forms.FieldSpec) -> None:
    key, label, help_text = PREFIX + spec.path, spec.label, spec.help or None
    if spec.kind == "bool":
        st.checkbox(label, key=key, help=help_text)
    elif spec.kind == "enum":
        st.selectbox(label, spec.options, key=key, help=help_text,
                     format_func=lambda v: "none" if v is None else str(v))
    elif spec.kind == "int":
        st.number_input(label, key=key, step=1, help=help_text,
                        placeholder="none" if spec.nullable else None)
    elif spec.kind == "float":
        st.number_input(label, key=key, step=None, format="%g", help=help_text,
                        placeholder="none" if spec.nullable else None)
    elif spec.kind == "text":
        st.text_input(label, key=key, help=help_text,
                      placeholder="none" if spec.nullable else None)
    else:
        st.text_area(label + " (YAML)", key=key, help=help_text,
                     height=200 if spec.path == "workload" else 80)


st.title("Scenario")
scenario = get_scenario()
if "sc.preset" not in st.session_state:
    st.session_state["sc.preset"] = scenario.engine.preset or "none"

left, middle, right = st.columns(3)
left.selectbox("Engine preset", ["none", *PRESETS], key="sc.preset", on_change=_on_preset,
               help="Fills every engine field the scenario leaves unset (docs/presets.md).")
middle.selectbox("Start from example", ["(keep current)", *example_scenarios()],
                 key="sc.example", on_change=_on_example)
right.download_button("Download scenario (YAML)", scenario.to_yaml(),
                      file_name=f"{scenario.name}.yaml", mime="application/x-yaml")

up_left, up_right = st.columns(2)
up_left.file_uploader("Upload a scenario (YAML/JSON)", type=["yaml", "yml", "json"],
                      key="sc.upload_yaml", on_change=_on_upload_yaml)
up_right.file_uploader(
    f"Upload a trace (CSV/JSONL/Parquet, at most {forms.MAX_TRACE_BYTES // 2**20} MB)",
    type=list(forms.TRACE_SUFFIXES), key="sc.upload_trace", on_change=_on_upload_trace)

message = st.session_state.pop(MESSAGE, None)
if message is not None:
    (st.error if message[0] == "error" else st.success)(message[1])

sections = forms.form_sections(frozenset({"engine.preset"}))
errors = _check(sections, scenario)
scenario = get_scenario()
if errors:
    st.warning(f"{sum(map(len, errors.values()))} invalid value(s): the scenario keeps its "
               "last valid state until they are fixed.")
for message_text in errors.get("", []):
    st.error(message_text)

tabs = st.tabs([section.name.capitalize() or "General" for section in sections])
for tab, section in zip(tabs, sections, strict=True):
    with tab:
        for message_text in errors.get(section.name, []) if section.name else []:
            if section.name not in {spec.path for spec in section.fields}:
                st.error(message_text)
        for spec in section.fields:
            _widget(spec)
            for message_text in errors.get(spec.path, []):
                st.error(message_text)
