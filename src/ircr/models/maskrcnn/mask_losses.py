"""Mask targets and BCE losses of the BASS mask head (reference-algorithms §7.3).

* :func:`roi_mask_targets`: GT masks RoIAligned to S x S inside the matched proposals and
  binarised (>= 0.5), S = 28 for the fused mask and 14 for LRD. Boxes are pixel-edge xyxy
  (``ircr.data.detection``); RoIAlign runs with ``aligned=True`` and 2 x 2 samples per bin, so
  for a box on pixel edges whose side is 2S pixels each bin is the exact mean of its 2 x 2
  pixel block, and for a side of S pixels the binarised bin is exactly its pixel.
* :func:`boundary_weights`: weight ``w_b`` for target pixels within 1 px (8-neighbourhood) of
  the target boundary, i.e. pixels whose 3 x 3 neighbourhood inside the map holds both
  classes; 1 elsewhere. This LRD boundary weighting is OUR choice (the paper gives no
  formula; the released code does not weight).
* :func:`weighted_bce`: mean over all pixels of ``w * BCE`` (w = 1 -> plain mean BCE); an
  empty input gives 0 with a graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["roi_mask_targets", "boundary_weights", "weighted_bce"]


def roi_mask_targets(
    gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int
) -> torch.Tensor:
    """(K, H, W) GT masks, (R, 4) boxes, (R,) matched GT index -> (R, size, size) {0., 1.}."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size))
    used, inverse = torch.unique(matched, return_inverse=True)
    masks = gt_masks[used][:, None].to(boxes.dtype)
    rois = torch.cat([inverse.to(boxes.dtype)[:, None], boxes], dim=1)
    crops = roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)[:, 0]
    return (crops >= 0.5).to(boxes.dtype)


def boundary_weights(target: torch.Tensor, w_b: float) -> torch.Tensor:
    """(R, S, S) binary targets -> weights: ``w_b`` within 1 px of the boundary, else 1."""
    t = target[:, None].float()
    hi = F.max_pool2d(t, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-t, 3, stride=1, padding=1)
    near = (hi != lo)[:, 0]
    return torch.where(near, torch.full_like(target, float(w_b)), torch.ones_like(target))


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel sigmoid BCE of (R, S, S) logits, weighted, averaged over all pixels."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="mean")
