"""Per-network caches (wrappers, compiled runners) are freed with the network.

Before ``ircr.inference.module_cache`` they lived in ``WeakKeyDictionary`` objects whose values
held their keys, so every network ever wrapped or compiled stayed in memory for the life of the
process (checked here: the network is collected after ``del``).
"""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import nn

from ircr.inference.compiled import compiled
from ircr.inference.families.cdcl import semantic_only
from ircr.inference.families.pgfanet import _wrapped as pgfanet_wrapped
from ircr.inference.module_cache import ATTR, cached
from ircr.inference.tta import flip_averaged

WRAPPERS: dict[str, Callable[[nn.Module], object]] = {
    "compiled": compiled,
    "tta": lambda net: flip_averaged(net, "flips"),
    "cdcl": semantic_only,
    "pgfanet": pgfanet_wrapped,
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_is_reused_and_freed_with_its_network(name: str) -> None:
    wrap = WRAPPERS[name]
    net = nn.Conv2d(3, 2, 1)
    first = wrap(net)
    assert wrap(net) is first
    assert set(net.state_dict()) == {"weight", "bias"}  # the cache is no submodule
    alive = weakref.ref(net)
    del net, first
    gc.collect()
    assert alive() is None


def test_copies_get_their_own_wrappers() -> None:
    net = nn.Conv2d(3, 2, 1)
    wrapper = flip_averaged(net, "flips")
    deep = copy.deepcopy(net)
    assert flip_averaged(deep, "flips").net is deep
    shallow = copy.copy(net)
    assert flip_averaged(shallow, "flips").net is shallow
    assert flip_averaged(net, "flips") is wrapper
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deep(x), net(x))


def test_cached_makes_once_per_key() -> None:
    net = nn.Identity()
    made: list[int] = []

    def make(value: int) -> Callable[[], int]:
        return lambda: made.append(value) or value

    assert cached(net, "a", make(1)) == 1
    assert cached(net, "a", make(2)) == 1
    assert cached(net, "b", make(3)) == 3
    assert made == [1, 3]
    assert ATTR in net.__dict__ and ATTR not in dict(net.named_modules())
