"""Registry of training methods (supervised, mean_teacher, self_training, ircr).

A method module defines a :class:`~ircr.train.methods.base.Method` subclass decorated with
``@register_method("name")``. Built-in methods live in ``ircr.train.methods.<name>`` and are
imported on first use, so adding one needs no change here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ircr.errors import IrcrError
from ircr.train.methods.base import ExtraLabelled, Method, map_to_view

METHODS: dict[str, type[Method]] = {}
BUILTIN = ("supervised", "mean_teacher", "self_training", "ircr")

__all__ = [
    "BUILTIN",
    "METHODS",
    "ExtraLabelled",
    "Method",
    "get_method",
    "map_to_view",
    "register_method",
]


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str, where: str = "config") -> type[Method]:
    """Return the method class registered as ``name`` (imports built-ins on demand)."""
    if name not in METHODS and name in BUILTIN:
        importlib.import_module(f"ircr.train.methods.{name}")
    if name not in METHODS:
        known = ", ".join(sorted(set(METHODS) | set(BUILTIN)))
        raise IrcrError(f"{where}: unknown method '{name}' (known: {known})")
    return METHODS[name]
