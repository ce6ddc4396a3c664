"""Progressive self-training: how many unlabelled patches get pseudo-labels, and which.

The IRCR-Net paper describes its ST baseline as a model that "first trains the model using
the ground truth labels and progressively replaces the original labels with their own
pseudo-labels during training" (docs/method.md, "Self-training"). ``self_training`` with
``mode: progressive`` reads this as (all decided here, hand-checkable):

* **schedule** (:func:`replaced_fraction`): with T the run's iterations, the fraction of each
  unlabelled batch that is trained on pseudo-labels is 0 before ``start * T`` (ground truth
  only), rises linearly to ``final`` at ``end * T`` and stays there;
* **count** (:func:`replaced_count`): ``floor(fraction * N + 1e-9)`` of the N patches of the
  batch;
* **which** (:func:`patch_confidence`, :func:`most_confident`): the patches whose
  pseudo-labelling model is most certain, certainty = the mean over valid pixels of
  ``max(p, 1 - p)`` of its NP foreground probability p; ties keep the batch order;
* **targets** (:func:`pseudo_targets`): WBIS instances of that model's prediction on the weak
  view, turned into NP / HV targets exactly as ground truth is (``hover_targets``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ircr.data.targets import hover_targets
from ircr.postproc.batch import wbis_batch
from ircr.postproc.watershed import WBISParams


def replaced_fraction(iteration: int, total: int, start: float, end: float,
                      final: float) -> float:
    """Fraction in [0, final] of an unlabelled batch trained on pseudo-labels.

    Args:
        iteration: optimiser steps done before this one (0-based).
        total: iterations of the run (T > 0).
        start, end: fractions of T where the ramp starts and ends (0 <= start <= end <= 1).
        final: the fraction reached at ``end * T``.

    Returns:
        0 before ``start * T``; ``final * (i - start T) / ((end - start) T)`` on the ramp;
        ``final`` from ``end * T`` on (also when ``start == end``).
    """
    if total <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    t0, t1 = start * total, end * total
    if iteration < t0:
        return 0.0
    if iteration >= t1:
        return float(final)
    return float(final) * (iteration - t0) / (t1 - t0)


def replaced_count(fraction: float, n: int) -> int:
    """Patches of a batch of ``n`` that get pseudo-labels: ``floor(fraction * n)``."""
    return min(n, max(0, math.floor(fraction * n + 1e-9)))


def patch_confidence(prob: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels of max(p, 1 - p): (N, H, W) float, (N, H, W) bool -> (N,).

    A patch without a valid pixel gets 0.
    """
    certainty = torch.maximum(prob, 1.0 - prob).float() * valid.float()
    n_valid = valid.float().sum(dim=(1, 2))
    return certainty.sum(dim=(1, 2)) / n_valid.clamp_min(1.0)


def most_confident(confidence: Tensor, k: int) -> list[int]:
    """Batch positions of the ``k`` largest confidences, in batch order (stable on ties)."""
    if k <= 0:
        return []
    order = torch.sort(confidence.detach().cpu(), descending=True, stable=True).indices
    return sorted(int(i) for i in order[:k])


def pseudo_targets(prob: np.ndarray, hv: np.ndarray, params: WBISParams
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """NP / HV targets from a model's prediction, as ground truth would give them.

    Args:
        prob: (K, H, W) float32 NP foreground probability.
        hv: (K, 2, H, W) float32 HV maps.
        params: WBIS parameters (the run's ``postproc``).

    Returns:
        ``np`` (K, H, W) int64 in {0, 1}, ``hv`` (K, 2, H, W) float32 in [-1, 1] and the K
        (H, W) int32 WBIS instance maps they were computed from.
    """
    inst = [np.asarray(m, dtype=np.int32) for m in wbis_batch(prob, hv, params, workers=0)]
    nps, hvs = [], []
    for m in inst:
        np_t, hv_t = hover_targets(m)
        nps.append(np_t.astype(np.int64))
        hvs.append(hv_t)
    h, w = prob.shape[1:]
    if not inst:
        return np.zeros((0, h, w), np.int64), np.zeros((0, 2, h, w), np.float32), []
    return np.stack(nps), np.stack(hvs), inst
