"""``ircr prior build/show/score`` end to end on real CPM-15 / MoNuSeg files."""

from __future__ import annotations

import argparse
import csv
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ircr.cli.prior import register
from ircr.errors import IrcrError
from ircr.ssl.prior import MorphPrior

MONUSEG = "TCGA-18-5592-01Z-00-DX1"  # 480 nuclei (SOURCES.md)


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="ircr")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = args.func(args)
    return rc, buf.getvalue()


def test_build_show_score(cpm15_root: Path, monuseg_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.npz"
    rc, text = _run(["prior", "build", f"cpm15:{cpm15_root}", "--option",
                     "fix_known_swaps=true", "--out", str(out)])
    assert rc == 0 and "15 images" in text
    prior = MorphPrior.load(out)
    assert prior.meta["sources"] == ["cpm15"] and prior.meta["datasets"]
    png = tmp_path / "d.png"
    rc, text = _run(["prior", "show", str(out), "-o", str(png), "--combine", "geometric"])
    assert rc == 0 and png.stat().st_size > 1000 and "tau 0.2" in text and "n_nuclei" in text
    from PIL import Image

    assert Image.open(png).size == (1700, 340)  # five 3.4 x 3.4 in panels at 100 dpi
    csv_path = tmp_path / "s.csv"
    rc, _ = _run(["prior", "score", "default", str(monuseg_root / "images" / f"{MONUSEG}.tif"),
                  str(monuseg_root / "labels_inst" / f"{MONUSEG}.png"), "-o", str(csv_path)])
    rows = list(csv.DictReader(csv_path.open()))
    assert rc == 0 and len(rows) == 480
    assert list(rows[0]) == ["id", "area", "solidity", "circularity", "haematoxylin", "extent",
                             "touches_border", "score", "kept"]
    sc = np.array([float(r["score"]) for r in rows])
    kept = np.array([int(r["kept"]) for r in rows])
    border = np.array([int(r["touches_border"]) for r in rows])
    assert np.array_equal(kept, ((sc >= 0.35) | (border == 1)).astype(int))
    rc, text = _run(["prior", "score", str(out), str(monuseg_root / "images" / f"{MONUSEG}.tif"),
                     str(monuseg_root / "labels_inst" / f"{MONUSEG}.png")])
    assert text.count("\n") == 481  # header + one row per nucleus on stdout


def test_errors(cpm15_root: Path, tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="image04"):  # swapped masks without the fix
        _run(["prior", "build", f"cpm15:{cpm15_root}", "--out", str(tmp_path / "x.npz")])
    with pytest.raises(IrcrError, match="name:root"):
        _run(["prior", "build", "nosuch:/x", "--out", str(tmp_path / "x.npz")])
    with pytest.raises(IrcrError, match="dataset.json"):
        _run(["prior", "build", str(tmp_path), "--out", str(tmp_path / "x.npz")])
    with pytest.raises(IrcrError, match="bandwidth"):
        _run(["prior", "build", f"cpm15:{cpm15_root}", "--bandwidth", "wide", "--out", "x"])
    with pytest.raises(IrcrError, match="not found"):
        _run(["prior", "show", str(tmp_path / "none.npz")])
    img = tmp_path / "i.png"
    lab = tmp_path / "l.png"
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(img)
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(lab)
    with pytest.raises(IrcrError, match="l.png"):
        _run(["prior", "score", "default", str(img), str(lab)])
