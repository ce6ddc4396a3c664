"""Exact polygon outlines of binary masks (the shapes written to GeoJSON for QuPath).

A mask is outlined along its *pixel edges* (like QuPath's own contour tracing of label
images): the polygon covers exactly the mask's pixels, so its area equals the pixel count and
rasterising it (pixel centres inside) gives the mask back. Concavities and holes are kept.

* Each 4-connected part of the mask becomes one polygon; parts that touch only at a corner
  (8-connected) are separate polygons of a ``MultiPolygon``.
* A polygon is ``[exterior, *holes]``; holes are the background regions enclosed by the part.
  Exterior rings have positive signed area in (x, y) (counter-clockwise in a y-up frame, the
  GeoJSON right-hand rule), holes negative.
* Rings are closed (first vertex repeated), never cross or touch themselves; a hole may touch
  its exterior or another hole at a single vertex and parts may touch at single vertices
  (valid OGC/GeoJSON geometry). Vertices in the middle of straight runs are dropped.

Coordinates are in the mask's corner-origin pixel frame: pixel (row r, col c) is the square
``[c, c + 1] x [r, r + 1]`` in (x, y).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

Ring = np.ndarray  # (n + 1, 2) float64 closed ring of (x, y)
Polygon = list[Ring]  # [exterior, *holes]


def ring_signed_area(ring: np.ndarray) -> float:
    """Shoelace signed area of a closed ring (x, y): > 0 for exteriors, < 0 for holes."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2.0)


def _edges(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary edges of a padded bool mask: starts (E, 2) x,y and unit dirs (E, 2).

    Walking an edge, the mask is on the right on screen (y down), so exteriors come out with
    positive shoelace area.
    """
    mi = m.astype(np.int8)
    dv = mi[1:, :] - mi[:-1, :]  # horizontal edges on line y = r + 1 between rows r, r + 1
    dh = mi[:, 1:] - mi[:, :-1]  # vertical edges on line x = c + 1 between cols c, c + 1
    r1, c1 = np.nonzero(dv == 1)  # mask below: go east
    r2, c2 = np.nonzero(dv == -1)  # mask above: go west
    r3, c3 = np.nonzero(dh == 1)  # mask on the right: go north (up)
    r4, c4 = np.nonzero(dh == -1)  # mask on the left: go south (down)
    starts = [np.stack([c1, r1 + 1], 1), np.stack([c2 + 1, r2 + 1], 1),
              np.stack([c3 + 1, r3 + 1], 1), np.stack([c4 + 1, r4], 1)]
    dirs = [np.tile(d, (len(r), 1)) for d, r in
            (([1, 0], r1), ([-1, 0], r2), ([0, -1], r3), ([0, 1], r4))]
    return np.concatenate(starts).astype(np.int64), np.concatenate(dirs).astype(np.int64)


def _rings_of_part(m: np.ndarray) -> list[np.ndarray]:
    """Closed rings (x, y in the padded frame) of one 4-connected part (padded bool mask)."""
    start, d = _edges(m)
    width = m.shape[1] + 1
    key = start[:, 1] * width + start[:, 0]
    order = np.argsort(key, kind="stable")
    start, d, key = start[order], d[order], key[order]
    end = start + d
    end_key = end[:, 1] * width + end[:, 0]
    lo = np.searchsorted(key, end_key, side="left")
    hi = np.searchsorted(key, end_key, side="right")
    nxt = lo.copy()
    # a vertex shared by two diagonal pixels of the part: turn left (screen), i.e. stay on the
    # part through the corner, so the two background regions there stay in separate rings
    pinch = np.nonzero(hi - lo == 2)[0]
    if len(pinch):
        left = np.stack([d[pinch, 1], -d[pinch, 0]], 1)
        first_is_left = np.all(d[lo[pinch]] == left, axis=1)
        nxt[pinch] = np.where(first_is_left, lo[pinch], lo[pinch] + 1)
    seen = np.zeros(len(key), bool)
    rings = []
    for e0 in range(len(key)):
        if seen[e0]:
            continue
        cyc = []
        e = e0
        while not seen[e]:
            seen[e] = True
            cyc.append(e)
            e = int(nxt[e])
        idx = np.asarray(cyc)
        turn = np.any(d[idx] != d[np.roll(idx, 1)], axis=1)  # keep corners only
        pts = start[idx[turn]].astype(np.float64)
        rings.append(np.concatenate([pts, pts[:1]], axis=0))
    return rings


def mask_outline(mask: np.ndarray) -> list[Polygon]:
    """Exact outline of a binary mask as polygons (largest part first).

    Args:
        mask: (h, w) bool (may be empty).

    Returns:
        One ``[exterior, *holes]`` list per 4-connected part, each ring an (n + 1, 2) float64
        closed ring of (x, y) in the mask's corner-origin pixel frame.
    """
    m = np.asarray(mask, dtype=bool)
    lab, n = ndi.label(m)  # 4-connectivity
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    polys: list[Polygon] = []
    for k in np.argsort(-sizes, kind="stable") + 1:
        part = np.pad(lab == k, 1)
        rings = _rings_of_part(part)
        areas = [ring_signed_area(r) for r in rings]
        ext = int(np.argmax(areas))
        ordered = [rings[ext]] + [r for i, r in enumerate(rings) if i != ext]
        polys.append([r - 1.0 for r in ordered])  # undo the padding
    return polys


def outline_area(polys: list[Polygon]) -> float:
    """Area covered by an outline (exteriors minus holes), in pixel units."""
    return float(sum(ring_signed_area(r) for p in polys for r in p))


def geojson_geometry(polys: list[Polygon], ndigits: int = 2) -> dict[str, Any]:
    """GeoJSON ``Polygon`` (one part) or ``MultiPolygon`` (several) of an outline."""
    coords = [[np.round(r, ndigits).tolist() for r in p] for p in polys]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def geometry_rings(geometry: dict[str, Any]) -> list[np.ndarray]:
    """Every ring (exteriors and holes) of a GeoJSON Polygon/MultiPolygon as (n, 2) arrays."""
    coords = geometry["coordinates"]
    polys = [coords] if geometry["type"] == "Polygon" else coords
    return [np.asarray(r, dtype=np.float64) for p in polys for r in p]


def transform_outline(polys: list[Polygon], offset_xy: tuple[float, float] = (0.0, 0.0),
                      scale: float = 1.0) -> list[Polygon]:
    """Outline moved by ``offset_xy`` then scaled: ``(x + ox) * scale``, ``(y + oy) * scale``."""
    off = np.asarray(offset_xy, dtype=np.float64)
    return [[(r + off) * scale for r in p] for p in polys]
