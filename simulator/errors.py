"""Errors the public API raises."""

from __future__ import annotations


class ScenarioError(ValueError):
    """A scenario that validates field by field but cannot run as a whole."""
