"""Objects kept per network (its wrappers, its compiled runner) that go when the network goes.

A ``weakref.WeakKeyDictionary`` does not do this when its values hold their key, as a wrapper
module holds the network it wraps and a compiled runner its model: the dictionary keeps the
value and the value keeps the key, so every network ever wrapped stayed in memory for the
life of the process. Here the cache lives in the network's own ``__dict__`` (set directly, not
through ``nn.Module.__setattr__``: no submodule, no ``state_dict`` key, not moved by ``.to``),
so the network, its cache and its wrappers form one reference cycle that Python's garbage
collector frees once nothing else holds the network.

A deep copy or a pickle of a network starts with an empty cache; a shallow copy
(``copy.copy``), which shares the original's ``__dict__`` values, sees that the cache belongs
to another module and starts its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import nn

ATTR = "_ircr_cache"
T = TypeVar("T")


class _Cache(dict[Hashable, Any]):
    """The per-module mapping; remembers (weakly) which module it belongs to."""

    def __init__(self, owner: nn.Module | None = None) -> None:
        super().__init__()
        self.owner = weakref.ref(owner) if owner is not None else None

    def belongs_to(self, module: nn.Module) -> bool:
        return self.owner is not None and self.owner() is module

    def __deepcopy__(self, memo: dict[int, Any]) -> _Cache:
        return _Cache()  # a copy's wrappers must wrap the copy: start empty

    def __reduce__(self) -> tuple[type[_Cache], tuple[()]]:
        return _Cache, ()


def cached(module: nn.Module, key: Hashable, make: Callable[[], T]) -> T:
    """``module``'s object under ``key``, made by ``make()`` at the first call.

    Kept as long as ``module`` lives and freed with it (see the module docstring)."""
    cache = module.__dict__.get(ATTR)
    if not isinstance(cache, _Cache) or not cache.belongs_to(module):
        cache = _Cache(module)
        module.__dict__[ATTR] = cache
    if key not in cache:
        cache[key] = make()
    value: T = cache[key]
    return value
