"""Tile source (engine/tile_source.py): images, folders, prepared datasets, slides; skips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ircr.data.prepare import prepare_dataset
from ircr.data.synthetic import make_tile
from ircr.engine.tile_source import open_tile_sources, sample_tiles
from ircr.errors import IrcrError
from test_wsi import write_pyramid

GLASS = (243, 241, 246)


def coded_image(h: int, w: int) -> np.ndarray:
    """Pixel (y, x) = (x % 251, y % 251, 60): saturated almost everywhere, position readable."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 251, yy % 251, np.full_like(xx, 60)], -1).astype(np.uint8)


def test_monuseg_tiles_at_half_resolution_are_deterministic(monuseg_root: Path) -> None:
    files = sorted((monuseg_root / "images").glob("*.tif"))[:2]
    sources, skipped = open_tile_sources(files, target_mpp=0.5, mpp_override=0.25)
    assert skipped == [] and len(sources) == 2
    # whole tiles are tissue: weight = 1000^2 px at 0.25 -> 500^2 px at 0.5 (+- mask edge)
    assert sources[0].tissue_pixels == pytest.approx(500 * 500, rel=0.02)
    a = sample_tiles(sources, 6, 64, seed=3)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sample_tiles(sources, 6, 64, seed=3))
    assert not np.array_equal(a, sample_tiles(sources, 6, 64, seed=4))
    assert a.std() > 10  # real H&E, not padding


def test_tile_is_an_exact_window_at_the_same_mpp_and_area_mean_at_half(tmp_path: Path) -> None:
    img = coded_image(300, 400)
    p = tmp_path / "coded.png"
    Image.fromarray(img).save(p, dpi=(25400 / 0.5, 25400 / 0.5))  # 0.5 µm/px from the file
    (src,), _ = open_tile_sources([p], target_mpp=0.5)
    assert src.mpp == pytest.approx(0.5) and src.mpp_source == "file"
    tiles = sample_tiles([src], 8, 32, seed=0)
    for t in tiles:
        x0, y0 = int(t[0, 0, 0]), int(t[0, 0, 1])  # read the corner's coordinates (mod 251)
        hits = [(y, x) for y in range(y0, 300 - 31, 251) for x in range(x0, 400 - 31, 251)
                if np.array_equal(img[y:y + 32, x:x + 32], t)]
        assert hits  # an exact window of the image (two candidates when x0 < 400 - 251)
    # at 1.0 µm/px a tile is the 2x2 mean of a 64 px window (independent: numpy reshape-mean)
    (src2,), _ = open_tile_sources([p], target_mpp=1.0)
    flat = np.full((300, 400, 3), 100, np.uint8)
    flat[:, :, 0] = np.tile(np.arange(400) % 2 * 100 + 50, (300, 1))  # 50/150 columns
    q = tmp_path / "stripes.png"
    Image.fromarray(flat).save(q, dpi=(25400 / 0.5, 25400 / 0.5))
    (src3,), _ = open_tile_sources([q], target_mpp=1.0)
    t = sample_tiles([src3], 2, 16, seed=1)
    assert src2.factor == 2.0 and np.all(t[..., 0] == 100)  # mean of 50 and 150


def test_slide_tiles_come_from_tissue_only(tmp_path: Path) -> None:
    img = np.full((700, 900, 3), GLASS, np.uint8)
    tissue, _ = make_tile(np.random.default_rng(1), (200, 240))
    img[400:600, 100:340] = tissue
    slide = tmp_path / "slide.tif"
    write_pyramid(slide, img, 0.25)
    (src,), skipped = open_tile_sources([slide], target_mpp=0.5)
    assert src.kind == "slide" and skipped == []
    tiles = sample_tiles([src], 12, 32, seed=0)  # 32 px at 0.5 = 64 level-0 px, level 1 read
    glass = np.all(tiles == np.array(GLASS, np.uint8), axis=-1)
    assert not glass[:, 16, 16].any()  # every centre on tissue
    # the same tile read straight from level 1 of the pyramid (independent reader: tifffile)
    level1 = img[::2, ::2]
    found = 0
    for t in tiles:
        res = cv2.matchTemplate(level1, t, cv2.TM_SQDIFF)  # float: confirm exactly
        y, x = np.unravel_index(int(np.argmin(res)), res.shape)
        found += int(np.array_equal(level1[y:y + 32, x:x + 32], t))
    assert found == len(tiles)


def test_bad_sources_are_skipped_with_one_line_each(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(make_tile(np.random.default_rng(0), (96, 96))[0]).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    (tmp_path / "empty").mkdir()
    lines: list[str] = []
    paths = [good, tmp_path / "broken.png", tmp_path / "glass.png", tmp_path / "empty",
             tmp_path / "missing.tif"]
    sources, skipped = open_tile_sources(paths, target_mpp=0.25, mpp_override=0.25,
                                         log=lines.append)
    assert [s.name for s in sources] == [str(good)]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"broken.png", "glass.png", "empty", "missing.tif"}
    assert "no tissue" in reasons["glass.png"] and "no supported" in reasons["empty"]
    assert "not found" in reasons["missing.tif"]
    assert len(lines) == 4 and all("\n" not in x and x.endswith("; skipped") for x in lines)
    # without --mpp a PNG without dpi has no pixel size: skipped, not guessed
    _, skipped = open_tile_sources([good], target_mpp=0.25)
    assert len(skipped) == 1 and "--mpp" in skipped[0].reason
    with pytest.raises(IrcrError, match="no usable source"):
        sample_tiles([], 1, 8, 0)


def test_prepared_dataset_leaves_out_the_validation_images(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 64}, patch=64,
                    ratio="1/2", val_fraction=0.25)
    split = "ratio_1-2_seed0_val0.25"
    every, _ = open_tile_sources([out], target_mpp=0.25)
    kept, _ = open_tile_sources([out], target_mpp=0.25, exclude_splits=[split])
    assert len(every) == 4 and len(kept) == 3
    import yaml

    val = yaml.safe_load((out / "splits" / f"{split}.yaml").read_text())["val_images"]
    assert {s.name.rsplit("/", 1)[1] for s in every} - {s.name.rsplit("/", 1)[1] for s in kept} \
        == set(val)
    assert all(s.mpp_source == "dataset" for s in kept)
    with pytest.raises(IrcrError, match="split not found"):
        open_tile_sources([out], target_mpp=0.25, exclude_splits=["nope"])
