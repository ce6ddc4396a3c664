"""Registry of training methods (supervised, mean_teacher, self_training, ircr, plug-ins).

A method module defines a :class:`~ircr.train.methods.base.Method` subclass decorated with
``@register_method("name")``; its typed options are the dataclass ``options_type``. Every module
of this package is a built-in method and is imported on the first look-up (``pkgutil``), so
adding one is adding a file: nothing here or in another method changes. Methods defined
elsewhere (a plug-in module, a test) register themselves when their module is imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from ircr.errors import IrcrError
from ircr.train.methods.base import ExtraLabelled, Method, NoOptions, TrainerAPI, map_to_view

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])

__all__ = [
    "METHODS",
    "ExtraLabelled",
    "Method",
    "NoOptions",
    "TrainerAPI",
    "get_method",
    "known_methods",
    "map_to_view",
    "register_method",
]

_discovered = False


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: M) -> M:
        if not dataclasses.is_dataclass(cls.options_type):
            raise TypeError(f"method {name!r}: options_type must be a dataclass")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def _discover() -> None:
    """Import every module of this package once (each registers its built-in method)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def known_methods() -> list[str]:
    """Names of every registered method (built-ins included), sorted."""
    _discover()
    return sorted(METHODS)


def get_method(name: str, where: str = "config") -> type[Method]:
    """Return the method class registered as ``name`` (built-ins are imported on demand)."""
    if name not in METHODS:
        _discover()
    if name not in METHODS:
        raise IrcrError(f"{where}: config key 'method.name' must be one of "
                        f"{', '.join(known_methods())}, got {name!r}")
    return METHODS[name]
