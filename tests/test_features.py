"""Per-nucleus features: hand-computed shapes, and skimage.regionprops on real MoNuSeg labels."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed
from skimage.measure import regionprops

from ircr.errors import IrcrError
from ircr.features import haematoxylin_values, nucleus_features

DENSE = "TCGA-HE-7130-01Z-00-DX1"  # 1,862 nuclei (SOURCES.md), the densest MoNuSeg tile


def _read_monuseg(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    img = tifffile.imread(root / "images" / f"{name}.tif")[..., :3]
    lab = np.array(Image.open(root / "labels_inst" / f"{name}.png")).astype(np.int32)
    return np.ascontiguousarray(img), lab


def test_rectangle_by_hand() -> None:
    inst = np.zeros((10, 12), np.int32)
    inst[2:6, 3:9] = 7  # 4 x 6 rectangle
    f = nucleus_features(None, inst)
    assert f["id"].tolist() == [7]
    assert f["area"][0] == 24
    assert f["perimeter"][0] == pytest.approx(16.0)  # 2(h+w) - 4 for a digital rectangle
    assert f["solidity"][0] == pytest.approx(1.0)
    assert f["extent"][0] == pytest.approx(1.0)
    assert f["circularity"][0] == pytest.approx(4 * math.pi * 24 / 16**2)
    assert f["centroid_y"][0] == pytest.approx(3.5)
    assert f["centroid_x"][0] == pytest.approx(5.5)
    assert f["bbox"][0].tolist() == [2, 3, 6, 9]
    assert not f["touches_border"][0]
    assert np.isnan(f["haematoxylin"][0])


def test_l_shape_solidity_extent_and_eccentricity() -> None:
    inst = np.zeros((8, 8), np.int32)
    inst[1:4, 1:4] = 1  # 3x3 square: eccentricity 0
    inst[5, 1:6] = 2  # 1x5 line: eccentricity 1
    inst[0:3, 6] = 3  # touches the top edge
    f = nucleus_features(None, inst)
    assert f["eccentricity"][0] == pytest.approx(0.0, abs=1e-12)
    assert f["eccentricity"][1] == pytest.approx(1.0)
    assert f["touches_border"].tolist() == [False, False, True]
    ell = np.zeros((6, 6), np.int32)
    ell[1:5, 1] = 1
    ell[4, 1:5] = 1  # L of 7 pixels in a 4x4 box
    g = nucleus_features(None, ell)
    assert g["extent"][0] == pytest.approx(7 / 16)
    assert g["solidity"][0] < 1.0


def test_ids_sorted_noncontiguous_and_empty() -> None:
    inst = np.zeros((20, 20), np.int64)
    inst[1:4, 1:4] = 900
    inst[10:12, 10:15] = 3
    f = nucleus_features(None, inst)
    assert f["id"].tolist() == [3, 900]
    assert f["area"].tolist() == [10, 9]
    e = nucleus_features(np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.int32))
    assert all(len(v) == 0 for v in e.values())
    assert e["bbox"].shape == (0, 4)


def test_haematoxylin_equals_rgb2hed() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.allclose(haematoxylin_values(img), rgb2hed(img)[..., 0], atol=1e-12)
    inst = np.zeros((40, 50), np.int32)
    inst[5:15, 5:20] = 1
    inst[20:30, 30:45] = 2
    f = nucleus_features(img, inst)
    hed = rgb2hed(img)[..., 0]
    assert f["haematoxylin"][0] == pytest.approx(hed[5:15, 5:20].mean())
    assert f["haematoxylin"][1] == pytest.approx(hed[20:30, 30:45].mean())


@pytest.mark.parametrize(
    "image, inst, match",
    [
        (None, np.zeros((4, 4), np.float32), "integer instance map"),
        (None, np.zeros((4, 4, 2), np.int32), "integer instance map"),
        (None, -np.ones((4, 4), np.int32), "negative"),
        (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.int32), "image"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.int32), "uint8"),
    ],
)
def test_bad_input(image: np.ndarray | None, inst: np.ndarray, match: str) -> None:
    with pytest.raises(IrcrError, match=match):
        nucleus_features(image, inst)


def test_matches_regionprops_on_real_dense_tile(monuseg_root: Path) -> None:
    """Every feature equals skimage.regionprops (independent implementation) on 1,862 nuclei."""
    img, lab = _read_monuseg(monuseg_root, DENSE)
    t0 = time.perf_counter()
    f = nucleus_features(img, lab)
    elapsed = time.perf_counter() - t0
    assert f["id"].size == 1862  # published count (SOURCES.md)
    hed = rgb2hed(img)[..., 0]
    props = regionprops(lab, intensity_image=hed)
    for key, attr in [("area", "area"), ("perimeter", "perimeter"), ("solidity", "solidity"),
                      ("extent", "extent"), ("eccentricity", "eccentricity"),
                      ("haematoxylin", "intensity_mean")]:
        ref = np.array([getattr(p, attr) for p in props])
        np.testing.assert_allclose(f[key], ref, rtol=1e-9, atol=1e-9, err_msg=key)
    cy = np.array([p.centroid[0] for p in props])
    np.testing.assert_allclose(f["centroid_y"], cy, atol=1e-9)
    # measured ~0.15 s on a shared 2-core CPU; generous bound against a pathological slowdown
    assert elapsed < 5.0
