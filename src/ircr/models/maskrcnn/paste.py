"""Paste M x M RoI mask probabilities into the image, in pixel-edge box coordinates.

The mask targets are RoIAligned with ``aligned=True`` inside pixel-edge boxes
(:mod:`ircr.models.maskrcnn.mask_losses`): bin j of M covers ``[x0 + j w/M, x0 + (j+1) w/M)``.
Pasting is the inverse: the probability at pixel (r, c) is the bilinear sample of the M x M
map at the pixel centre (c + 0.5, r + 0.5), zero beyond the map's outer bin centres fading
to 0 half a bin outside. A mask of ones pastes to exactly the box's pixels at threshold 0.5.

(torchvision's ``paste_masks_in_image`` treats boxes as inclusive integer pixel ranges and
grows every pasted mask by about one pixel to the right and bottom; :class:`PixelEdgeTransform`
replaces it for :class:`~ircr.models.maskrcnn.BassMaskRCNN`.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

__all__ = ["paste_masks", "PixelEdgeTransform"]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, 1, M, M) probabilities + (K, 4) pixel-edge xyxy boxes -> (K, 1, H, W)."""
    h, w = int(size[0]), int(size[1])
    out = masks.new_zeros((masks.shape[0], 1, h, w))
    m = masks.shape[-1]
    for k in range(masks.shape[0]):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        bw, bh = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
        c0, c1 = max(0, math.floor(x0 - bw / m) - 1), min(w, math.ceil(x1 + bw / m) + 1)
        r0, r1 = max(0, math.floor(y0 - bh / m) - 1), min(h, math.ceil(y1 + bh / m) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        xs = (torch.arange(c0, c1, device=masks.device, dtype=masks.dtype) + 0.5 - x0) / bw
        ys = (torch.arange(r0, r1, device=masks.device, dtype=masks.dtype) + 0.5 - y0) / bh
        gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        out[k, :, r0:r1, c0:c1] = F.grid_sample(masks[k:k + 1], grid, mode="bilinear",
                                                padding_mode="zeros", align_corners=False)[0]
    return out


class PixelEdgeTransform(GeneralizedRCNNTransform):
    """torchvision's resize/normalise transform whose ``postprocess`` pastes masks with
    :func:`paste_masks` (pixel-edge boxes) instead of ``paste_masks_in_image``."""

    def postprocess(  # type: ignore[override]
        self, result: list[dict[str, torch.Tensor]], image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Boxes back to input pixels; masks pasted at input size (eval only)."""
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], o_im_s)
        return result
