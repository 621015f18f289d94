"""Registry: policies by name, with their parameter models, and plug-ins from installed
packages.

Register by decorator; duplicates are refused; a failed lookup first loads the
``servesim.policies`` entry-point group (installed packages add names there), then
lists the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from simulator.plan import EngineLimits, PolicyParams

T = TypeVar("T", covariant=True)
C = TypeVar("C")

ENTRY_POINT_GROUP = "servesim.policies"


class PolicyFactory(Protocol[T]):
    """A policy class: builds itself from its parameters and the engine's limits."""

    def from_config(self, params: Any, limits: EngineLimits, rng: np.random.Generator) -> T: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    factory: Any
    params: type[PolicyParams]


class Registry(Generic[T]):
    """Names to policy classes (and their parameter models) for one kind of policy."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}
        self._plugins_loaded = False

    def register(
        self, name: str, params: type[PolicyParams] = PolicyParams
    ) -> Callable[[C], C]:
        """Class decorator: add the policy under ``name``; ``params`` validates what a
        scenario may set for it. Returns the class unchanged."""

        def add(cls: C) -> C:
            if name in self._entries:
                raise ValueError(f"{self.kind} policy {name!r} is already registered")
            self._entries[name] = _Entry(cls, params)
            return cls

        return add

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries and not self._plugins_loaded:
            self._plugins_loaded = True
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                ep.load()  # importing the module registers its policies
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} policy {name!r}; known: {known}") from None

    def get(self, name: str) -> PolicyFactory[T]:
        """The class registered under ``name``."""
        factory: PolicyFactory[T] = self._entry(name).factory
        return factory

    def parse(self, value: object) -> PolicyParams:
        """Validate a scenario's value: a name, or a mapping with ``kind`` and the
        policy's parameters. Raises ValueError naming the unknown kind or bad field."""
        if isinstance(value, PolicyParams):
            return value
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
            raise ValueError(
                f"a {self.kind} policy is a name or a mapping with 'kind', got {value!r}"
            )
        try:
            entry = self._entry(value["kind"])
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return entry.params.model_validate(dict(value))

    def build(self, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator) -> T:
        """A fresh policy instance for one replica (or one router); ``rng`` is its own
        random stream, spawned from the scenario's seed."""
        return self.get(params.kind).from_config(params, limits, rng)

    def names(self) -> list[str]:
        return sorted(self._entries)
