"""``ircr segment`` gives the same instances however an image is tiled (issue 23 point 2).

A real MoNuSeg crop segmented with the packaged default model as one tile and as 2 x 2
stitching tiles (responsible-tile rule, 96 px margins) must give the same nuclei. Before
``gradient_range: fixed`` WBIS min-max-normalised the Sobel response per call, so every
marker depended on the extremes of the tile it was cut from: AJI 0.80 between one tile and
2 x 2 tiles of a 1000 px MoNuSeg tile (docs/benchmarks.md), although the network maps were
the same in every core.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch

import ircr
from ircr.metrics import instance_metrics


@pytest.mark.parametrize("tta", ["off", "flips"])
def test_one_tile_and_2x2_tiles_give_the_same_instances(monuseg_root: Path, tta: str) -> None:
    """Also with test-time augmentation: each window's mirrored passes see the same window,
    so the averaged maps of a tile's core do not depend on the tiling either."""
    tifffile = pytest.importorskip("tifffile")
    path = sorted(glob.glob(str(monuseg_root / "images" / "*.tif")))[3]  # TCGA-38-6178
    img = np.ascontiguousarray(tifffile.imread(path)[300:748, 300:748, :3])
    torch.set_num_threads(min(2, torch.get_num_threads()))
    one = ircr.load_model(None, device="cpu", tta=tta)
    four = ircr.load_model(None, device="cpu", tile=224, tta=tta)
    assert one.postproc.gradient_range == "fixed"  # the packaged postproc.yaml
    whole = one.segment(img, mpp=0.25)
    tiled = four.segment(img, mpp=0.25)
    assert whole.stats["tiles"] == 1 and tiled.stats["tiles"] == 4
    assert len(whole) > 60  # a real, nucleus-dense crop (87 annotated nuclei touch it)
    assert len(tiled) == len(whole)
    assert instance_metrics(whole.inst, tiled.inst).aji >= 0.99
