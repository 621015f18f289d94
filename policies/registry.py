"""Registry: policies by name, with plug-ins from installed packages.

Register by decorator; duplicates are refused; a failed lookup first loads the
``servesim.policies`` entry-point group (installed packages add names there), then
lists the known names.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

ENTRY_POINT_GROUP = "servesim.policies"


class Registry(Generic[T]):
    """Names to factories for one kind of policy (batching, routing, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[S], S]:
        """Decorator adding ``factory`` (usually a class) under ``name``; returns it unchanged."""

        def add(factory: S) -> S:
            if name in self._factories:
                raise ValueError(f"{self.kind} policy {name!r} is already registered")
            self._factories[name] = factory  # type: ignore[assignment]
            return factory

        return add

    def get(self, name: str) -> T:
        if name not in self._factories and not self._plugins_loaded:
            self._plugins_loaded = True
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                ep.load()  # importing the module registers its policies
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} policy {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)
