"""Built-in accelerator catalog: ``catalog.yaml`` shipped as package data, validated once.

Figures and their sources live in the YAML; ``docs/hardware.md`` tabulates them and shows how
a scenario overrides one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

import yaml
from pydantic import ValidationError

from hardware.spec import AcceleratorSpec

CATALOG_FILE = "catalog.yaml"


@functools.lru_cache(maxsize=1)
def _catalog() -> Mapping[str, AcceleratorSpec]:
    # Read-only view: the cache is shared by every caller in the process.
    text = resources.files("hardware").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{CATALOG_FILE}: expected a mapping of name -> spec, got {type(raw)}")
    specs: dict[str, AcceleratorSpec] = {}
    for name, fields in raw.items():
        if not isinstance(name, str) or name != name.lower():
            raise ValueError(f"{CATALOG_FILE}: entry name {name!r} must be a lower-case string")
        if not isinstance(fields, dict) or fields.get("name", name) != name:
            raise ValueError(f"{CATALOG_FILE}: entry {name!r} must be a mapping whose name matches")
        try:
            specs[name] = AcceleratorSpec.model_validate({**fields, "name": name})
        except ValidationError as err:
            raise ValueError(f"{CATALOG_FILE}: entry {name!r} is invalid:\n{err}") from err
    return MappingProxyType(specs)


def load_catalog() -> dict[str, AcceleratorSpec]:
    """Return every built-in accelerator, keyed by lower-case catalog name.

    The YAML is read and validated on the first call only. The dict is a fresh copy the
    caller may change; the specs in it are frozen and shared.
    Raises ``ValueError`` naming the entry if the shipped catalog is malformed.
    """
    return dict(_catalog())


def list_accelerators() -> list[str]:
    """Return the catalog names, sorted. Does not modify the catalog."""
    return sorted(_catalog())


def get_accelerator(name: str) -> AcceleratorSpec:
    """Return the spec for ``name`` (case-insensitive, surrounding spaces ignored).

    Raises ``KeyError`` listing the known names when ``name`` is not in the catalog.
    """
    catalog = _catalog()
    spec = catalog.get(name.strip().lower())
    if spec is None:
        known = ", ".join(sorted(catalog))
        raise KeyError(f"unknown accelerator {name!r}; known: {known}")
    return spec
