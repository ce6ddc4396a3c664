"""Learning-rate schedules of the trainer and the keys that fix where a run ends.

* :func:`lr_at_epoch`: ``train.lr_schedule: step`` (per epoch).
* :func:`poly_lr`: ``train.lr_schedule: poly`` (per iteration, linear warm-up then poly decay).
* :func:`finished_schedule`: the config keys that say where training ends, compared on resume
  to recognise a finished run.
"""

from __future__ import annotations

from typing import Any


def lr_at_epoch(base: float, steps: list[int], gamma: float, epoch: int) -> float:
    """Step schedule: ``base * gamma ** #(steps <= epoch)`` (epoch is 0-based)."""
    return base * gamma ** sum(1 for s in steps if epoch >= s)


def poly_lr(base: float, iteration: int, total: int, warmup: float, power: float) -> float:
    """``train.lr_schedule: poly`` at 0-based ``iteration`` of ``total``: linear warm-up
    ``base·(i+1)/W`` for i < W = floor(warmup·total), then ``base·(1 − i/total)^power``."""
    w = int(warmup * total)
    if iteration < w:
        return base * (iteration + 1) / w
    return base * max(0.0, 1.0 - iteration / max(total, 1)) ** power


def finished_schedule(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config that fix where training ends (to recognise a finished run)."""
    train = config.get("train") or {}
    return {k: train.get(k) for k in ("epochs", "iterations_per_epoch", "max_iterations")}
