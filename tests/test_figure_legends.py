"""Issue 27 point 16: figure legends fit the figure; seeds of one method are distinguishable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from ircr.io.figures import panel_figure

LEGEND = [((0, 200, 0), "teacher nucleus kept (outline)"), ((220, 0, 0), "rejected by the prior"),
          ((0, 90, 255), "student outline"), ((255, 220, 0), "matched teacher-student pair")]


@pytest.mark.parametrize("n_panels", [1, 2])
def test_legend_wider_than_the_figure_wraps_instead_of_being_cut(tmp_path: Path,
                                                                 n_panels: int) -> None:
    img = np.full((40, 40, 3), 128, np.uint8)
    path = panel_figure(tmp_path / "f.png", [(img, "p")] * n_panels, "t", legend=LEGEND)
    rgb = cv2.imread(str(path))[..., ::-1]
    band = rgb[-int(0.45 * 100 + 3 * 22):]  # legend band: up to 4 rows
    assert (band[:, :3] == 255).all() and (band[:, -3:] == 255).all()  # nothing at the edges
    for color, _ in LEGEND:  # every swatch drawn in full
        assert (band == color).all(axis=2).sum() > 30, color


def test_seeds_of_one_method_get_their_own_marker_and_colour_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from ircr.experiment.figures import plot_curves

    runs = []
    for method in ("supervised", "ircr"):
        for seed in (0, 1, 2):
            rid = f"{method}_s{seed}"
            d = tmp_path / "runs" / rid
            d.mkdir(parents=True)
            (d / "metrics.csv").write_text("iterations,train_loss,val_student_aji\n5,1.0,0.4\n")
            runs.append({"run_id": rid, "method": method, "ratio": "1/8", "split_seed": seed,
                         "train_seed": seed})
    calls: list[dict[str, Any]] = []
    original = Axes.plot

    def spy(self: Axes, *args: Any, **kw: Any) -> Any:
        calls.append(kw)
        return original(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    (page,) = plot_curves(tmp_path, runs)
    assert page.is_file()
    labelled = [c for c in calls if c.get("label")]
    assert len(labelled) == 6 * 3  # 6 runs x 3 panels
    by_method: dict[str, list[dict[str, Any]]] = {}
    for kw in labelled:
        by_method.setdefault(kw["label"].split()[0], []).append(kw)
    for kws in by_method.values():
        assert len({kw["color"] for kw in kws}) == 1
        assert len({kw["marker"] for kw in kws}) == 3  # 3 seeds, 3 markers (x 3 panels)
    assert by_method["supervised"][0]["color"] != by_method["ircr"][0]["color"]


def test_caption_legend_on_a_small_patch_wraps_instead_of_being_cut() -> None:
    from ircr.io.figures import caption_image
    from ircr.ssl.diagnostics import LEGEND as DIAG

    img = np.zeros((128, 128, 3), np.uint8)
    cap = caption_image(img, "e3_p19", DIAG)
    band = cap[: cap.shape[0] - 128]
    assert np.array_equal(cap[band.shape[0]:], img)
    assert (band[:, -4:] == 255).all()  # no text or swatch reaches the right edge
    for color, _ in DIAG:  # every swatch drawn ("pair" was cut to "pa" before)
        assert (band == color).all(axis=2).sum() >= 20, color
    wide = caption_image(np.zeros((10, 1400, 3), np.uint8), "t", DIAG)
    assert wide.shape[0] == 10 + 82  # one legend line when it fits (2 x 38 px + 6)
