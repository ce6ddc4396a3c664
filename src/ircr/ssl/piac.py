"""PIAC: prior-driven instance-aware consistency (spec §3 "Mask and loss", paper Eq. 6-7).

Every teacher instance of the weak view is scored by the morphological prior (features from
the weak-view image); instances touching the patch border are not scored and always kept.
``U = 0`` inside instances scoring below τ and ``U = w`` everywhere else (background
included). ``L_PIAC = (1/B) Σ_images mean_{pixels, channels} ((F_s - F_t) · U)^2`` with
``F = concat(NP probability, HV)`` (3 channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ircr.errors import IrcrError
from ircr.features import nucleus_features
from ircr.ssl.prior import MorphPrior, prior_keeps


@dataclass
class PiacMasks:
    """U masks of a batch plus per-image diagnostics.

    Attributes:
        u: (B, H, W) float32 mask (0 inside rejected instances, w elsewhere).
        n_instances: (B,) int64 teacher instances per image.
        n_scored: (B,) int64 instances scored (not touching the patch border).
        n_rejected: (B,) int64 instances scoring below τ.
    """

    u: np.ndarray
    n_instances: np.ndarray
    n_scored: np.ndarray
    n_rejected: np.ndarray

    @property
    def rejected_fraction(self) -> np.ndarray:
        """(B,) float64 rejected / scored instances per image (0 when nothing was scored)."""
        return np.where(self.n_scored > 0, self.n_rejected / np.maximum(self.n_scored, 1), 0.0)


def rejected_ids(image: np.ndarray, inst: np.ndarray, prior: MorphPrior, tau: float,
                 combine: str | None = None) -> tuple[np.ndarray, int, int]:
    """Ids of the instances the prior rejects (score < τ, border-touching never rejected).

    Returns (rejected ids (r,) int64, number of instances, number scored).
    """
    f = nucleus_features(image, inst)
    scored = ~f["touches_border"]
    if not scored.any():
        return np.zeros(0, np.int64), int(f["id"].size), 0
    scores = np.full(f["id"].size, np.nan)
    scores[scored] = prior.score_features({k: v[scored] for k, v in f.items()}, combine)
    keep = prior_keeps(scores, f["touches_border"], tau)
    return f["id"][~keep], int(f["id"].size), int(scored.sum())


def u_mask(image: np.ndarray, inst: np.ndarray, prior: MorphPrior, tau: float,
           w: float = 2.0, combine: str | None = None) -> np.ndarray:
    """U mask (H, W) float32 of one weak-view image (H, W, 3) uint8 and teacher map (H, W)."""
    bad, _, _ = rejected_ids(image, inst, prior, tau, combine)
    u = np.full(np.shape(inst), float(w), dtype=np.float32)
    if bad.size:
        u[np.isin(inst, bad)] = 0.0
    return u


def u_mask_batch(images: np.ndarray, insts: np.ndarray, prior: MorphPrior, tau: float,
                 w: float = 2.0, combine: str | None = None) -> PiacMasks:
    """U masks of a batch: images (B, H, W, 3) uint8, insts (B, H, W) int -> :class:`PiacMasks`."""
    images, insts = np.asarray(images), np.asarray(insts)
    if images.ndim != 4 or insts.ndim != 3 or images.shape[:3] != insts.shape:
        raise IrcrError(f"piac: expected images (B, H, W, 3) and instance maps (B, H, W), got "
                        f"{images.shape} and {insts.shape}")
    b = insts.shape[0]
    u = np.empty(insts.shape, dtype=np.float32)
    counts = np.zeros((3, b), dtype=np.int64)
    for i in range(b):
        bad, n, scored = rejected_ids(images[i], insts[i], prior, tau, combine)
        u[i] = w
        if bad.size:
            u[i][np.isin(insts[i], bad)] = 0.0
        counts[:, i] = (n, scored, bad.size)
    return PiacMasks(u, counts[0], counts[1], counts[2])


def piac_loss(f_s: torch.Tensor, f_t: torch.Tensor, u: torch.Tensor | np.ndarray) -> torch.Tensor:
    """L_PIAC = (1/B) Σ_b mean_{c, y, x} ((F_s - F_t) · U)^2.

    Args:
        f_s: (B, C, H, W) student features (NP probability + HV), with gradient.
        f_t: (B, C, H, W) teacher features (no gradient needed).
        u: (B, H, W) mask (tensor or numpy), moved to ``f_s``'s device and dtype.

    Returns:
        scalar tensor (0 for an empty batch).
    """
    if f_s.shape != f_t.shape or f_s.ndim != 4:
        raise IrcrError(f"piac: F_s {tuple(f_s.shape)} and F_t {tuple(f_t.shape)} must be the "
                        "same (B, C, H, W)")
    ut = torch.as_tensor(u, device=f_s.device, dtype=f_s.dtype)
    if tuple(ut.shape) != (f_s.shape[0], *f_s.shape[2:]):
        raise IrcrError(f"piac: U {tuple(ut.shape)} does not match F (B, H, W) = "
                        f"{(f_s.shape[0], *f_s.shape[2:])}")
    if f_s.shape[0] == 0:
        return f_s.sum() * 0.0
    diff = (f_s - f_t) * ut.unsqueeze(1)
    return diff.pow(2).flatten(1).mean(dim=1).mean()
