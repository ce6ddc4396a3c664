"""Figures are written at their stated size with titles, legends and visible outlines (14.8)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ircr.io.figures import caption_image, panel_figure, thick_overlay


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    return img[..., ::-1]


def test_panel_figure_size_and_legend(tmp_path: Path) -> None:
    img = np.full((50, 60, 3), 128, np.uint8)
    out = panel_figure(tmp_path / "f.png", [(img, f"panel {k}") for k in range(5)], "title",
                       legend=[((255, 0, 0), "red thing")], ncols=3, note="units")
    # 3 columns x 2 rows of 3.2 in panels at 100 dpi + 0.75 in title band + 0.45 in legend band
    rgb = _rgb(out)
    assert rgb.shape[:2] == (2 * 320 + 75 + 45, 3 * 320)
    assert ((rgb[-45:] == (255, 0, 0)).all(axis=2)).sum() > 30  # legend swatch in its band
    one = _rgb(panel_figure(tmp_path / "g.png", [(img, "only")], "t"))
    assert one.shape[:2] == (320 + 75, 320)


def test_caption_band_and_thick_outlines() -> None:
    img = np.zeros((400, 1400, 3), np.uint8)
    cap = caption_image(img, "name: AJI 0.5", [((0, 200, 0), "ground truth")])
    # scale 1.0 at 1400 px wide: 2 lines of 38 px + 6 px
    assert cap.shape == (400 + 82, 1400, 3) and np.array_equal(cap[82:], img)
    assert ((cap[:82] == (0, 200, 0)).all(axis=2)).sum() > 100
    inst = np.zeros((320, 320), np.int32)
    inst[100:200, 100:200] = 1
    drawn = (thick_overlay(np.zeros((320, 320, 3), np.uint8), inst, (255, 0, 0)) > 0).any(2)
    assert drawn[150, 100:102].all() and not drawn[150, 102]  # 2 px at 320 px (1 per 160)
    assert not drawn[150, 99]  # drawn inside the nucleus only
