"""Per-nucleus morphology and stain features of an instance map.

One vectorised pass over the whole label map (no per-instance Python work except a tiny
convex hull per nucleus), so ~2,000 nuclei on a 1000x1000 tile take well under a second.
Used by the morphological prior (PIAC, ``ircr.ssl.prior``) and the per-nucleus CSV of the
segmentation engine.

Definitions (pixels of the map's own resolution):

* ``area``: number of pixels.
* ``perimeter``: the 4-connected contour length estimator of ``skimage.measure.perimeter``
  (Benkrid & Crookes weights), computed for every instance at once; equals
  ``regionprops(...).perimeter``.
* ``solidity``: area / convex-hull area, the convex-hull area being the number of pixel
  centres inside or on the convex hull of the midpoints of the nucleus' pixel edges (skimage's
  ``area_convex``, counted exactly with integer row spans instead of rasterising).
* ``circularity``: 4*pi*area / perimeter^2 (0 when the perimeter is 0, i.e. one pixel).
* ``extent``: area / bounding-box area.
* ``eccentricity``: of the ellipse with the same second central moments (skimage definition).
* ``haematoxylin``: mean of the haematoxylin channel of ``skimage.color.rgb2hed`` inside the
  nucleus (NaN when no image is given).
* ``centroid_y``, ``centroid_x``: mean pixel row / column.
* ``bbox``: (n, 4) int64 ``(y0, x0, y1, x1)``, end-exclusive.
* ``touches_border``: the bounding box touches the image edge.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from ircr import compat
from ircr.errors import IrcrError

FEATURE_KEYS = (
    "id", "area", "perimeter", "solidity", "circularity", "extent", "eccentricity",
    "haematoxylin", "centroid_y", "centroid_x", "bbox", "touches_border",
)

def _check_inputs(image: np.ndarray | None, inst: np.ndarray) -> np.ndarray:
    """Validate shapes/dtypes and return ``inst`` as a C-contiguous int64 map."""
    inst = np.asarray(inst)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise IrcrError(f"inst: expected an (H, W) integer instance map, got {inst.dtype} "
                        f"array of shape {inst.shape}")
    if inst.size and inst.min() < 0:
        raise IrcrError("inst: instance map has negative ids")
    if image is not None:
        image = np.asarray(image)
        if image.shape != (*inst.shape, 3) or image.dtype != np.uint8:
            raise IrcrError(f"image: expected (H, W, 3) uint8 matching inst {inst.shape}, got "
                            f"{image.dtype} array of shape {image.shape}")
    return np.ascontiguousarray(inst, dtype=np.int64)


def _dense_labels(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 1..n. Returns (ids (n,) int64 sorted, dense (H, W) int64 with 0 = bg)."""
    flat = inst.ravel()
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= 4 * flat.size + 1024:
        present = np.bincount(flat, minlength=max_id + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(max_id + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), lut[inst]
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), inv.reshape(inst.shape).astype(np.int64)
    return uniq.astype(np.int64), (inv + 1).reshape(inst.shape).astype(np.int64)


def _border_and_perimeter(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Border pixels (4-connectivity, image edge counts as outside) and perimeters.

    Returns (border (H, W) bool, perimeter (n,) float64), perimeter as skimage's estimator.
    """
    p = np.pad(lab, 1)
    c = p[1:-1, 1:-1]
    up, down, left, right = p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]
    border = (c > 0) & ~((up == c) & (down == c) & (left == c) & (right == c))
    bp = np.pad(border, 1)
    code = border.astype(np.int64)
    h, w = lab.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            weight = 10 if (dy and dx) else 2
            nb_lab = p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            nb_border = bp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            code += weight * (nb_border & (nb_lab == c))
    if not compat.perimeter_weights_match():  # skimage changed its estimator: ask it
        return border, compat.perimeters_public(c, n)
    perim = np.bincount(c[border], weights=compat.PERIMETER_WEIGHTS[code[border]],
                        minlength=n + 1)[1:]
    return border, perim


_DIAMOND = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int32)


def _hull_edges(pts: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Convex-hull vertices of every instance's pixel-edge midpoints (doubled coordinates).

    Returns (vertices (V, 2) int64 X=2*col, Y=2*row, per-instance vertex counts (n,) int64).
    """
    hulls: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    for k in range(n):
        seg = pts[starts[k]:starts[k + 1]]
        if seg.shape[0] == 0:
            continue
        mids = (seg[:, None, :] + _DIAMOND[None]).reshape(-1, 2)
        hull = cv2.convexHull(mids).reshape(-1, 2)
        hulls.append(hull)
        counts[k] = hull.shape[0]
    if not hulls:
        return np.zeros((0, 2), np.int64), counts
    return np.concatenate(hulls).astype(np.int64), counts


def _hull_areas(lab: np.ndarray, border: np.ndarray, boxes: np.ndarray, n: int) -> np.ndarray:
    """Convex-hull area per instance as skimage's ``area_convex``, (n,) float64.

    The hull is that of the midpoints of the pixel edges; its area is the number of pixel
    centres inside or on it (what ``skimage.morphology.convex_hull_image`` rasterises),
    counted exactly per bounding-box row from the hull's half-planes, for all instances at
    once (integer arithmetic in doubled coordinates).
    """
    ys, xs = np.nonzero(border)
    labels = lab[ys, xs]
    order = np.argsort(labels, kind="stable")
    pts = np.stack([2 * xs[order], 2 * ys[order]], axis=1).astype(np.int32)
    starts = np.searchsorted(labels[order], np.arange(1, n + 2))
    verts, vcount = _hull_edges(pts, starts, n)
    out = np.zeros(n, dtype=np.float64)
    if verts.shape[0] == 0:
        return out
    vstart = np.r_[0, np.cumsum(vcount)[:-1]]
    inst_of_v = np.repeat(np.arange(n), vcount)
    local = np.arange(verts.shape[0]) - vstart[inst_of_v]
    nxt = verts[vstart[inst_of_v] + (local + 1) % vcount[inst_of_v]]
    ex, ey = (nxt - verts).T
    cross = verts[:, 0] * nxt[:, 1] - nxt[:, 0] * verts[:, 1]
    sign = np.sign(np.bincount(inst_of_v, weights=cross, minlength=n))[inst_of_v]
    ex, ey = ex * sign, ey * sign  # orient every hull counter-clockwise (positive area)
    # one entry per (instance, bbox row); pair every row with every edge of its instance
    nrows = boxes[:, 2] - boxes[:, 0]
    row_inst = np.repeat(np.arange(n), nrows)
    row_y = 2 * (boxes[row_inst, 0] + np.arange(row_inst.size) - np.r_[0, np.cumsum(nrows)[:-1]]
                 [row_inst])
    per_row = vcount[row_inst]
    pair_row = np.repeat(np.arange(row_inst.size), per_row)
    pair_start = np.r_[0, np.cumsum(per_row)[:-1]]
    e = vstart[row_inst[pair_row]] + np.arange(pair_row.size) - pair_start[pair_row]
    k = ex[e] * (row_y[pair_row] - verts[e, 1]) + ey[e] * verts[e, 0]  # inside iff k-ey*qx>=0
    big = np.int64(1 << 40)
    eye = ey[e]
    pos, neg = eye > 0, eye < 0
    hi = np.where(pos, k // np.where(pos, 2 * eye, 1), big)
    lo = np.where(neg, -(k // np.where(neg, -2 * eye, 1)), -big)
    bad = (eye == 0) & (k < 0)
    hi_r = np.minimum.reduceat(hi, pair_start)
    lo_r = np.maximum.reduceat(lo, pair_start)
    bad_r = np.maximum.reduceat(bad.astype(np.int8), pair_start) > 0
    count = np.where(bad_r, 0, np.maximum(hi_r - lo_r + 1, 0))
    return np.bincount(row_inst, weights=count, minlength=n).astype(np.float64)


def _moments(lab: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Area, centroids and eccentricity from first/second moments via bincount."""
    h, w = lab.shape
    flat = lab.ravel()
    fg = flat > 0
    li = flat[fg]
    rr, cc = np.divmod(np.flatnonzero(fg), w)
    rr = rr.astype(np.float64)
    cc = cc.astype(np.float64)
    area = np.bincount(li, minlength=n + 1)[1:].astype(np.float64)
    safe = np.maximum(area, 1.0)
    cy = np.bincount(li, weights=rr, minlength=n + 1)[1:] / safe
    cx = np.bincount(li, weights=cc, minlength=n + 1)[1:] / safe
    dr = rr - np.r_[0.0, cy][li]
    dc = cc - np.r_[0.0, cx][li]
    mrr = np.bincount(li, weights=dr * dr, minlength=n + 1)[1:] / safe
    mcc = np.bincount(li, weights=dc * dc, minlength=n + 1)[1:] / safe
    mrc = np.bincount(li, weights=dr * dc, minlength=n + 1)[1:] / safe
    half_tr = (mrr + mcc) / 2.0
    root = np.sqrt(((mrr - mcc) / 2.0) ** 2 + mrc ** 2)
    l1, l2 = half_tr + root, half_tr - root
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0, 1)), 0.0)
    return {"area": area, "centroid_y": cy, "centroid_x": cx, "eccentricity": ecc, "li": li}


def _bboxes(lab: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) int64 bounding boxes (y0, x0, y1, x1) via ndimage.find_objects."""
    boxes = np.zeros((n, 4), dtype=np.int64)
    for k, sl in enumerate(ndi.find_objects(lab, max_label=n)):
        if sl is not None:
            boxes[k] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes


def haematoxylin_values(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Haematoxylin channel of ``skimage.color.rgb2hed`` (identical values), computed fast.

    rgb2hed is ``max(log(max(v/255, 1e-6)) / log(1e-6) @ hed_from_rgb, 0)``; for uint8 input the
    log term is a 256-entry table, so only one table look-up per channel is needed.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: optional (H, W) bool; when given only those pixels are computed.

    Returns:
        (H, W) float64, or (mask.sum(),) float64 in row-major order when ``mask`` is given.
    """
    from skimage.color import hed_from_rgb

    lut = np.log(np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)) / np.log(1e-6)
    px = image[mask] if mask is not None else image.reshape(-1, 3)
    col = np.asarray(hed_from_rgb)[:, 0]
    hema = lut[px[:, 0]] * col[0] + lut[px[:, 1]] * col[1] + lut[px[:, 2]] * col[2]
    np.maximum(hema, 0.0, out=hema)
    return hema if mask is not None else hema.reshape(image.shape[:2])


def nucleus_features(image: np.ndarray | None, inst: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance features of an instance map (see module docstring for definitions).

    Args:
        image: (H, W, 3) uint8 RGB, or None (then ``haematoxylin`` is NaN).
        inst: (H, W) integer instance map, 0 = background, ids need not be contiguous.

    Returns:
        dict of arrays of length n (instances, ids ascending): ``id`` int64, ``area``,
        ``perimeter``, ``solidity``, ``circularity``, ``extent``, ``eccentricity``,
        ``haematoxylin``, ``centroid_y``, ``centroid_x`` float64, ``bbox`` (n, 4) int64,
        ``touches_border`` bool.
    """
    lab_in = _check_inputs(image, inst)
    ids, lab = _dense_labels(lab_in)
    n = int(ids.size)
    h, w = lab.shape
    mom = _moments(lab, n)
    border, perim = _border_and_perimeter(lab, n)
    boxes = _bboxes(lab, n)
    hull = _hull_areas(lab, border, boxes, n)
    area = mom["area"]
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim > 0, 4.0 * np.pi * area / np.where(perim > 0, perim, 1) ** 2, 0.0)
    if image is not None and n:
        hema = haematoxylin_values(np.asarray(image), lab > 0)
        hsum = np.bincount(mom["li"], weights=hema, minlength=n + 1)[1:]
        haem = hsum / np.maximum(area, 1.0)
    else:
        haem = np.full(n, np.nan)
    touches = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == h) | (boxes[:, 3] == w)
    return {
        "id": ids,
        "area": area,
        "perimeter": perim,
        "solidity": area / np.maximum(hull, 1.0),
        "circularity": circ,
        "extent": area / np.maximum(box_area, 1.0),
        "eccentricity": mom["eccentricity"],
        "haematoxylin": haem,
        "centroid_y": mom["centroid_y"],
        "centroid_x": mom["centroid_x"],
        "bbox": boxes,
        "touches_border": touches,
    }
