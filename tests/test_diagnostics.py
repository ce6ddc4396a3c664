"""IRCR diagnostic overlays: readable at a glance (outlines, not a colour wash; legend band)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ircr.data.synthetic import make_tile
from ircr.ssl.diagnostics import KEPT, REJECTED, instance_overlay, save_overlays


def test_kept_nuclei_are_outlined_rejected_ones_filled() -> None:
    img, inst = make_tile(np.random.default_rng(0), 96)
    ids = np.unique(inst[inst > 0])
    ov = instance_overlay(img, inst, rejected_ids=[int(ids[0])], scale=3)
    assert ov.shape == (288, 288, 3)
    kept = ndi.binary_erosion(inst == ids[1], iterations=2)
    big = np.repeat(np.repeat(kept, 3, 0), 3, 1)
    # inside a kept nucleus the tissue is shown as it is (no green wash)
    assert np.array_equal(ov[big], np.repeat(np.repeat(img, 3, 0), 3, 1)[big])
    rej = np.repeat(np.repeat(ndi.binary_erosion(inst == ids[0], iterations=2), 3, 0), 3, 1)
    tint = ov[rej].astype(int) - np.repeat(np.repeat(img, 3, 0), 3, 1)[rej].astype(int)
    assert tint[:, 0].mean() > 20  # rejected: filled red
    assert (ov == np.asarray(KEPT, np.uint8)).all(axis=-1).any()
    assert (ov == np.asarray(REJECTED, np.uint8)).all(axis=-1).any()


def test_saved_overlay_has_a_title_and_legend_band(tmp_path: Path) -> None:
    img, inst = make_tile(np.random.default_rng(1), 64)
    (path,) = save_overlays(tmp_path, [{"image": img, "teacher": inst, "name": "e002_p5"}])
    out = cv2.imread(str(path))
    assert out.shape[1] == 192 and out.shape[0] > 192  # 3x the patch + the header band
    assert (out[:10] == 255).all(axis=-1).mean() > 0.8  # white header (title, legend)
