"""Activation checkpointing of network units that is exact with BatchNorm.

A checkpointed unit keeps only its input during the forward pass and runs its forward again
during the backward pass to rebuild the activations it needs. Plain
``torch.utils.checkpoint`` would run every BatchNorm of the unit twice in training mode and so
update the running statistics twice; here the recomputation leaves them unchanged (it still
normalises with the same batch statistics, so outputs and gradients equal the unchecked
network's, and the BN buffers see exactly one update per forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ircr import compat


@contextlib.contextmanager
def _no_running_stats(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorms of ``module`` leave their buffers as they were.

    Momentum 0 makes the running-statistics update ``1 * running + 0 * batch`` (bit-exact);
    the batch counter is put back afterwards. The ops run (and save tensors) as in the first
    forward, which the checkpoint's recomputation check requires.
    """
    bns: list[Any] = [m for m in module.modules() if compat.is_batchnorm(m)]
    changed = [m for m in bns
               if m.training and m.track_running_stats and m.momentum is not None]
    saved = [(m.momentum, None if m.num_batches_tracked is None
              else m.num_batches_tracked.clone()) for m in changed]
    for m in changed:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(changed, saved):
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(count)


def run_unit(unit: nn.Module, *args: Tensor) -> Any:
    """``unit(*args)``, checkpointed when ``unit.checkpoint`` is set, it trains and grad is on."""
    if not (getattr(unit, "checkpoint", False) and unit.training and torch.is_grad_enabled()):
        return unit(*args)

    def contexts() -> tuple[contextlib.AbstractContextManager[None],
                            contextlib.AbstractContextManager[None]]:
        return contextlib.nullcontext(), _no_running_stats(unit)

    return checkpoint(unit, *args, use_reentrant=False, context_fn=contexts)


def set_checkpointing(model: nn.Module, enabled: bool, kinds: tuple[type, ...]) -> int:
    """Set ``checkpoint`` on every submodule of one of ``kinds``; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, kinds):
            setattr(m, "checkpoint", bool(enabled))  # noqa: B010 - plain flag, not a Module
            n += 1
    return n
