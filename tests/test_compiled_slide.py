"""Slides with a compiled network: one network-window shape for every tile.

A compiled network builds one graph per input shape (tens of seconds each on CPU) and torch
stops compiling after 8 shapes; border and last tiles of a slide come in several read shapes
that depend on the slide's size. With ``compile`` the slide pipeline gives every tile the same
network window (its read window slid inside the slide), then cuts the instance map back to the
read window, so the stitching is unchanged. The network here is the tiny fixed ``Dark`` model
of test_segment_faults, run eagerly (``compiled`` patched out): what is tested is the tiling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from ircr.metrics import instance_metrics
from test_segment import make_slide
from test_segment_faults import dark_segmenter


def _window_shapes(seg: Any, monkeypatch: pytest.MonkeyPatch,
                   compiled: set[bool] | None = None) -> set[tuple[int, int]]:
    """The set that collects the shape of every network window ``seg``'s family is given
    (and into ``compiled`` whether each call's setting asked for the compiled network)."""
    shapes: set[tuple[int, int]] = set()
    predict = seg.family.predict_later

    def spy(model: Any, window: np.ndarray, setting: Any) -> Any:
        shapes.add(window.shape[:2])
        if compiled is not None:
            compiled.add(setting.compile)
        return predict(model, window, setting)

    monkeypatch.setattr(seg.family, "predict_later", spy)
    return shapes


def _run(slide: Path, out: Path, compile: bool, monkeypatch: pytest.MonkeyPatch
         ) -> tuple[dict[str, Any], np.ndarray, set[tuple[int, int]]]:
    seg = dark_segmenter()
    seg.compile = compile
    shapes = _window_shapes(seg, monkeypatch)
    summary = seg.process(slide, out, tissue=False)
    return summary, tifffile.imread(out / "slide_labels.tif"), shapes


def test_compiled_slide_runs_one_window_shape_with_the_same_nuclei(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setattr("ircr.inference.predict.compiled", lambda model: model)
    slide = tmp_path / "slide.tif"
    _, gt = make_slide(slide, 0.25, 7, shape=(300, 430), region=(16, 24, 268, 390))
    plain, ref, plain_shapes = _run(slide, tmp_path / "plain", False, monkeypatch)
    comp, got, shapes = _run(slide, tmp_path / "compiled", True, monkeypatch)
    # 64 px tiles + 32 px margins: the plain run reads 96, 128 and shorter last windows
    # (300 = 4 x 64 + 44, 430 = 6 x 64 + 46); the compiled run only 128 x 128
    assert len(plain_shapes) > 4
    assert shapes == {(128, 128)}
    assert comp["tiles"] == plain["tiles"]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    # the same nuclei up to the pixels near window borders, which now see more of the real
    # slide instead of reflected pixels: as accurate against the synthetic truth, and close
    # (measured: AJI 0.437 plain, 0.447 one shape; 65 and 67 nuclei for 69 true)
    assert instance_metrics(gt, got).aji >= instance_metrics(gt, ref).aji - 0.01
    assert abs(comp["n_nuclei"] - plain["n_nuclei"]) <= 0.05 * plain["n_nuclei"]
    fg_ref, fg_got = ref > 0, got > 0
    dice = 2 * (fg_ref & fg_got).sum() / (fg_ref.sum() + fg_got.sum())
    assert dice > 0.99
    ids = np.unique(got[got > 0])
    assert np.array_equal(ids, np.arange(1, comp["n_nuclei"] + 1))  # stitched ids stay dense


@pytest.mark.parametrize(("threshold", "expect"), [(0.1, True), (1.0, False)])
def test_auto_compiles_slides_with_enough_tissue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 threshold: float, expect: bool) -> None:
    # compile="auto" (the CLI default): the 300 x 430 slide's tiles cover 0.129 MP; with the
    # threshold below that the slide runs compiled in one window shape, above it eagerly
    torch.set_num_threads(1)
    calls: list[Any] = []
    monkeypatch.setattr("ircr.inference.predict.compiled",
                        lambda model: calls.append(model) or model)
    monkeypatch.setattr("ircr.engine.segmenter.AUTO_COMPILE_MP", threshold)
    slide = tmp_path / "slide.tif"
    make_slide(slide, 0.25, 7, shape=(300, 430), region=(16, 24, 268, 390))
    seg = dark_segmenter()
    seg.compile_mode = "auto"
    settings: set[bool] = set()
    shapes = _window_shapes(seg, monkeypatch, settings)
    seg.process(slide, tmp_path / "out", tissue=False)
    assert bool(calls) is expect
    assert (shapes == {(128, 128)}) is expect
    assert settings == {expect}
    # the slide ran on a compiled view: the segmenter itself never changed, so in-memory
    # images stay eager and other threads' slides never see this slide's setting
    assert seg.compile is False


def test_for_slide_never_changes_the_segmenter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ircr.engine.segmenter.AUTO_COMPILE_MP", 1.0)
    seg = dark_segmenter()
    assert seg.for_slide(5.0) is seg and seg.for_slide(0.5) is seg  # "off": itself
    seg.compile_mode = "auto"
    big, small = seg.for_slide(5.0), seg.for_slide(0.5)
    assert (big.compile, small.compile, seg.compile) == (True, False, False)
    assert big.model is seg.model and big.family is seg.family  # shares the network
    seg.compile_mode, seg.compile = "on", True
    assert seg.for_slide(0.5) is seg and seg.compile is True


def test_compile_modes_and_cli_flags() -> None:
    from ircr.cli.main import build_parser
    from ircr.engine.segmenter import compile_mode
    from ircr.errors import IrcrError

    assert [compile_mode(v) for v in (True, False, "auto")] == ["on", "off", "auto"]
    with pytest.raises(IrcrError, match="compile: expected one of off, on, auto"):
        compile_mode("sometimes")
    parse = build_parser().parse_args
    base = ["segment", "in.tif", "-o", "out"]
    assert parse(base).compile == "auto"
    assert parse([*base, "--compile"]).compile == "on"
    assert parse(["segment", "--compile", "in.tif", "-o", "out"]).inputs == ["in.tif"]
    assert parse([*base, "--no-compile"]).compile == "off"
