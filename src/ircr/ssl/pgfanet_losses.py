"""PG-FANet's loss terms (reference-algorithms.md §8.3; Jin et al., ESWA 2024), pure functions.

* :func:`three_class_targets`: instance map -> background 0 / interior 1 / boundary 2.
* :func:`ce_dice`: cross-entropy + soft Dice (smooth 1) of 3-class logits on valid pixels.
* :func:`variance_loss`: mean over the ground-truth instances of the summed per-class variance
  of the softmax probabilities inside each instance (instances = connected components of the
  interior class, :func:`interior_components`).
* :func:`uncertainty_consistency`: the inter/intra-uncertainty consistency of the student's
  final and stage-1 predictions against the EMA teacher's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from ircr.errors import IrcrError

EPS_LOG = 1e-12  # the released code's log epsilon (teacher uncertainty, shape entropy)
EPS_ENTROPY = 1e-6  # its entropy_loss epsilon


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dy or dx) and dy * dy + dx * dx <= r * r]


def three_class_targets(inst: Tensor, boundary_width: int = 2) -> Tensor:
    """Background 0, interior 1, boundary 2 from an instance map.

    A nucleus pixel is *boundary* when a pixel of another label (background or another
    nucleus) lies within ``boundary_width`` px (Euclidean disk); the image border does not
    make boundaries (the patch cuts the nucleus, it does not end it). Width 0: no boundary.

    Args:
        inst: (N, H, W) int64 instance map, 0 = background.
    Returns:
        (N, H, W) int64 class map.
    """
    if inst.dim() != 3:
        raise IrcrError(f"three_class_targets: expected (N, H, W), got {tuple(inst.shape)}")
    cls = (inst > 0).long()
    if boundary_width <= 0:
        return cls
    h, w = inst.shape[1:]
    rows, cols = torch.arange(h, device=inst.device), torch.arange(w, device=inst.device)
    differs = torch.zeros_like(inst, dtype=torch.bool)
    for dy, dx in _disk_offsets(int(boundary_width)):  # exact int64 ids; the edge replicated
        ys, xs = (rows + dy).clamp(0, h - 1), (cols + dx).clamp(0, w - 1)
        differs |= inst[:, ys][:, :, xs] != inst
    return torch.where((inst > 0) & differs, torch.full_like(cls, 2), cls)


def interior_components(target: Tensor) -> Tensor:
    """Instance ids of the variance loss: 8-connected components of ``target == 1``.

    Args:
        target: (N, H, W) int64 class map.
    Returns:
        (N, H, W) int64 ids (0 = not interior), on ``target``'s device.
    """
    interior = (target == 1).cpu().numpy()
    out = np.zeros(interior.shape, dtype=np.int64)
    for i, m in enumerate(interior):
        out[i], _ = ndimage.label(m, structure=np.ones((3, 3), bool))
    return torch.from_numpy(out).to(target.device)


def ce_dice(logits: Tensor, target: Tensor, valid: Tensor | None = None,
            smooth: float = 1.0) -> Tensor:
    """CE (mean over valid pixels) + soft Dice over all classes and the whole batch.

    Dice = 1 − (2 Σ p·y + s) / (Σ p + Σ y + s), the sums over every valid pixel, class and
    image of the softmax ``p`` and the one-hot target ``y`` (the released ``CE_DiceLoss``).

    Args:
        logits: (N, C, H, W); target: (N, H, W) int64 in [0, C); valid: (N, H, W) bool.
    """
    logits = logits.float()
    m = torch.ones_like(target, dtype=torch.float32) if valid is None else valid.float()
    n = m.sum().clamp(min=1.0)
    ce = (F.cross_entropy(logits, target, reduction="none") * m).sum() / n
    p = torch.softmax(logits, dim=1) * m.unsqueeze(1)
    y = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float() * m.unsqueeze(1)
    dice = 1.0 - (2.0 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)
    return ce + dice


def variance_loss(prob: Tensor, ids: Tensor) -> Tensor:
    """(1/N) Σ_images (Σ_instances Σ_c var_c) / (K + 1e-8), unbiased variance per instance.

    Instances of one pixel add 0 (their variance is undefined) but still count in K, as in
    the released ``LossVariance``; an image without instances adds 0.

    Args:
        prob: (N, C, H, W) softmax probabilities; ids: (N, H, W) int64 instance ids (0 = none).
    """
    n, c = prob.shape[:2]
    total = prob.new_zeros(())
    for i in range(n):
        lab = ids[i].reshape(-1)
        sel = lab > 0
        if not bool(sel.any()):
            continue
        uniq, inv = torch.unique(lab[sel], return_inverse=True)
        k = uniq.numel()
        p = prob[i].reshape(c, -1)[:, sel].float()
        cnt = torch.zeros(k, device=prob.device).index_add_(0, inv, torch.ones_like(inv,
                                                                                   dtype=torch.float32))
        s1 = torch.zeros(c, k, device=prob.device).index_add_(1, inv, p)
        s2 = torch.zeros(c, k, device=prob.device).index_add_(1, inv, p * p)
        mean = s1 / cnt.clamp(min=1)
        var = (s2 - cnt * mean * mean) / (cnt - 1).clamp(min=1)
        var = torch.where(cnt > 1, var.clamp(min=0), torch.zeros_like(var))
        total = total + var.sum() / (k + 1e-8)
    return total / max(n, 1)


def uncertainty_consistency(p_s: Tensor, p_s1: Tensor, p_t: Tensor, mask: bool = False,
                            valid: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The inter/intra-uncertainty consistency (mean over valid pixels and classes).

    1. u = −p_T·log(p_T + 1e-12), element-wise teacher uncertainty;
    2. target t = (1 − u)·p_T + u·p_S (p_S not detached, as released: the term equals
       ((1 − u)(p_S − p_T))²);
    3. inter = (p_S − t)², intra = (p_S − p_S1)²; with ``mask`` the inter term is weighted by
       1 + the per-image min-max-normalised entropy of |p_S − p_T| (released ``--mask``);
    4. shape = mean over pixels of −Σ_c d·log(d + 1e-6) / log 2 with d = |p_S − p_S1| (the
       released ``entropy_loss(C=2)``, without ``--mask`` only).

    Args:
        p_s, p_s1: (N, C, H, W) student final / stage-1 softmax; p_t: teacher softmax.
        valid: (N, H, W) bool; None = every pixel.
    Returns:
        (loss, parts) with parts ``inter``, ``intra``, ``shape`` (floats).
    """
    m = torch.ones_like(p_s[:, 0]) if valid is None else valid.to(p_s.dtype)
    n = m.sum().clamp(min=1.0)
    u = -p_t * torch.log(p_t + EPS_LOG)
    t = (1.0 - u) * p_t + u * p_s
    inter = (p_s - t) ** 2
    if mask:
        d = (p_s - p_t).abs()
        ent = -(d * torch.log(d + EPS_LOG)).sum(dim=1, keepdim=True) / np.log(2.0)
        lo = ent.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        hi = ent.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        inter = inter * (1.0 + (ent - lo) / (hi - lo).clamp(min=1e-12))
    intra = (p_s - p_s1) ** 2
    c = p_s.shape[1]
    inter_m = (inter.sum(dim=1) * m).sum() / (n * c)
    intra_m = (intra.sum(dim=1) * m).sum() / (n * c)
    shape = p_s.new_zeros(())
    if not mask:
        d1 = (p_s - p_s1).abs()
        shape = ((-(d1 * torch.log(d1 + EPS_ENTROPY)).sum(dim=1) / np.log(2.0)) * m).sum() / n
    loss = inter_m + intra_m + shape
    return loss, {"inter": float(inter_m.detach()), "intra": float(intra_m.detach()),
                  "shape": float(shape.detach())}
