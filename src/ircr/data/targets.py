"""HoVer-Net training targets: NP (foreground) and HV (horizontal/vertical distance) maps.

Follows reference-algorithms.md §1.2-1.3 with the top/left-border bug fixed:

1. Fragmented instances are split into 4-connected components (for HV only; NP uses the
   original map).
2. Only components with at least ``min_px`` pixels inside the output crop get HV values;
   the others stay 0 in HV but 1 in NP.
3. For each kept component the centre of mass ``(cy, cx)`` (computed on its *full extent in
   the context map*) is rounded with ``int(c + 0.5)``; the horizontal value of a pixel in
   column ``c`` is ``c + 1 - round(cx)`` (the 1-based grid quirk of the reference, which
   puts the zero crossing one pixel up/left of the centroid), likewise vertically.
4. Negative and positive values are normalised separately by the component's extreme
   values, to [-1, 0) and (0, 1].

The reference grows each box by 2 px *without padding*, which silently drops instances that
start in row/column 0 or 1. Working in global coordinates (equivalent to padding first)
keeps every such instance. Because the values only depend on a component's column/row
extent and centre of mass, everything is computed per component from
``scipy.ndimage.find_objects`` and ``np.bincount`` and looked up for the crop pixels only:
no per-instance scan of the map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as _cc_label

from ircr.errors import IrcrError

__all__ = ["hover_targets", "split_fragments"]


def split_fragments(inst: np.ndarray) -> np.ndarray:
    """Relabel so that every 4-connected piece of every instance has its own id.

    Args:
        inst: (H, W) integer instance map, 0 = background.

    Returns:
        (H, W) int32 map with ids 1..K, one per 4-connected component of equal value.
    """
    comp = _cc_label(np.ascontiguousarray(inst), background=0, connectivity=1)
    return comp.astype(np.int32, copy=False)


def _check(inst: np.ndarray, crop: tuple[int, int, int, int] | None) -> tuple[int, ...]:
    if not isinstance(inst, np.ndarray) or inst.ndim != 2:
        shape = getattr(inst, "shape", None)
        raise IrcrError(f"hover_targets: instance map must be a 2-D array, got shape {shape}")
    if not np.issubdtype(inst.dtype, np.integer):
        raise IrcrError(f"hover_targets: instance map must be integer, got {inst.dtype}")
    height, width = inst.shape
    if crop is None:
        return (0, 0, height, width)
    if len(crop) != 4:
        raise IrcrError(f"hover_targets: crop must be (y0, x0, h, w), got {crop!r}")
    y0, x0, h, w = (int(v) for v in crop)
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > height or x0 + w > width:
        raise IrcrError(
            f"hover_targets: crop {crop!r} does not fit inside the {height}x{width} map"
        )
    return (y0, x0, h, w)


def _axis_table(
    lo: np.ndarray, hi: np.ndarray, centre: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-component offset and side scales along one axis.

    ``lo``/``hi`` are the first/last (inclusive) coordinate of each component, ``centre``
    its rounded centre of mass. The raw value at coordinate ``t`` is ``t + 1 - centre``.
    Returns (offset, neg_scale, pos_scale) as float32, with scale 1 for an empty side.
    """
    offset = (1 - centre).astype(np.float32)
    vmin = (lo + 1 - centre).astype(np.float32)
    vmax = (hi + 1 - centre).astype(np.float32)
    neg = np.where(vmin < 0, -vmin, np.float32(1)).astype(np.float32)
    pos = np.where(vmax > 0, vmax, np.float32(1)).astype(np.float32)
    return offset, neg, pos


def hover_targets(
    inst: np.ndarray,
    crop: tuple[int, int, int, int] | None = None,
    min_px: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """NP and HV targets of a context map, cropped to ``crop``.

    Args:
        inst: (H, W) integer instance map (0 = background) covering the crop plus context.
        crop: ``(y0, x0, h, w)`` output region inside ``inst``; ``None`` = the whole map.
        min_px: a component gets HV values only with at least this many pixels in the crop.

    Returns:
        ``np_target`` (h, w) uint8 in {0, 1} and ``hv`` (2, h, w) float32 in [-1, 1],
        channel 0 = x (along columns), channel 1 = y (along rows).
    """
    y0, x0, h, w = _check(inst, crop)
    window = inst[y0 : y0 + h, x0 : x0 + w]
    np_target = (window > 0).astype(np.uint8)
    hv = np.zeros((2, h, w), dtype=np.float32)
    if not np_target.any():
        return np_target, hv
    height, width = inst.shape
    margin = _MARGIN
    while True:
        # Work on the crop plus a margin; grow it while a kept component touches the
        # margin's inner edge (it may continue outside), up to the whole map.
        wy0, wx0 = max(y0 - margin, 0), max(x0 - margin, 0)
        wy1, wx1 = min(y0 + h + margin, height), min(x0 + w + margin, width)
        whole = wy0 == 0 and wx0 == 0 and wy1 == height and wx1 == width
        done = _hv_in_window(
            inst[wy0:wy1, wx0:wx1], (y0 - wy0, x0 - wx0, h, w), min_px, hv, check=not whole
        )
        if done:
            return np_target, hv
        margin *= 2


_MARGIN = 48


def _hv_in_window(
    inst: np.ndarray, crop: tuple[int, int, int, int], min_px: int, hv: np.ndarray, check: bool
) -> bool:
    """Fill ``hv`` (2, h, w) for ``crop`` of ``inst``; False if the window was too small.

    With ``check``, a kept component that touches the window border is incomplete (the
    window is not the whole map), so nothing is written and False is returned.
    """
    y0, x0, h, w = crop
    comp = split_fragments(inst)
    n_comp = int(comp.max())
    comp_crop = comp[y0 : y0 + h, x0 : x0 + w]
    in_crop = np.bincount(comp_crop.ravel(), minlength=n_comp + 1)
    keep = in_crop >= max(int(min_px), 1)
    keep[0] = False
    if not keep.any():
        return True
    if check:
        edge = np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]])
        if keep[edge].any():
            return False

    # Centre of mass of each component over its full extent.
    flat = comp.ravel()
    rows, cols = np.divmod(np.arange(flat.size, dtype=np.int64), inst.shape[1])
    area = np.bincount(flat, minlength=n_comp + 1).astype(np.float64)
    area[0] = 1.0
    ry = np.floor(np.bincount(flat, weights=rows, minlength=n_comp + 1) / area + 0.5)
    rx = np.floor(np.bincount(flat, weights=cols, minlength=n_comp + 1) / area + 0.5)

    # Row/column extents from the bounding boxes (index k-1 holds component k).
    ext = np.zeros((n_comp + 1, 4), dtype=np.int64)
    for k, box in enumerate(ndimage.find_objects(comp, max_label=n_comp), start=1):
        if box is not None and keep[k]:
            ext[k] = (box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1)
    off_x, neg_x, pos_x = _axis_table(ext[:, 2], ext[:, 3], rx.astype(np.int64))
    off_y, neg_y, pos_y = _axis_table(ext[:, 0], ext[:, 1], ry.astype(np.int64))

    sel = keep[comp_crop]
    ids = comp_crop[sel]
    yy, xx = np.nonzero(sel)
    vx = (xx + x0).astype(np.float32) + off_x[ids]
    vy = (yy + y0).astype(np.float32) + off_y[ids]
    hv[0][sel] = np.where(vx < 0, vx / neg_x[ids], np.where(vx > 0, vx / pos_x[ids], vx))
    hv[1][sel] = np.where(vy < 0, vy / neg_y[ids], np.where(vy > 0, vy / pos_y[ids], vy))
    return True
