"""``ircr data prepare | split | show`` end to end through ``ircr.cli.main.main``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ircr.cli.main import main
from ircr.data.store import PreparedDataset


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ircr: error: ")
    return lines[0]


def test_prepare_split_show_synthetic(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    rc, text, _ = _run(
        capsys, "data", "prepare", "synthetic", "-o", str(out), "--option", "n_images=3",
        "--option", "size=300", "--ratio", "1/4", "--seed", "1",
    )
    assert rc == 0
    assert "prepared 3 images (3 labelled" in text and "12 patches" in text
    split_file = out / "splits" / "ratio_1-4_seed1.yaml"
    doc = yaml.safe_load(split_file.read_text())
    assert doc["ratio"] == "1/4" and doc["seed"] == 1
    assert len(doc["val_images"]) == 1 and len(doc["train_images"]) == 2
    assert len(doc["labelled_patches"]) == 2 and len(doc["unlabelled_patches"]) == 6
    assert not {p[0] for p in doc["labelled_patches"]} & set(doc["val_images"])

    rc, text, _ = _run(capsys, "data", "split", str(out), "--ratio", "1/8", "1/2", "--seed", "0",
                       "1")
    assert rc == 0 and text.count("split: ") == 4
    assert len(PreparedDataset(out).split_names()) == 5

    overlay = tmp_path / "show" / "overlay.png"
    rc, text, _ = _run(capsys, "data", "show", str(out), "--split", "ratio_1-4_seed1", "-o",
                       str(overlay), "--n", "2")
    assert rc == 0
    for line in ("images: 3", "patches: 12", "train_images: 2", "val_images: 1",
                 "labelled_patches: 2", "unlabelled_patches: 6"):
        assert line in text
    nuclei = sum(m["nuclei"] for m in PreparedDataset(out).images)
    assert f"nuclei: {nuclei}" in text and nuclei > 50
    png = np.array(Image.open(overlay))
    # 2 labelled + 2 unlabelled patches + 2 validation images in rows of 4 panels of 3.2 in
    # at 100 dpi: 1280 px wide; 2 rows (640 px) + title band 75 px + legend band 45 px
    assert png.shape[:2] == (760, 1280)
    assert png[..., :3].std() > 20  # not blank
    rgb = png[..., :3]
    assert ((rgb == (0, 200, 0)).all(axis=2)).sum() > 500  # labelled outlines drawn
    assert ((rgb == (40, 120, 255)).all(axis=2)).sum() > 500  # validation outlines drawn


def test_same_seed_and_ratio_same_split(tmp_path: Path, capsys) -> None:
    texts = []
    for k in range(2):
        rc, _, _ = _run(capsys, "data", "prepare", "synthetic", "-o", str(tmp_path / f"d{k}"),
                        "--option", "n_images=4", "--option", "size=128", "--patch", "64",
                        "--ratio", "0.125", "--seed", "7")
        assert rc == 0
        texts.append((tmp_path / f"d{k}" / "splits" / "ratio_1-8_seed7.yaml").read_text())
    assert texts[0] == texts[1]


def test_prepare_monuseg_limit(monuseg_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mo"
    rc, text, _ = _run(capsys, "data", "prepare", "monuseg", str(monuseg_root), "-o", str(out),
                       "--limit", "3", "--ratio", "1/8")
    assert rc == 0 and "prepared 3 images" in text and "48 patches" in text
    ds = PreparedDataset(out)
    sp = ds.load_split("ratio_1-8_seed0")
    assert len(sp.val_images) == 1 and len(sp.train_images) == 2  # split by image
    assert len(sp.labelled_patches) == 4  # round(32 / 8)
    rc, text, _ = _run(capsys, "data", "show", str(out))
    assert rc == 0 and "patches: 48" in text and "split: ratio_1-8_seed0" in text


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "data", "prepare", "monuseg", str(empty), "-o", str(tmp_path / "o"))
    assert rc == 2 and str(empty) in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "nucleiland", str(empty), "-o",
                      str(tmp_path / "o"))
    assert rc == 2 and "unknown dataset 'nucleiland'" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "synthetic", "-o", str(tmp_path / "o"),
                      "--ratio", "3/2")
    assert rc == 2 and "--ratio" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "synthetic", "-o", str(tmp_path / "o"),
                      "--option", "shade=3")
    assert rc == 2 and "'shade'" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "cpm15", str(empty), "-o", str(tmp_path / "o"),
                      "--option", "frobnicate=1")
    assert rc == 2 and "frobnicate" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "synthetic", "-o", str(tmp_path / "o"),
                      "--option", "novalue")
    assert rc == 2 and "--option" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "prepare", "monuseg", "-o", str(tmp_path / "o"))
    assert rc == 2 and "ROOT is required" in _one_line_error(err)

    rc, _, err = _run(capsys, "data", "show", str(empty))
    assert rc == 2 and "dataset.json" in _one_line_error(err)


def test_show_unknown_split(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    assert _run(capsys, "data", "prepare", "synthetic", "-o", str(out), "--option",
                "n_images=2", "--option", "size=64", "--patch", "32")[0] == 0
    rc, _, err = _run(capsys, "data", "show", str(out), "--split", "ratio_1-3_seed9")
    assert rc == 2 and "ratio_1-3_seed9.yaml: split not found" in _one_line_error(err)


@pytest.mark.parametrize("argv", [["data", "prepare", "--help"], ["data", "show", "--help"]])
def test_help(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
