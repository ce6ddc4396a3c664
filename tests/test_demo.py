"""``ircr demo --quick`` runs the whole pipeline and writes an honest report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ircr.cli import demo as demo_cli

torch.set_num_threads(2)


def test_quick_demo_writes_report_with_both_methods(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="ircr")
    demo_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--quick", "--out", str(tmp_path / "d")])
    assert args.func(args) == 0
    out = tmp_path / "d"
    report = (out / "report.md").read_text()
    data = json.loads((out / "metrics.json").read_text())
    for m in ("supervised", "ircr"):
        assert (out / "runs" / m / "model" / "weights.pt").is_file()
        assert (out / "runs" / m / "metrics.csv").is_file()
        aji = data["metrics"][m]["aji"]
        assert 0.0 <= aji <= 1.0 and not math.isnan(aji)
        assert f"| {m} | {aji:.3f} |" in report  # the table states the measured numbers
    import cv2

    diag = sorted((out / "runs" / "ircr" / "diagnostics").rglob("*.png"))
    assert len(diag) == 4  # 2 overlays x 2 epochs in quick mode
    # (height, width): 11 x 4 in at 100 dpi; 4 panels of 3.2 in + title/legend bands
    # (segmentation: ground truth, both demo models, the packaged default model)
    assert "packaged `default` model" in report
    for png, size in (("loss_curves.png", (400, 1100)), ("segmentation.png", (440, 1280)),
                      ("diagnostics.png", (440, 1280))):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[:2] == size, png
        assert f"]({png})" in report  # every figure written is shown in the report
    a_i, a_s = data["metrics"]["ircr"]["aji"], data["metrics"]["supervised"]["aji"]
    if a_i > a_s:
        assert "**ircr** did better" in report
    elif a_s > a_i:
        assert "**supervised** did better" in report
    else:
        assert "no difference" in report


def test_demo_out_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    import pytest

    from ircr.demo import run_demo
    from ircr.errors import IrcrError

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(IrcrError, match="cannot create the demo folder"):
        run_demo(f, quick=True)


def test_demo_uses_one_thread_on_a_busy_machine(monkeypatch) -> None:
    import os

    from ircr import demo

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    assert demo.demo_threads()[0] == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (10.0, 9.0, 8.0))
    n, why = demo.demo_threads()
    assert n == 1 and "load 10.0 on 2 cores" in why
