"""When the consistency terms switch on: supervised warm-up, then a sigmoid ramp-up.

From scratch (no ImageNet weights) the EMA teacher is evaluated with BatchNorm running
statistics that are still at their initial values (mean 0, variance 1). Through the 50 layers
of the paper's network its outputs then reach 1e3-1e4 and the first consistency terms 1e5-1e6
(measured: docs/method.md), which inflates Adam's second-moment estimates and stalls the
student for ~1,000 iterations. The defaults therefore hold the unsupervised weight at 0 for
``warmup`` iterations (the teacher keeps tracking the student by EMA, so its BN statistics
converge) and then raise it with the sigmoid ramp-up of Tarvainen & Valpola (2017),
``exp(-5 (1 - t)^2)``, over ``rampup`` iterations. ``warmup = rampup = 0`` is the paper's
behaviour (full weight from the first iteration).
"""

from __future__ import annotations

import math


def consistency_weight(iteration: int, warmup: int = 0, rampup: int = 0) -> float:
    """Multiplier in [0, 1] of the unsupervised terms at a 0-based optimiser ``iteration``.

    Args:
        iteration: optimiser steps done before this one (``trainer.iteration``).
        warmup: iterations with weight exactly 0 (supervised only).
        rampup: iterations of the sigmoid ramp ``exp(-5 (1 - t)^2)``, ``t`` = progress in
            [0, 1) after the warm-up; weight 1 afterwards.

    Returns:
        0.0 during the warm-up, the ramp value during the ramp-up, else 1.0.
    """
    if warmup < 0 or rampup < 0:
        raise ValueError(f"warmup and rampup must be >= 0, got {warmup}, {rampup}")
    k = iteration - warmup
    if k < 0:
        return 0.0
    if k >= rampup:
        return 1.0
    t = k / rampup
    return math.exp(-5.0 * (1.0 - t) ** 2)
