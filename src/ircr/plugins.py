"""Plug-in discovery: import every module of a package once, so each registers itself.

Method, model-family and output-format registries use it: adding a plug-in is adding a file
to its package (modules whose names start with ``_`` and those in ``skip`` are not imported).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_plugins(package: str, skip: Iterable[str] = ()) -> list[str]:
    """Import the modules of ``package`` (sorted by name); return their dotted names."""
    pkg = importlib.import_module(package)
    skipped = set(skip)
    names = [f"{package}.{m.name}"
             for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name)
             if not m.name.startswith("_") and m.name not in skipped]
    for name in names:
        importlib.import_module(name)
    return names
