"""PanNuke with the paper's protocol: Fold 1 trains, Fold 2 validates (``val_fold``).

Small synthetic folds in the published layout (images.npy / masks.npy per fold); the
prepared dataset's split files must take exactly the Fold 2 patches as validation images,
draw labelled/unlabelled patches from Fold 1 only, and keep that for every ratio and seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ircr.cli.main import main
from ircr.data.datasets import open_dataset
from ircr.data.prepare import add_split
from ircr.data.splits import make_split, patch_grid
from ircr.errors import IrcrError
from ircr.train.loaders import open_prepared, resolve_split


def write_fold(root: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    k = name.split()[-1]
    fold = root / name
    (fold / "images" / f"fold{k}").mkdir(parents=True)
    (fold / "masks" / f"fold{k}").mkdir(parents=True)
    imgs = rng.integers(0, 256, (n, 64, 64, 3)).astype(np.float64)
    masks = np.zeros((n, 64, 64, 6), np.float64)
    for i in range(n):
        masks[i, 10:20, 10:20, 0] = 1
        masks[i, 30:44, 30:40, 1] = 2
    np.save(fold / "images" / f"fold{k}" / "images.npy", imgs)
    np.save(fold / "masks" / f"fold{k}" / "masks.npy", masks)
    return fold


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pannuke")
    return write_fold(root, "Fold 1", 8, 1), write_fold(root, "Fold 2", 3, 2)


def test_reader_marks_the_validation_fold(folds: tuple[Path, Path]) -> None:
    f1, f2 = folds
    out = list(open_dataset("pannuke", f1, val_fold=str(f2)))
    assert [s.name for s in out] == [f"Fold_1_{i:05d}" for i in range(8)] + \
        [f"Fold_2_{i:05d}" for i in range(3)]
    assert [s.meta.get("split") for s in out] == [None] * 8 + ["val"] * 3
    with pytest.raises(IrcrError, match="training fold itself"):
        open_dataset("pannuke", f1, val_fold=str(f1))


def test_prepared_splits_validate_on_fold_2_only(folds: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f1, f2 = folds
    ds = tmp_path / "pannuke"
    assert main(["data", "prepare", "pannuke", str(f1), "-o", str(ds), "--patch", "32",
                 "--ratio", "1/4", "--option", f"val_fold={f2}"]) == 0
    assert "the 3 images the dataset marks split: val" in capsys.readouterr().out
    add_split(ds, "1/8", seed=2, val_fraction=0.3)  # val_fraction is not used: Fold 2 is
    fold2 = [f"Fold_2_{i:05d}" for i in range(3)]
    fold1 = [f"Fold_1_{i:05d}" for i in range(8)]
    for name, n_lab in (("ratio_1-4_seed0", 8), ("ratio_1-8_seed2_val0.3", 4)):
        doc = yaml.safe_load((ds / "splits" / f"{name}.yaml").read_text())
        assert doc["val_images"] == fold2 and doc["train_images"] == fold1
        assert doc["val_source"] == "dataset"
        patches = doc["labelled_patches"] + doc["unlabelled_patches"]
        assert len(patches) == 8 * 4 and {p[0] for p in patches} == set(fold1)
        assert len(doc["labelled_patches"]) == n_lab  # 1/4 and 1/8 of the 32 Fold 1 patches
        split = resolve_split(open_prepared(ds), name)
        assert split.val_images == fold2


def test_marked_validation_images_are_checked() -> None:
    patches = [p for i in range(3) for p in patch_grid(i, 64, 64, 32, 32)]
    plan = make_split([True, True, True], patches, "1/2", 0, 0.1, val_images=[2])
    assert (plan.val_images, plan.train_images, plan.val_marked) == ([2], [0, 1], True)
    with pytest.raises(IrcrError, match="has no labels"):
        make_split([True, True, False], patches, "1/2", 0, val_images=[2])
    with pytest.raises(IrcrError, match="nothing is left to train on"):
        make_split([True, True, True], patches, "1/2", 0, val_images=[0, 1, 2])
    plain = make_split([True, True, True], patches, "1/2", 0, 0.34)
    assert not plain.val_marked and len(plain.val_images) == 1
