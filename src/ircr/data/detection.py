"""Detection targets (boxes, labels, masks) from an instance map, for Mask R-CNN training.

Box convention: **pixel edges**, ``[x0, y0, x1, y1]`` float32 where pixel (row r, column c)
covers the square ``[c, c+1) x [r, r+1)``. An instance whose pixels span columns
``c_min..c_max`` and rows ``r_min..r_max`` gets the box ``[c_min, r_min, c_max + 1,
r_max + 1]``: a single pixel has a 1 x 1 box (never degenerate, which torchvision's
GeneralizedRCNN refuses), the width is the pixel count along x, and the convention is the
COCO/mmdetection one BASS was trained with (COCO ``bbox = [x, y, w, h]`` -> ``[x, y, x+w, y+h]``).
Flips map ``x -> W - x`` (and ``y -> H - y``), so a flipped map gives the flipped boxes
exactly (:func:`flip_targets`).

Instances are listed in increasing id order; those with fewer than ``min_area`` pixels (in
this map, e.g. a nucleus cut by the patch edge) are dropped. One id in several pieces keeps
one box around all of them and one mask with all of them.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy import ndimage

from ircr.errors import IrcrError

__all__ = ["DetectionTargets", "detection_targets", "flip_targets", "count_instances"]


class DetectionTargets(TypedDict):
    """Targets of one image: boxes (K, 4) float32 xyxy pixel edges, labels (K,) int64 (all 1),
    masks (K, H, W) uint8 {0, 1}, ids (K,) int32 (the instance ids they came from)."""

    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    ids: np.ndarray


def _check_map(inst: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(inst, np.ndarray) or inst.ndim != 2:
        raise IrcrError(f"{where}: instance map must be a 2-D array, got "
                        f"{getattr(inst, 'shape', type(inst).__name__)}")
    if not np.issubdtype(inst.dtype, np.integer):
        raise IrcrError(f"{where}: instance map must hold integer ids, got {inst.dtype}")
    if inst.size and int(inst.min()) < 0:
        raise IrcrError(f"{where}: instance map has negative ids")
    return inst


def detection_targets(
    inst: np.ndarray, min_area: int = 1, where: str = "instance map"
) -> DetectionTargets:
    """(H, W) integer instance map (0 = background) -> boxes, labels, masks, ids.

    Args:
        inst: instance map; ids need not be contiguous.
        min_area: instances with fewer pixels are dropped (>= 1).
        where: name used in error messages (file or key).
    """
    inst = _check_map(inst, where)
    if int(min_area) < 1:
        raise IrcrError(f"{where}: min_area must be >= 1, got {min_area}")
    h, w = inst.shape
    lab = inst.astype(np.int64, copy=False)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if ids.size:
        areas = np.bincount(lab.ravel(), minlength=int(ids[-1]) + 1)[ids]
        ids = ids[areas >= int(min_area)]
    k = int(ids.size)
    boxes = np.zeros((k, 4), np.float32)
    masks = np.zeros((k, h, w), np.uint8)
    if k:
        # dense relabel so find_objects gives one slice per kept instance
        lut = np.zeros(int(lab.max()) + 1, np.int64)
        lut[ids] = np.arange(1, k + 1)
        dense = lut[lab]
        for j, sl in enumerate(ndimage.find_objects(dense, max_label=k)):
            assert sl is not None  # every kept id has >= 1 pixel
            ys, xs = sl
            boxes[j] = (xs.start, ys.start, xs.stop, ys.stop)
            masks[j][sl] = dense[sl] == j + 1
    return DetectionTargets(boxes=boxes, labels=np.ones(k, np.int64), masks=masks,
                            ids=ids.astype(np.int32))


def flip_targets(
    t: DetectionTargets, shape: tuple[int, int], horizontal: bool = False,
    vertical: bool = False,
) -> DetectionTargets:
    """Targets of the flipped image (``shape`` = (H, W) of the image)."""
    h, w = int(shape[0]), int(shape[1])
    boxes = t["boxes"].copy()
    masks = t["masks"]
    if horizontal:
        boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
        masks = masks[:, :, ::-1]
    if vertical:
        boxes[:, [1, 3]] = h - t["boxes"][:, [3, 1]]
        masks = masks[:, ::-1, :]
    return DetectionTargets(boxes=boxes, labels=t["labels"].copy(),
                            masks=np.ascontiguousarray(masks), ids=t["ids"].copy())


def count_instances(inst: np.ndarray, min_area: int = 1) -> int:
    """Number of instances with at least ``min_area`` pixels (what :func:`detection_targets`
    keeps), without building masks."""
    lab = _check_map(inst, "instance map").astype(np.int64, copy=False).ravel()
    if not lab.size:
        return 0
    areas = np.bincount(lab)[1:]
    return int(np.count_nonzero(areas >= max(1, int(min_area))))
