"""``ircr evaluate --unit patch`` (issue 26 point 8): every grid patch scored on its own, the
mean over patches; edge patches are their part inside the image (never padded); ``--dilate``
for detection models only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.data.store import PreparedDataset
from ircr.inference.evaluate import EvalConfig, evaluate_patches


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("patches") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 100}, patch=64,
                    stride=32, ratio="1/2", val_fraction=0.5)
    return out


class OneBlob:
    """A stand-in model family: predicts one nucleus covering the whole input."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def parse_postproc(self, data: Any) -> Any:
        return data

    def predict_instances(self, model: Any, image: np.ndarray, setting: Any,
                          postproc: Any) -> tuple[np.ndarray, np.ndarray]:
        self.shapes.append(image.shape[:2])
        return np.ones(image.shape[:2], np.int32), np.ones(image.shape[:2], np.float32)


def test_patch_metrics_are_the_mean_over_unpadded_patches(ds: Path) -> None:
    data = PreparedDataset(ds)
    name = data.names[0]
    fam = OneBlob()
    res = evaluate_patches(None, data, [name], EvalConfig(), family=fam)  # type: ignore[arg-type]
    # 100 px, patch 64, stride 32: starts 0, 32, 64 per axis; the last is 36 px (inside part)
    assert fam.shapes == [(h, w) for h in (64, 64, 36) for w in (64, 64, 36)]
    assert [r["image"] for r in res.per_image][:4] == [f"{name}@0,0", f"{name}@0,32",
                                                       f"{name}@0,64", f"{name}@32,0"]
    # one predicted blob over a patch of area A with fg ground-truth pixels:
    # Dice = 2 fg / (fg + A), by hand from the ground truth crops
    gt = np.asarray(data.load_inst(data.index_of(name)))
    dice = [2 * np.count_nonzero(gt[y:y + h, x:x + w]) / (np.count_nonzero(gt[y:y + h, x:x + w])
                                                          + h * w)
            for y, h in ((0, 64), (32, 64), (64, 36)) for x, w in ((0, 64), (32, 64), (64, 36))]
    assert [r["dice"] for r in res.per_image] == pytest.approx(dice)
    assert res.mean["dice"] == pytest.approx(float(np.mean(dice)))
    whole = 2 * np.count_nonzero(gt) / (np.count_nonzero(gt) + gt.size)
    assert abs(res.mean["dice"] - whole) > 1e-3  # a different unit than the whole image


def test_cli_unit_patch_and_dilate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 2, "size": 64}, patch=64,
                    stride=64, ratio="1/2", val_fraction=0.5)
    out = tmp_path / "ev"
    rc = main(["evaluate", "default", str(ds), "--split", "all", "--unit", "patch", "--out",
               str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["unit"] == "patch" and [r["image"].split("@")[1] for r in doc["per_image"]] == \
        ["0,0", "0,0"]
    assert "2 patches, each on its own" in capsys.readouterr().out
    rc = main(["evaluate", "default", str(ds), "--split", "all", "--dilate", "1", "--out",
               str(tmp_path / "d"), "--no-progress"])
    assert rc == 2
    assert "--dilate: the model's post-processing (hovernet) has no dilation" in \
        capsys.readouterr().err
