"""Exported nucleus shapes trace their masks exactly (issue 14, point 1).

The check is independent of the tracer: every ring is rasterised with an even-odd crossing
test at pixel centres (vertices lie on integer corners, centres on half-integers, so there are
no ties) and compared with the mask; areas use the shoelace formula.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ircr.engine.measure import geojson_features
from ircr.io import outlines as ol
from ircr.io import writers as wr
from ircr.io.outlines import geometry_rings


def rasterise(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside an odd number of rings (even-odd rule)."""
    h, w = shape
    yc = np.arange(h)[:, None] + 0.5
    xc = np.arange(w)[None, :] + 0.5
    inside = np.zeros((h, w), bool)
    for ring in rings:
        for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:], strict=True):
            if y1 == y2:
                continue
            crosses = (y1 > yc) != (y2 > yc)
            x_at = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (xc < x_at)
    return inside


def shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def check_ring_simple(ring: np.ndarray) -> None:
    assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 5
    pts = ring[:-1]
    assert len(np.unique(pts, axis=0)) == len(pts), "ring visits a vertex twice"
    steps = np.diff(ring, axis=0)
    assert np.all((steps[:, 0] == 0) != (steps[:, 1] == 0)), "edges are axis-aligned"


def check_outline(mask: np.ndarray) -> list[list[np.ndarray]]:
    polys = ol.mask_outline(mask)
    rings = [r for p in polys for r in p]
    for p in polys:
        assert shoelace(p[0]) > 0 and all(shoelace(h) < 0 for h in p[1:])
    for r in rings:
        check_ring_simple(r)
    assert np.array_equal(rasterise(rings, mask.shape), mask)
    assert sum(shoelace(r) for r in rings) == pytest.approx(mask.sum())
    return polys


def c_shape() -> np.ndarray:
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 19.5, xx - 19.5)
    return (r >= 9) & (r <= 17) & ~((xx > 19) & (np.abs(yy - 19.5) < 6))


def test_c_shaped_nucleus_keeps_its_concavity() -> None:
    m = c_shape()
    polys = check_outline(m)
    assert len(polys) == 1 and len(polys[0]) == 1
    # the convex hull (the old fallback) would cover the mouth and the inner disc
    assert shoelace(polys[0][0]) == m.sum() < 0.8 * np.pi * 17.5**2


def test_corner_touching_parts_become_a_multipolygon() -> None:
    m = np.zeros((10, 10), bool)
    m[1:5, 1:5] = True
    m[5:8, 5:9] = True  # touches the first square only at the corner (5, 5)
    polys = check_outline(m)
    assert [len(p) for p in polys] == [1, 1]
    assert [shoelace(p[0]) for p in polys] == [16, 12]
    feat = wr.detection_feature(polys, {"Area µm^2": 1.0})
    assert feat["geometry"]["type"] == "MultiPolygon"
    assert len(feat["geometry"]["coordinates"]) == 2


def test_holes_are_kept_and_may_touch_the_exterior_at_a_vertex() -> None:
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False  # enclosed hole
    polys = check_outline(ring)
    assert len(polys) == 1 and len(polys[0]) == 2
    feat = wr.detection_feature(polys, {})
    assert feat["geometry"]["type"] == "Polygon" and len(feat["geometry"]["coordinates"]) == 2
    pinched = np.ones((3, 3), bool)
    pinched[1, 1] = pinched[0, 0] = False  # hole meets the outside at the corner (1, 1)
    polys = check_outline(pinched)
    assert len(polys) == 1 and len(polys[0]) == 2


@pytest.mark.parametrize("case", ["line", "dot", "diagonal", "checker"])
def test_degenerate_masks(case: str) -> None:
    m = np.zeros((9, 9), bool)
    if case == "line":
        m[4, 1:8] = True
    elif case == "dot":
        m[4, 4] = True
    elif case == "diagonal":
        m[np.arange(1, 8), np.arange(1, 8)] = True
    else:
        m[1:8, 1:8] = (np.add.outer(np.arange(7), np.arange(7)) % 2) == 0
    polys = check_outline(m)
    assert len(polys) == {"line": 1, "dot": 1, "diagonal": 7, "checker": 25}[case]


def test_random_predicted_like_shapes_are_exact() -> None:
    from scipy import ndimage as ndi

    from ircr.data.synthetic import make_tile

    rng = np.random.default_rng(3)
    for _ in range(40):  # ragged blobs with specks, holes and diagonal contacts
        m = ndi.binary_opening(rng.random((24, 24)) < 0.6) ^ (rng.random((24, 24)) < 0.08)
        check_outline(m)
    _, inst = make_tile(np.random.default_rng(0), 160, touching=0.5, overlap=0.3)
    outlines = wr.instance_outlines(inst, np.unique(inst[inst > 0]))
    for k, polys in outlines.items():
        rings = [r for p in polys for r in p]
        assert np.array_equal(rasterise(rings, inst.shape), inst == k)


def _features_match_labels(inst: np.ndarray) -> tuple[int, float]:
    """Rasterise each GeoJSON feature in its bounding box; returns (nuclei, worst IoU)."""
    from ircr.io.writers import MEASUREMENTS

    ids = np.unique(inst[inst > 0])
    table: dict[str, np.ndarray] = {c: np.full(len(ids), np.nan) for c in MEASUREMENTS}
    table["id"] = ids
    feats = geojson_features(inst, table, offset_xy=(0.0, 0.0))
    worst = 1.0
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(inst)
    for k, feat in zip(ids, feats, strict=True):
        assert feat["properties"]["measurements"]["Nucleus id"] == k
        sl = boxes[k - 1]
        y0, x0 = sl[0].start, sl[1].start
        rings = [r - (x0, y0) for r in geometry_rings(feat["geometry"])]
        mask = inst[sl] == k
        drawn = rasterise(rings, mask.shape)
        iou = (drawn & mask).sum() / (drawn | mask).sum()
        if mask.sum() >= 30:
            worst = min(worst, iou)
        assert np.array_equal(drawn, mask), f"nucleus {k}: IoU {iou:.3f}"
    return len(ids), worst


def test_every_nucleus_of_real_monuseg_tiles_is_traced(monuseg_root: Path) -> None:
    from ircr.io.image import read_label_map

    names = ["TCGA-21-5784-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1"]
    total = 0
    for name in names:
        inst = read_label_map(monuseg_root / "labels_inst" / f"{name}.png")
        n, worst = _features_match_labels(inst.astype(np.int32))
        assert worst >= 0.9
        total += n
    assert total == 398 + 314 + 294  # SOURCES.md per-image counts
