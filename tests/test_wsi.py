"""Whole-slide reading, pixel size from metadata, slide detection, tissue mask, device choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ircr.engine.tissue import region_has_tissue, tissue_mask
from ircr.errors import IrcrError
from ircr.inference.device import describe_device, select_device
from ircr.io.wsi import image_mpp, is_slide, open_slide, tiff_mpp


def write_pyramid(path: Path, img: np.ndarray, mpp: float | None, ome: bool = False,
                  levels: int = 2) -> None:
    """Tiled pyramidal TIFF (SubIFDs), resolution tags when ``mpp`` (OME: PhysicalSize)."""
    opts = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    res = ({"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
           if mpp and not ome else {})
    md = ({"PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
           "PhysicalSizeYUnit": "µm"} if ome and mpp else None)
    with tifffile.TiffWriter(path, ome=ome) as tif:
        tif.write(img, subifds=levels, metadata=md, **res, **opts)
        for k in range(1, levels + 1):
            f = 2**k
            sub = {"resolution": (1e4 / mpp / f,) * 2, "resolutionunit": "CENTIMETER"} \
                if mpp and not ome else {}
            tif.write(img[::f, ::f], subfiletype=1, **sub, **opts)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    return img


def test_pyramid_slide_reading(tmp_path, image) -> None:
    p = tmp_path / "s.tif"
    write_pyramid(p, image, 0.25)
    assert is_slide(p)
    with open_slide(p) as s:
        assert s.backend in ("tiffslide", "openslide")
        assert s.dimensions == (800, 600) and s.level_count == 3
        assert s.level_downsamples == pytest.approx([1, 2, 4])
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.25), "file")
        assert np.array_equal(s.read_region(100, 50, 0, 64, 32), image[50:82, 100:164])
        assert np.array_equal(s.read_region(200, 100, 1, 10, 10), image[::2, ::2][50:60, 100:110])
        assert s.best_level(1.0) == 0 and s.best_level(2.0) == 1 and s.best_level(3.9) == 1
        thumb, scale = s.thumbnail(200)
        assert thumb.shape == (150, 200, 3) and scale == pytest.approx(0.25)


def test_mpp_override_and_missing(tmp_path, image) -> None:
    p = tmp_path / "nompp.tif"
    write_pyramid(p, image, None)
    with open_slide(p) as s:
        assert s.mpp is None and s.mpp_source == "missing"
    with open_slide(p, mpp=0.5) as s:
        assert (s.mpp, s.mpp_source) == (0.5, "--mpp")


def test_ome_tiff_physical_size(tmp_path, image) -> None:
    p = tmp_path / "s.ome.tif"
    write_pyramid(p, image, 0.5, ome=True)
    assert tiff_mpp(p) == pytest.approx(0.5)
    with open_slide(p) as s:
        assert s.mpp == pytest.approx(0.5)


def test_plain_images_are_tiles(tmp_path, image, monuseg_root) -> None:
    tile = sorted((monuseg_root / "images").glob("*.tif"))[0]
    assert not is_slide(tile)
    assert image_mpp(tile) is None  # MoNuSeg tiles carry no pixel size
    png = tmp_path / "a.png"
    Image.fromarray(image).save(png, dpi=(25400 / 0.5, 25400 / 0.5))
    assert not is_slide(png) and image_mpp(png) == pytest.approx(0.5, rel=1e-3)
    Image.fromarray(image).save(tmp_path / "screen.png", dpi=(72, 72))
    assert image_mpp(tmp_path / "screen.png") is None  # 352 µm/px is not a microscope
    tifffile.imwrite(tmp_path / "t.tif", image, resolution=(1e4 / 0.25,) * 2,
                     resolutionunit="CENTIMETER")
    assert image_mpp(tmp_path / "t.tif") == pytest.approx(0.25)


def test_corrupt_and_unsupported_files(tmp_path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 10)
    with pytest.raises(IrcrError, match="bad.tif: cannot read TIFF") as e:
        is_slide(bad)
    assert "\n" not in str(e.value)
    svs = tmp_path / "x.svs"
    svs.write_bytes(b"not a slide")
    with pytest.raises(IrcrError, match="x.svs: cannot open as a whole-slide image"):
        open_slide(svs)
    with pytest.raises(IrcrError, match="file not found"):
        open_slide(tmp_path / "missing.svs")


def test_tissue_mask_separates_glass() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 6, (200, 300, 3), dtype=np.uint8)
    thumb = np.full((200, 300, 3), 242, np.uint8) + noise
    tissue = np.zeros((200, 300), bool)
    tissue[40:160, 60:200] = True
    pink = np.array([200, 120, 170]) + rng.normal(0, 12, (200, 300, 3))
    thumb[tissue] = np.clip(pink[tissue], 0, 255).astype(np.uint8)
    m = tissue_mask(thumb)
    assert m[tissue].mean() > 0.98
    assert m[~tissue].mean() < 0.03
    assert region_has_tissue(m, 0.1, 500, 700, 600, 800)  # full-res box inside the tissue
    assert not region_has_tissue(m, 0.1, 1700, 0, 2000, 500)  # bottom-left glass


def test_tissue_mask_all_tissue_and_all_glass(monuseg_root) -> None:
    from ircr.io.image import read_image

    tile = read_image(sorted((monuseg_root / "images").glob("*.tif"))[0])
    assert tissue_mask(tile[::4, ::4]).mean() > 0.9  # a MoNuSeg tile is all tissue
    assert not tissue_mask(np.full((64, 64, 3), 245, np.uint8)).any()


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type in ("cpu", "cuda", "mps")
    assert describe_device(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(IrcrError, match="unknown device 'gpu0'"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(IrcrError, match="CUDA is not available"):
            select_device("cuda")


class _DarkBlobs(torch.nn.Module):
    """Cheap stand-in network: NP from darkness, HV pointing away from blob centres."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.nn.functional
        d = (150.0 - x.mean(1, keepdim=True)) / 10
        m = f.avg_pool2d(torch.sigmoid(d), 9, 1, 4, count_include_pad=False)
        gx = f.pad(m[..., :, 2:] - m[..., :, :-2], (1, 1, 0, 0))
        gy = f.pad(m[..., 2:, :] - m[..., :-2, :], (0, 0, 1, 1))
        return {"np": torch.cat([-d, d], 1), "hv": torch.clamp(-torch.cat([gx, gy], 1) * 10, -1, 1)}


def test_slide_streaming_memory_is_bounded(tmp_path, monkeypatch) -> None:
    """Peak traced (numpy) memory does not grow with the slide's height; outputs agree.

    The thumbnail is capped at 128 px here (2048 by default: bounded, but on these small
    test slides it would still scale with the slide).
    """
    import csv
    import tracemalloc

    import ircr.engine.slide as slide_mod

    monkeypatch.setattr(slide_mod, "THUMB_SIZE", 128)

    from ircr.data.synthetic import make_tile
    from ircr.engine.segmenter import NucleusSegmenter
    from ircr.postproc.watershed import WBISParams

    seg = NucleusSegmenter(_DarkBlobs(), WBISParams(), model_mpp=0.25, device="cpu", tile=64,
                           margin=24, window=64, overlap=16, prior=None)
    peaks, counts = [], []
    # 1536 and 3072 rows: both past the few tile rows the pipeline keeps in flight (a slide
    # of only 3 tile rows never fills it and would measure low), 2x the area between them.
    for h in (1536, 3072):
        img = np.concatenate([make_tile(np.random.default_rng(i), (128, 256))[0]
                              for i in range(h // 128)])
        write_pyramid(tmp_path / f"s{h}.tif", img, 0.25, levels=1)
        tracemalloc.start()
        summary = seg.process(tmp_path / f"s{h}.tif", tmp_path / "out", tissue=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        labels = tifffile.imread(tmp_path / "out" / f"s{h}_labels.tif")
        with (tmp_path / "out" / f"s{h}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert labels.shape == (h, 256)
        assert summary["n_nuclei"] == len(rows) == len(np.unique(labels)) - 1
        counts.append(summary["n_nuclei"])
    assert counts[1] > 1.7 * counts[0] > 0  # 2x the area, ~2x the nuclei ...
    # ... but not more memory: a whole-slide label buffer alone would add 1.5 MB (int32)
    assert peaks[1] < peaks[0] + 0.5 * 2**20, peaks
