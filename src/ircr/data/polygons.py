"""Polygon rasterisation to instance maps.

Pixel-centre convention: pixel (row r, column c) has its centre at the point (x=c, y=r), the
same coordinates as Aperio ImageScope / MoNuSeg / MoNuSAC ``Vertex X, Y`` attributes. A
pixel is filled when its centre lies inside the polygon **or on its boundary** (e.g. the
square with corners (0, 0) and (2, 2) fills the 3x3 pixels with centres 0, 1, 2 in each
axis). Point-in-polygon is the even-odd rule (``skimage.draw.polygon``).

Overlap rule: with ``overlap="later"`` (default) polygons are painted in list order, so a
later polygon wins where two overlap; with ``overlap="smaller"`` the smaller polygon (by
shoelace area) wins, so a large region never swallows a small one. Instance id ``k`` is
always polygon ``polys[k - 1]``; a polygon that is degenerate (fewer than 3 vertices, non-
finite coordinates or zero area), outside the image, or entirely covered by others simply
has no pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from skimage.draw import polygon as _draw_polygon


def polygon_area(poly: np.ndarray) -> float:
    """Absolute shoelace area of a (K, 2) polygon given as (x, y) vertices (0 if K < 3)."""
    p = np.asarray(poly, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 3 or p.shape[1] != 2:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def is_degenerate(poly: np.ndarray) -> bool:
    """True for a polygon that cannot enclose area: < 3 vertices, non-finite or zero area."""
    p = np.asarray(poly, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 3:
        return True
    if not np.all(np.isfinite(p)):
        return True
    return polygon_area(p) == 0.0


def rasterize_polygons(
    polys: Sequence[np.ndarray],
    shape: tuple[int, int],
    overlap: Literal["later", "smaller"] = "later",
) -> np.ndarray:
    """Rasterise polygons into an instance map.

    Args:
        polys: list of (K, 2) float arrays of (x, y) = (column, row) vertices.
        shape: (H, W) of the output map.
        overlap: ``"later"`` (later polygon wins) or ``"smaller"`` (smaller area wins).

    Returns:
        (H, W) int32 map, 0 = background, id k = ``polys[k - 1]`` (see module docstring).
    """
    if overlap not in ("later", "smaller"):
        raise ValueError(f"overlap must be 'later' or 'smaller', got {overlap!r}")
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=np.int32)
    order = [i for i, p in enumerate(polys) if not is_degenerate(p)]
    if overlap == "smaller":
        areas = {i: polygon_area(polys[i]) for i in order}
        order.sort(key=lambda i: -areas[i])  # paint large first so small ones end on top
    for i in order:
        p = np.asarray(polys[i], dtype=np.float64)
        rr, cc = _draw_polygon(p[:, 1], p[:, 0], shape=(h, w))
        out[rr, cc] = i + 1
    return out
