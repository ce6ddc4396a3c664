"""BYOL objective with a dense (pixel-level) term, for pretraining encoders of dense tasks.

Image level (BYOL, Grill et al. 2020): the online network's prediction of view A should have
the direction of the target network's projection of view B, ``2 - 2 cos(p_A, z_B)``,
symmetrised. Dense level (pixel-level BYOL in the spirit of PixPro / DenseCL): the same loss
per feature cell, between the online dense prediction at a cell of view A and the target
dense projection at the *same tissue location* in view B (the exact geometric
correspondence of :func:`ircr.ssl.views.correspondence`, bilinear), averaged over the cells
that lie inside both views. No negatives, so batches of a few tiles work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["byol_loss", "dense_byol_loss", "cosine_ramp"]


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """Mean of ``2 - 2 cos(p_i, z_i)``; p, z: (N, D); z is treated as a constant."""
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def dense_byol_loss(p: Tensor, z: Tensor, grid: Tensor, valid: Tensor) -> Tensor:
    """Dense BYOL loss of view A's predictions against view B's projections.

    Args:
        p: (N, D, h, w) online dense predictions of view A.
        z: (N, D, h', w') target dense projections of view B (constant).
        grid: (N, h, w, 2) position of each cell of A in B (normalised, ``align_corners=False``).
        valid: (N, h, w) bool, cells of A that lie inside B.

    Returns:
        scalar: mean of ``2 - 2 cos`` over valid cells (0 when none is valid).
    """
    zb = F.grid_sample(z.detach().float(), grid.to(torch.float32), mode="bilinear",
                       padding_mode="border", align_corners=False)
    cos = (F.normalize(p.float(), dim=1) * F.normalize(zb, dim=1)).sum(dim=1)
    m = valid.to(cos.dtype)
    return ((2 - 2 * cos) * m).sum() / m.sum().clamp_min(1.0)


def cosine_ramp(start: float, end: float, step: int, total: int) -> float:
    """``end - (end - start) (cos(pi step / total) + 1) / 2``: start at 0, end at ``total``."""
    t = min(max(step, 0), max(total, 1)) / max(total, 1)
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2
