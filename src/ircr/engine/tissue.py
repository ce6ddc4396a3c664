"""Tissue detection on a low-resolution thumbnail, so glass background is never segmented.

H&E tissue is coloured (haematoxylin blue/purple, eosin pink) while glass is near-white and
grey, so saturation separates them. The threshold is Otsu's on the thumbnail's saturation,
clamped to ``[min_saturation, max_saturation]``: clamping keeps a thumbnail that is all tissue
(unimodal saturation) from being cut in half, and one that is all glass from being called
tissue. Near-white and near-black pixels (scanner borders) are never tissue. The mask is then
closed, hole-filled, cleaned of specks and dilated by one pixel so that nuclei on the tissue
edge are kept.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1] (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.5
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(centres[int(np.argmax(between))])


def tissue_mask(
    thumb: np.ndarray,
    min_saturation: float = 0.05,
    max_saturation: float = 0.12,
    min_area_frac: float = 1e-4,
) -> np.ndarray:
    """Boolean tissue mask of a thumbnail.

    Args:
        thumb: (h, w, 3) uint8 RGB thumbnail of the slide.
        min_saturation, max_saturation: clamp of the Otsu saturation threshold (0..1).
        min_area_frac: connected tissue pieces smaller than this fraction of the thumbnail
            are removed (dust, pen specks).

    Returns:
        (h, w) bool, True on tissue.
    """
    rgb = np.asarray(thumb, dtype=np.float32) / 255.0
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    grey = rgb.mean(axis=2)
    thr = min(max(_otsu(sat.ravel()), min_saturation), max_saturation)
    mask = (sat >= thr) & (grey < 0.92) & (grey > 0.08)
    if not mask.any():
        return mask
    k = max(3, int(round(min(mask.shape) / 200)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(1.0, min_area_frac * mask.size)
        keep[0] = False
        mask = keep[lab]
    return ndi.binary_dilation(mask, iterations=1)


def region_has_tissue(mask: np.ndarray, scale: float, y0: int, x0: int, y1: int, x1: int) -> bool:
    """Whether the full-resolution box [y0, y1) x [x0, x1) overlaps the tissue mask.

    Args:
        mask: (h, w) bool thumbnail mask.
        scale: thumbnail pixels per full-resolution pixel of the box's frame (< 1).
    """
    ty0 = max(0, int(np.floor(y0 * scale)))
    tx0 = max(0, int(np.floor(x0 * scale)))
    ty1 = min(mask.shape[0], int(np.ceil(y1 * scale)))
    tx1 = min(mask.shape[1], int(np.ceil(x1 * scale)))
    if ty1 <= ty0 or tx1 <= tx0:
        return False
    return bool(mask[ty0:ty1, tx0:tx1].any())
