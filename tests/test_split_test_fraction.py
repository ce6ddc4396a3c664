"""BASS data protocol: 6:2:2 train/val/test by image, ratios 1/8, 1/4, 1/2, stride 128."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ircr.cli.main import main
from ircr.data.splits import grid_positions, make_split, patch_grid, split_name
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.inference.evaluate import select_images


def _monuseg_grid(n: int = 30):  # 1000 x 1000 images, patch 256, stride 128
    return [p for i in range(n) for p in patch_grid(i, 1000, 1000, 256, 128)]


def test_monuseg_stride_128_grid_has_49_patches_per_image() -> None:
    # by hand: starts 0, 128, ..., 768 (768 + 256 >= 1000) -> 7 per axis
    assert grid_positions(1000, 256, 128) == [0, 128, 256, 384, 512, 640, 768]
    assert len(_monuseg_grid(1)) == 49


def test_six_two_two_split_by_image() -> None:
    patches = _monuseg_grid()
    plans = {r: make_split([True] * 30, patches, r, seed=0, val_fraction=0.2,
                           test_fraction=0.2) for r in ("1/8", "1/4", "1/2")}
    a = plans["1/8"]
    assert (len(a.train_images), len(a.val_images), len(a.test_images)) == (18, 6, 6)
    assert not set(a.test_images) & (set(a.val_images) | set(a.train_images))
    assert not set(a.val_images) & set(a.train_images)
    used = a.labelled_patches + a.unlabelled_patches
    assert {p.image for p in used} == set(a.train_images)
    # 18 train images x 49 patches = 882; 1/8 -> round(110.25) = 110 labelled
    assert len(used) == 882 and len(a.labelled_patches) == 110
    # 1/4: 220.5 rounds half up to 221; 1/2: 441
    assert [len(plans[r].labelled_patches) for r in ("1/4", "1/2")] == [221, 441]
    # val/test stay the same across ratios and the labelled sets are nested
    for r in ("1/4", "1/2"):
        assert plans[r].test_images == a.test_images and plans[r].val_images == a.val_images
    assert set(a.labelled_patches) <= set(plans["1/4"].labelled_patches) <= set(
        plans["1/2"].labelled_patches)
    assert split_name(a.ratio, 0, 0.2, 0.2) == "ratio_1-8_seed0_val0.2_test0.2"


def test_no_test_fraction_keeps_earlier_splits() -> None:
    patches = _monuseg_grid(10)
    old = make_split([True] * 10, patches, "1/8", seed=3, val_fraction=0.1)
    assert old.test_images == [] and old.test_fraction == 0.0
    assert make_split([True] * 10, patches, "1/8", 3, 0.1, 0.0) == old


def test_fraction_errors() -> None:
    patches = _monuseg_grid(3)
    with pytest.raises(IrcrError, match="--test-fraction: with --val-fraction 0.5"):
        make_split([True] * 3, patches, "1/8", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(IrcrError, match="--test-fraction: must be in"):
        make_split([True] * 3, patches, "1/8", test_fraction=-0.1)
    with pytest.raises(IrcrError, match="leaves none to train on"):
        make_split([True], patches[:49], "1/8", test_fraction=0.2)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_prepare_and_split_with_test_fraction(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    rc, _, _ = _run(capsys, "data", "prepare", "synthetic", "-o", str(out), "--option",
                    "n_images=5", "--option", "size=256", "--patch", "128", "--stride", "64",
                    "--val-fraction", "0.2", "--test-fraction", "0.2", "--ratio", "1/8")
    assert rc == 0
    rc, text, _ = _run(capsys, "data", "split", str(out), "--ratio", "1/4", "1/2",
                       "--val-fraction", "0.2", "--test-fraction", "0.2")
    assert rc == 0 and text.count("split: ") == 2
    ds = PreparedDataset(out)
    assert ds.stride == 64 and len(ds.patches) == 5 * 9
    names = sorted(ds.split_names())
    assert names == ["ratio_1-2_seed0_val0.2_test0.2", "ratio_1-4_seed0_val0.2_test0.2",
                     "ratio_1-8_seed0_val0.2_test0.2"]
    sp = ds.load_split(names[0])
    assert len(sp.test_images) == 1 and len(sp.val_images) == 1 and len(sp.train_images) == 3
    doc = yaml.safe_load((out / "splits" / f"{names[0]}.yaml").read_text())
    assert doc["counts"]["test_images"] == 1 and doc["test_fraction"] == 0.2
    # evaluate --split test: the held-out images (all three splits agree on them)
    test_names, label = select_images(ds, "test", {"train": {"split": names[2]}})
    assert test_names == [ds.names[sp.test_images[0]]] and label == f"{names[2]}:test"
    assert select_images(ds, "test")[0] == test_names
    # a split without test images (earlier format) loads with none
    rc, _, _ = _run(capsys, "data", "split", str(out), "--ratio", "1/8")
    assert ds.load_split("ratio_1-8_seed0").test_images == []
    rc, _, err = _run(capsys, "data", "split", str(out), "--val-fraction", "0.6",
                      "--test-fraction", "0.5")
    assert rc == 2 and "--test-fraction" in err


def test_evaluate_test_split_missing_is_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    _run(capsys, "data", "prepare", "synthetic", "-o", str(out), "--option", "n_images=2",
         "--option", "size=128", "--patch", "128")
    with pytest.raises(IrcrError, match="--test-fraction"):
        select_images(PreparedDataset(out), "test")
