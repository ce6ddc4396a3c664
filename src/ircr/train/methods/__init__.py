"""Training methods (supervised, mean_teacher, self_training, ircr, plug-ins) and their registry.

A method module defines a :class:`~ircr.train.methods.base.Method` subclass decorated with
``@register_method("name")``; its typed options are the dataclass ``options_type``. Every module
of this package is a built-in method and is imported on the first look-up
(:mod:`ircr.train.registry`), so adding one is adding a file: nothing here or in another
method changes. Methods defined elsewhere (a plug-in module, a test) register themselves when
their module is imported.
"""

from __future__ import annotations

from typing import cast

from ircr.train.loaders import ExtraLabelled
from ircr.train.methods.base import Method, NoOptions, SubRun, TrainerAPI, map_to_view
from ircr.train.registry import METHODS, known_methods, lookup, register_method

__all__ = [
    "METHODS",
    "ExtraLabelled",
    "Method",
    "NoOptions",
    "SubRun",
    "TrainerAPI",
    "get_method",
    "known_methods",
    "map_to_view",
    "register_method",
]


def get_method(name: str, where: str = "config") -> type[Method]:
    """Return the method class registered as ``name`` (built-ins are imported on demand)."""
    return cast(type[Method], lookup(name, where))
