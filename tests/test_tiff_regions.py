"""tifffile-only slide backend: same pixels as the array, used when tiffslide is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ircr.io.tiff_regions import TiffRegionReader
from ircr.io.wsi import open_slide


def write(path: Path, img: np.ndarray, tiled: bool, levels: int = 2) -> None:
    opts: dict = {"photometric": "rgb", "compression": "zlib", "resolutionunit": "CENTIMETER"}
    opts.update({"tile": (64, 128)} if tiled else {"rowsperstrip": 37})
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=levels, resolution=(4e4, 4e4), **opts)
        for k in range(1, levels + 1):
            tif.write(img[:: 2**k, :: 2**k], subfiletype=1, resolution=(4e4 / 2**k,) * 2, **opts)


def reference(img: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Region of ``img`` with zeros outside, by hand."""
    out = np.zeros((h, w, 3), np.uint8)
    for r in range(h):
        for c in range(w):
            if 0 <= y + r < img.shape[0] and 0 <= x + c < img.shape[1]:
                out[r, c] = img[y + r, x + c]
    return out


@pytest.mark.parametrize("tiled", [True, False])
def test_regions_equal_the_image(tmp_path: Path, tiled: bool) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 410, 3), dtype=np.uint8)
    p = tmp_path / "s.tif"
    write(p, img, tiled)
    r = TiffRegionReader(p)
    assert r.level_dimensions == [(410, 300), (205, 150), (103, 75)]
    assert r.level_downsamples[1] == pytest.approx(2.0)
    # tile/strip corners, the right/bottom edge, and regions partly outside the image
    for x, y, w, h in [(0, 0, 64, 64), (120, 60, 140, 90), (380, 280, 50, 40), (-5, -3, 20, 9),
                       (400, 10, 30, 5)]:
        assert np.array_equal(r.read_region((x, y), 0, (w, h)), reference(img, x, y, w, h))
    half = img[::2, ::2]
    assert np.array_equal(r.read_region((100, 40), 1, (70, 50)), half[20:70, 50:120])
    r.close()


def test_open_slide_without_tiffslide_or_openslide(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)
    p = tmp_path / "s.tif"
    write(p, img, tiled=True)
    monkeypatch.setitem(sys.modules, "tiffslide", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "openslide", None)
    with open_slide(p) as s:
        assert s.backend == "tifffile"
        assert s.dimensions == (260, 200) and s.level_count == 3
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.25), "file")
        assert np.array_equal(s.read_region(30, 70, 0, 150, 100), img[70:170, 30:180])
        thumb, scale = s.thumbnail(130)
        assert thumb.shape == (100, 130, 3) and scale == pytest.approx(0.5)
