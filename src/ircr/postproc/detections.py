"""Paint instance-segmentation detections (Mask R-CNN) into an instance map.

Rules (decisions for BASS, see reference-algorithms §7.6):

* keep detections with ``score > score_threshold``; a pixel belongs to a detection when its
  pasted mask probability is ``>= mask_threshold`` (0.5; mmdetection's ``mask_thr_binary``);
* **overlaps are resolved by score**: the higher-scoring detection wins every contested pixel
  (equal scores: the earlier detection). The reference paints in detection order with later
  ones overwriting, and paints the first (best) detection with id 0, i.e. loses it; here no
  detection is lost and ids are ``1..K`` in decreasing score;
* ``fragments``: a detection cut into pieces by better ones (or a mask with holes/islands) is
  ``"largest"`` (default: keep its largest 8-connected piece, the rest becomes background; a
  nucleus is one blob and the stray bits are the losers of an overlap), ``"split"`` (every
  piece its own instance, what the reference evaluation gets by relabelling with
  ``skimage.measure.label``) or ``"keep"`` (one id, several pieces);
* instances left with fewer than ``min_area`` pixels are dropped;
* ``dilate=1`` grows every instance by one pixel (3x3 cross, as the reference evaluation) but
  only **into background**: it never takes pixels of another instance, and a background pixel
  next to several instances goes to the best-scoring one. The reference dilates because
  28x28 masks pasted at threshold 0.5 come out slightly small; it is an evaluation-time option
  (off by default, and off for pseudo-labels, which the paper takes at threshold 0.5 as is).

Without dilation the result is **prefix-consistent**: the pixels of the instance ranked ``k``
depend only on detections ranked before it, so dropping every instance with a score at or
below any ``t`` (``inst * (inst <= n)``, n = #scores > t) equals painting only the
detections with score > t. The pseudo-label stage uses this to paint once and threshold later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ircr.errors import IrcrError

__all__ = ["PaintParams", "Painted", "paint_detections", "keep_top", "FRAGMENT_MODES"]

FRAGMENT_MODES = ("largest", "split", "keep")
_EIGHT = np.ones((3, 3), bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass
class PaintParams:
    """Painting options (see the module docstring)."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    dilate: int = 0
    fragments: str = "largest"
    min_area: int = 1

    def check(self, where: str = "paint") -> PaintParams:
        """Validate the values; raises a one-line IrcrError naming ``where``."""
        if not 0.0 <= float(self.score_threshold) <= 1.0:
            raise IrcrError(f"{where}.score_threshold: must be in [0, 1], got "
                            f"{self.score_threshold}")
        if not 0.0 < float(self.mask_threshold) <= 1.0:
            raise IrcrError(f"{where}.mask_threshold: must be in (0, 1], got "
                            f"{self.mask_threshold}")
        if int(self.dilate) not in (0, 1):
            raise IrcrError(f"{where}.dilate: must be 0 or 1, got {self.dilate}")
        if self.fragments not in FRAGMENT_MODES:
            raise IrcrError(f"{where}.fragments: must be one of {', '.join(FRAGMENT_MODES)}, "
                            f"got {self.fragments!r}")
        if int(self.min_area) < 1:
            raise IrcrError(f"{where}.min_area: must be >= 1, got {self.min_area}")
        return self


@dataclass
class Painted:
    """Result of :func:`paint_detections`: ``inst`` (H, W) int32 ids 1..K in decreasing score,
    ``scores`` (K,) float32 the score of id k at ``k-1``, ``source`` (K,) int64 the detection
    index each id came from (with ``fragments="split"`` several ids share one)."""

    inst: np.ndarray
    scores: np.ndarray
    source: np.ndarray


def _as_masks(masks: np.ndarray, k: int, shape: tuple[int, int] | None) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] != k:
        raise IrcrError(f"detections: masks must be (K, H, W) or (K, 1, H, W) with K={k} "
                        f"scores, got {np.asarray(masks).shape}")
    if shape is not None and tuple(m.shape[1:]) != tuple(shape):
        raise IrcrError(f"detections: masks are {m.shape[1:]} but the image is {tuple(shape)}")
    return m


def _pieces(inst: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply the fragment rule; returns the new map and, per new id, the old id."""
    out = np.zeros_like(inst)
    owner: list[int] = []
    for old, sl in enumerate(ndimage.find_objects(inst, max_label=k), start=1):
        if sl is None:
            continue
        mine = inst[sl] == old
        comp, n = ndimage.label(mine, structure=_EIGHT)
        if mode == "largest" and n > 1:
            sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
            mine = comp == int(np.argmax(sizes)) + 1  # ties: the first in raster order
            n = 1
        if mode == "split" and n > 1:
            for piece in range(1, n + 1):
                owner.append(old)
                out[sl][comp == piece] = len(owner)
        else:
            owner.append(old)
            out[sl][mine] = len(owner)
    return out, np.asarray(owner, np.int64)


def _grow_into_background(inst: np.ndarray) -> np.ndarray:
    """One step of 3x3-cross growth into background; lowest id (best score) wins ties."""
    big = np.iinfo(np.int32).max
    filled = np.where(inst > 0, inst, big).astype(np.int32)
    best = ndimage.grey_erosion(filled, footprint=_CROSS, mode="constant", cval=big)
    grow = (inst == 0) & (best < big)
    out = inst.copy()
    out[grow] = best[grow]
    return out


def paint_detections(
    scores: np.ndarray, masks: np.ndarray, params: PaintParams | None = None,
    shape: tuple[int, int] | None = None,
) -> Painted:
    """Paint detections into an instance map.

    Args:
        scores: (K,) detection scores.
        masks: (K, H, W) or (K, 1, H, W) mask probabilities pasted at image size.
        params: :class:`PaintParams` (defaults: score > 0.5, mask >= 0.5, no dilation,
            largest fragment).
        shape: (H, W) of the image; needed only when there are no detections and ``masks``
            has no spatial size.
    """
    p = (params or PaintParams()).check()
    s = np.asarray(scores, np.float64).reshape(-1)
    k = int(s.size)
    if k == 0 and shape is not None and np.asarray(masks).size == 0:
        h, w = int(shape[0]), int(shape[1])
        return Painted(np.zeros((h, w), np.int32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64))
    m = _as_masks(masks, k, shape)
    h, w = int(m.shape[1]), int(m.shape[2])
    order = np.argsort(-s, kind="stable")
    order = order[s[order] > float(p.score_threshold)]
    inst = np.zeros((h, w), np.int32)
    if order.size:
        binary = m[order] >= float(p.mask_threshold)  # (K', H, W), best first
        hit = binary.any(axis=0)
        inst[hit] = binary.argmax(axis=0)[hit].astype(np.int32) + 1  # first (best) wins
    inst, owner = _pieces(inst, int(order.size), p.fragments)
    if owner.size:
        areas = np.bincount(inst.ravel(), minlength=owner.size + 1)[1:]
        keep = areas >= int(p.min_area)
        lut = np.zeros(owner.size + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        inst = lut[inst]
        owner = owner[keep]
    if int(p.dilate) == 1:
        inst = _grow_into_background(inst)
    source = order[owner - 1] if owner.size else np.zeros(0, np.int64)
    return Painted(inst.astype(np.int32), s[source].astype(np.float32), source.astype(np.int64))


def keep_top(inst: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Keep the painted instances with score > ``threshold`` (ids stay 1..n): exact for a
    map painted without dilation (see the module docstring)."""
    n = int(np.count_nonzero(np.asarray(scores) > float(threshold)))
    if n and not np.all(np.asarray(scores)[:n] > float(threshold)):
        raise IrcrError("detections: scores must be in decreasing order (as painted)")
    return np.where(inst <= n, inst, 0).astype(np.int32)
