"""The method registry: name -> method class, below the config and the method contract.

``register_method`` records a class; built-ins (every module of :mod:`ircr.train.methods`) are
imported on the first look-up by name (``pkgutil``), so adding one is adding a file. The
config (:mod:`ircr.train.config`) asks it for the options dataclass of the named method; the
contract (:class:`ircr.train.methods.base.Method`) lives above the config and is not imported
here (classes are only required to carry ``options_type``, a dataclass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from ircr.errors import IrcrError
from ircr.plugins import import_plugins

METHODS: dict[str, Any] = {}
C = TypeVar("C", bound=type)
_BUILTIN_PACKAGE = "ircr.train.methods"
_discovered = False


def register_method(name: str) -> Callable[[C], C]:
    """Class decorator: register a method class (with a dataclass ``options_type``) as ``name``."""

    def deco(cls: C) -> C:
        if not dataclasses.is_dataclass(getattr(cls, "options_type", None)):
            raise TypeError(f"method {name!r}: options_type must be a dataclass")
        cls.name = name  # type: ignore[attr-defined]
        METHODS[name] = cls
        return cls

    return deco


def _discover() -> None:
    """Import every module of the built-in methods package once (each registers itself)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import_plugins(_BUILTIN_PACKAGE, skip=("base",))


def known_methods() -> list[str]:
    """Names of every registered method (built-ins included), sorted."""
    _discover()
    return sorted(METHODS)


def lookup(name: str, where: str = "config") -> Any:
    """The class registered as ``name`` (built-ins imported on demand); IrcrError if none."""
    if name not in METHODS:
        _discover()
    if name not in METHODS:
        raise IrcrError(f"{where}: config key 'method.name' must be one of "
                        f"{', '.join(known_methods())}, got {name!r}")
    return METHODS[name]


def options_type(name: str, where: str = "config") -> type[Any]:
    """The options dataclass of method ``name``."""
    return lookup(name, where).options_type  # type: ignore[no-any-return]
