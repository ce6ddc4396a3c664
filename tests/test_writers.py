"""Output writers: polygons, label TIFFs (plain and pyramidal), GeoJSON, CSV, overlay."""

from __future__ import annotations

import csv
import json
import uuid

import numpy as np
import pytest
import tifffile

from ircr.io import writers as wr


def segments_cross(ring: np.ndarray) -> bool:
    """True when two non-adjacent edges of a closed ring intersect or touch."""
    p = ring[:-1]
    n = len(p)

    def orient(p1, p2, p3) -> float:
        return float(np.sign((p2[0] - p1[0]) * (p3[1] - p1[1]) - (p2[1] - p1[1]) * (p3[0] - p1[0])))

    def on_segment(p1, p2, q) -> bool:
        return bool(min(p1[0], p2[0]) <= q[0] <= max(p1[0], p2[0])
                    and min(p1[1], p2[1]) <= q[1] <= max(p1[1], p2[1]))

    for i in range(n):
        a, b = p[i], p[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            c, d = p[j], p[(j + 1) % n]
            o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
            if o1 * o2 < 0 and o3 * o4 < 0:
                return True
            if ((o1 == 0 and on_segment(a, b, c)) or (o2 == 0 and on_segment(a, b, d))
                    or (o3 == 0 and on_segment(c, d, a)) or (o4 == 0 and on_segment(c, d, b))):
                return True
    return False


def ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(abs(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])) / 2)


def test_square_polygon_is_exact() -> None:
    m = np.zeros((7, 7), bool)
    m[1:6, 2:6] = True
    ring = wr.mask_polygon(m)
    assert np.array_equal(ring[0], ring[-1])
    # outline along the pixel edges (corner-origin frame): rows 1..5, cols 2..5
    assert sorted(map(tuple, ring[:-1].tolist())) == [(2, 1), (2, 6), (6, 1), (6, 6)]
    assert ring_area(ring) == pytest.approx(5 * 4)


@pytest.mark.parametrize("case", ["pinch", "line", "dot", "neck"])
def test_degenerate_shapes_give_simple_rings(case: str) -> None:
    m = np.zeros((12, 12), bool)
    if case == "pinch":
        m[1:5, 1:5] = True
        m[5:9, 5:9] = True
    elif case == "line":
        m[4, 2:10] = True
    elif case == "dot":
        m[5, 5] = True
    else:
        m[1:5, 1:5] = True
        m[5:7, 2] = True
        m[7:11, 1:5] = True
    ring = wr.mask_polygon(m)
    assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 4
    assert ring_area(ring) > 0
    assert not segments_cross(ring)
    ys, xs = np.nonzero(m)
    assert ring[:, 0].min() >= xs.min() and ring[:, 0].max() <= xs.max() + 1
    assert ring[:, 1].min() >= ys.min() and ring[:, 1].max() <= ys.max() + 1


def test_random_blobs_give_simple_rings() -> None:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    for _ in range(60):
        m = ndi.binary_opening(rng.random((20, 20)) < 0.55) | (rng.random((20, 20)) < 0.03)
        lab, n = ndi.label(m, structure=np.ones((3, 3)))
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        blob = lab == 1 + int(np.argmax(sizes))
        ring = wr.mask_polygon(blob)
        assert not segments_cross(ring), blob.astype(int)
        assert ring_area(ring) > 0


def test_instance_polygons_offsets() -> None:
    lab = np.zeros((30, 40), np.int32)
    lab[10:15, 20:26] = 7
    lab[0:3, 0:3] = 9
    polys = wr.instance_polygons(lab, [7, 9, 11])
    assert set(polys) == {7, 9}
    r = polys[7]
    assert r[:, 0].min() == 20 and r[:, 0].max() == 26
    assert r[:, 1].min() == 10 and r[:, 1].max() == 15


def test_label_tiff_round_trip(tmp_path) -> None:
    lab = np.zeros((300, 200), np.int32)
    lab[10:20, 30:40] = 70000  # beyond uint16
    wr.write_label_tiff(tmp_path / "l.tif", lab, mpp=0.5)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages[0]
        assert np.array_equal(page.asarray(), lab)
        assert page.compression == 8  # deflate
        num, den = page.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(0.5)


@pytest.mark.parametrize("heights", [[700, 1024, 1024, 252], [256] * 11 + [184], [3000]])
def test_label_pyramid_round_trip(tmp_path, heights) -> None:
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 500, (300, 250)).repeat(10, 0).repeat(10, 1).astype(np.int32)
    bands, y = [], 0
    for h in heights:
        bands.append(lab[y:y + h])
        y += h
    path = tmp_path / "p.tif"
    wr.LabelPyramidWriter(path, 3000, 2500, mpp=0.25).write(iter(bands))
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(3000, 2500), (1500, 1250), (750, 625), (375, 313)]
        for k, lv in enumerate(levels):
            assert np.array_equal(lv.asarray(), lab[:: 2**k, :: 2**k])
        assert tif.pages[0].is_tiled
    import tiffslide

    s = tiffslide.TiffSlide(path)
    assert s.level_count == 4 and s.properties["tiffslide.mpp-x"] == pytest.approx(0.25)


def test_label_pyramid_rejects_short_bands(tmp_path) -> None:
    w = wr.LabelPyramidWriter(tmp_path / "p.tif", 600, 300)
    with pytest.raises(ValueError, match="rows"):
        w.write([np.zeros((500, 300), np.int32)])


def test_geojson_feature_collection(tmp_path) -> None:
    ring = wr.mask_polygon(np.ones((4, 4), bool))
    with wr.GeoJSONWriter(tmp_path / "a.geojson") as g:
        g.add([wr.detection_feature(ring, {"Area µm^2": 3.0, "Bad": float("nan")})] * 2)
    data = json.loads((tmp_path / "a.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    f = data["features"][0]
    uuid.UUID(f["id"])
    assert f["geometry"]["type"] == "Polygon"
    coords = f["geometry"]["coordinates"][0]
    assert coords[0] == coords[-1]
    props = f["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"]["name"] == "Nucleus"
    assert props["measurements"] == {"Area µm^2": 3.0}  # NaN left out


def test_empty_geojson_is_valid(tmp_path) -> None:
    wr.GeoJSONWriter(tmp_path / "e.geojson").close()
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []


def test_csv_writer(tmp_path) -> None:
    table = {c: np.arange(3, dtype=np.float64) + 0.5 for c in wr.TABLE_COLUMNS}
    table["id"] = np.array([4, 5, 6])
    table["prior_score"] = np.array([0.1, np.nan, 0.3])
    with wr.CSVWriter(tmp_path / "t.csv") as w:
        w.add(table)
        w.add(table)
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 6 and list(rows[0]) == list(wr.TABLE_COLUMNS)
    assert rows[1]["id"] == "5" and rows[1]["prior_score"] == "" and rows[2]["area_px"] == "2.5"


def test_overlay_outlines_only_boundaries() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    lab = np.zeros((10, 10), np.int32)
    lab[2:8, 2:8] = 1
    out = wr.overlay_image(img, lab)
    drawn = (out == wr.NUCLEUS_COLOR).all(axis=2)
    assert drawn[2, 2:8].all() and drawn[7, 2:8].all() and not drawn[3:7, 3:7].any()
    assert not drawn[0].any()
