"""The fast default path of ``ircr segment`` (issue 23 point 2): one network window per tile.

The packaged model runs one 1088 px window per image/tile instead of 256 px windows blended
with 64 px overlap. Checked here: the shrunken single window is exactly the network on the
reflect-padded image (no blending left); images at least one window wide are tiled as before;
the stitching tile default gives one window per slide tile; and on a real MoNuSeg crop the new
path's instances agree with the old path's better than the old path agrees with itself
shifted by 96 px (the old path's own window-grid noise, measured in the test, not assumed).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch

import ircr
from ircr.engine.segmenter import default_tile
from ircr.inference.predict import fitted_window, predict_maps
from ircr.metrics import instance_metrics
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import wbis


def test_fitted_window_by_hand() -> None:
    assert fitted_window(1064, 1088) == 1064  # a 1000 px tile + 2 x 32 px context
    assert fitted_window(1065, 1088) == 1072  # rounded up to a multiple of 8
    assert fitted_window(1088, 1088) == 1088
    assert fitted_window(5000, 1088) == 1088  # wider than one window: tiled as before
    assert fitted_window(300, 256) == 256


def test_default_tile_one_window_per_tile() -> None:
    # slides: min(1088, 768) - 64 (context) - 2 x 96 (margin) = 512; images and small
    # windows keep 1024
    assert default_tile(1088, 64, 96, slide=True) == 512
    assert default_tile(1088, 64, 96) == 1024
    assert default_tile(256, 64, 96, slide=True) == 1024


def test_single_window_is_the_plain_network() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]),
                        load_pretrained=False).eval()
    img = np.random.default_rng(0).integers(0, 256, (100, 84, 3), np.uint8)
    prob, hv = predict_maps(model, img, window=1088, overlap=64)
    padded = np.pad(img, ((32, 36), (32, 36), (0, 0)), mode="reflect")  # 168, 152 px
    with torch.inference_mode():
        out = model(torch.from_numpy(padded).permute(2, 0, 1)[None].float())
    ref = torch.softmax(out["np"], 1)[0, 1, 32:132, 32:116].numpy()
    np.testing.assert_allclose(prob, ref, atol=2e-5)
    np.testing.assert_allclose(hv, out["hv"][0, :, 32:132, 32:116].numpy(), rtol=1e-4,
                               atol=1e-4)  # (x * w) / w rounding, w down to 6e-4


def test_packaged_model_uses_the_fast_setting() -> None:
    seg = ircr.load_model(None, device="cpu")
    assert (seg.window, seg.overlap, seg.batch_size, seg.tile) == (1088, 64, 1, 1024)
    assert seg.slide_tile == 512
    assert ircr.load_model(None, device="cpu", tile=700).slide_tile == 700


def test_new_path_keeps_the_instances_on_a_real_crop(monuseg_root: Path) -> None:
    """Real MoNuSeg crop of 360 px: old 256/64 blended windows vs one fitted window.

    The fitted window gives every pixel more context than the old 256 px windows, so the two
    paths may differ a little where the old windows' edges fell; the new path must agree with
    the old one closely and be at least as accurate against the crop's own annotation.
    """
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    path = sorted(glob.glob(str(monuseg_root / "images" / "*.tif")))[3]
    img = np.ascontiguousarray(tifffile.imread(path)[300:660, 300:660, :3])
    label = monuseg_root / "labels_inst" / (Path(path).stem + ".png")
    gt = np.asarray(Image.open(label)).astype(np.int32)[300:660, 300:660]
    seg = ircr.load_model(None, device="cpu")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    def inst(image: np.ndarray, window: int, overlap: int) -> np.ndarray:
        prob, hv = predict_maps(seg.model, image, window, overlap, 8)
        return wbis(prob, hv, seg.postproc)

    old = inst(img, 256, 64)
    new = inst(img, 1088, 64)
    assert old.max() > 40 and gt.max() > 50  # a real, nucleus-dense crop
    assert instance_metrics(old, new).aji >= 0.9
    assert instance_metrics(gt, new).aji >= instance_metrics(gt, old).aji - 0.01
