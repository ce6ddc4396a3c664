"""Whole-image evaluation (inference.evaluate) and the ``ircr evaluate`` / ``ircr train`` CLIs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ircr.inference.evaluate as ev
import ircr.inference.families.hovernet as hovernet
import ircr.inference.predict as tiled
from ircr.cli.main import main
from ircr.config import read_yaml
from ircr.data.prepare import add_split, prepare_dataset
from ircr.data.store import PreparedDataset
from ircr.data.targets import hover_targets
from ircr.errors import IrcrError
from ircr.inference.evaluate import EvalConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 5, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.4)
    return out


@pytest.fixture(scope="module")
def trained(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 4 iterations through the ``ircr train`` CLI."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run") / "r"
    rc = main(["train", str(REPO / "configs" / "tiny_synthetic.yaml"), "--out", str(run),
               "--set", f"data.dataset={synth}", "--set", "data.split=ratio_1-4_seed0_val0.4",
               "--set", "train.epochs=2", "--set", "train.iterations_per_epoch=2",
               "--no-progress"])
    assert rc == 0
    return run


class Background(nn.Module):
    """Predicts background everywhere (NP logits favour channel 0)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        n, _, h, w = x.shape
        logits = torch.zeros(n, 2, h, w)
        logits[:, 0] = 10.0
        return {"np": logits, "hv": torch.zeros(n, 2, h, w)}


def test_empty_prediction_scores_zero(synth: Path) -> None:
    ds = PreparedDataset(synth)
    names = ds.names[:2]
    res = ev.evaluate_model(Background(), ds, names, EvalConfig(window=64, overlap=16))
    assert [r["image"] for r in res.per_image] == names
    for r in res.per_image:
        assert r["n_pred"] == 0 and r["n_gt"] > 0
        assert (r["aji"], r["dice"], r["f1"], r["pq"]) == (0.0, 0.0, 0.0, 0.0)
    assert res.mean["aji"] == 0.0


def test_oracle_maps_score_high_and_mean_is_over_images(synth: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = PreparedDataset(synth)

    name_of = {np.asarray(ds.load_image(i)).tobytes(): n for i, n in enumerate(ds.names)}

    def oracle(model: Any, image: np.ndarray, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        gt = ds.load_inst(ds.index_of(name_of[image.tobytes()]))
        np_t, hv = hover_targets(np.asarray(gt))
        return np_t.astype(np.float32), hv

    monkeypatch.setattr(tiled, "predict_maps", oracle)
    res = ev.evaluate_model(Background(), ds, ds.names, EvalConfig())
    assert len(res.per_image) == 5
    for r in res.per_image:  # WBIS on perfect maps: exact foreground, most nuclei found
        assert r["dice"] > 0.7 and r["f1"] > 0.75, r
    # WBIS that returns the ground truth itself: every metric is exactly 1
    monkeypatch.setattr(hovernet, "wbis", lambda prob, hv, params: gt_of[prob.shape])
    gt_of: dict[tuple[int, ...], np.ndarray] = {}
    for name in ds.names[:1]:
        gt_of[(128, 128)] = np.asarray(ds.load_inst(ds.index_of(name)))
        perfect = ev.evaluate_model(Background(), ds, [name], EvalConfig())
        assert perfect.mean == {k: 1.0 for k in ev.METRICS}
    for key in ev.METRICS:
        assert res.mean[key] == pytest.approx(np.mean([r[key] for r in res.per_image]))
    table = res.table()
    assert table.splitlines()[0].split()[:3] == ["image", "aji", "dice"]
    assert table.splitlines()[-1].startswith("mean")


def test_select_images(synth: Path, tmp_path: Path) -> None:
    ds = PreparedDataset(synth)
    split = ds.load_split("ratio_1-4_seed0_val0.4")
    vals = [ds.names[i] for i in split.val_images]
    assert ev.select_images(ds, "val")[0] == vals  # the only split file
    assert ev.select_images(ds, "all")[0] == ds.names
    assert ev.select_images(ds, "ratio_1-4_seed0_val0.4") == (vals, "ratio_1-4_seed0_val0.4:val")
    with pytest.raises(IrcrError, match="no test images"):
        ev.select_images(ds, "test")
    with pytest.raises(IrcrError, match="split not found"):
        ev.select_images(ds, "ratio_1-2_seed5")


def test_val_with_several_splits_uses_the_training_split(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 64}, patch=64,
                    ratio="1/2", val_fraction=0.25)
    add_split(out, "1/2", seed=1, val_fraction=0.25)
    ds = PreparedDataset(out)
    with pytest.raises(IrcrError, match="several splits"):
        ev.select_images(ds, "val")
    meta = {"train": {"split": "ratio_1-2_seed1_val0.25"}}
    want = [ds.names[i] for i in ds.load_split("ratio_1-2_seed1_val0.25").val_images]
    assert ev.select_images(ds, "val", meta)[0] == want


def test_evaluate_cli_writes_table_json_csv_overlays(trained: Path, synth: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev"
    rc = main(["evaluate", str(trained / "model"), str(synth), "--out", str(out), "--overlays",
               "--window", "64", "--overlap", "16", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean" in text and "aji" in text
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["n_images"] == 2 and doc["split"] == "ratio_1-4_seed0_val0.4:val"
    with open(out / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows][-1] == "mean"
    assert float(rows[-1]["aji"]) == pytest.approx(np.mean([float(r["aji"]) for r in rows[:-1]]),
                                                   abs=1e-9)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        f"{r['image']}.png" for r in rows[:-1])
    import cv2

    ov = cv2.imread(str(out / "overlays" / f"{rows[0]['image']}.png"))
    # the 128 x 128 image under a legend band of n lines of 21 px + 6 px at scale 0.45; on a
    # 128 px wide overlay the legend wraps onto a third line (issue 27 point 16: never cut)
    band = ov.shape[0] - 128
    assert ov.shape[1:] == (128, 3) and band == 3 * 21 + 6
    assert ((ov[:band, :, ::-1] == (255, 230, 0)).all(axis=2)).sum() > 20  # prediction swatch
    # the same code validated the last epoch during training
    with open(trained / "metrics.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["val_student_aji"]) == pytest.approx(doc["mean"]["aji"], abs=1e-9)


def test_evaluate_cli_errors(trained: Path, synth: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained / "model"), str(synth), "--split", "test",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error:") and "no test images" in err and "\n" not in err
    assert main(["evaluate", str(tmp_path / "nomodel"), str(synth)]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["evaluate", str(trained / "model"), str(tmp_path / "nods")]) == 2
    assert "prepared dataset folder not found" in capsys.readouterr().err
    assert main(["evaluate", str(trained / "model"), str(synth), "--overlap", "300",
                 "--window", "64"]) == 2
    assert "--overlap: must be in [0, window=64)" in capsys.readouterr().err


def test_evaluate_all_images(trained: Path, synth: Path, tmp_path: Path) -> None:
    assert main(["evaluate", str(trained / "model"), str(synth), "--split", "all", "--out",
                 str(tmp_path / "all"), "--window", "64", "--overlap", "16",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["n_images"] == 5


def test_train_cli_resume_and_errors(trained: Path, synth: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(REPO / "configs" / "tiny_synthetic.yaml")
    sets = ["--set", f"data.dataset={synth}", "--set", "data.split=ratio_1-4_seed0_val0.4",
            "--set", "train.epochs=2", "--set", "train.iterations_per_epoch=2", "--no-progress"]
    assert main(["train", cfg, "--out", str(trained), *sets]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["train", cfg, "--out", str(trained), "--resume", *sets,
                 "--set", "train.epochs=3"]) == 0  # extend a finished run by one epoch
    with open(trained / "metrics.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["0", "1", "2"]
    assert read_yaml(trained / "config.yaml")["train"]["epochs"] == 3
    assert main(["train", cfg, "--set", "method.name=nope"]) == 2
    assert "method.name" in capsys.readouterr().err


def test_image_at_another_pixel_size_is_rescaled_and_scored_at_its_own(
        synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.5 µm/px image and a 0.25 µm/px model: the network sees it 2x enlarged (as ``ircr
    segment`` would), the instances come back to 128 px and are scored against the untouched
    ground truth. Nearest-neighbour 2x up then 2x down is the identity, so a WBIS that returns
    the enlarged ground truth scores exactly 1 (hand reasoning, not the code's own output)."""
    from ircr.inference.scale import resize_labels

    ds = PreparedDataset(synth)
    name = ds.names[0]
    idx = ds.index_of(name)
    gt = np.asarray(ds.load_inst(idx))
    seen: list[tuple[int, ...]] = []

    def oracle(model: Any, image: np.ndarray, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        seen.append(image.shape[:2])
        np_t, hv = hover_targets(resize_labels(gt, *image.shape[:2]))
        return np_t.astype(np.float32), hv

    monkeypatch.setattr(tiled, "predict_maps", oracle)
    monkeypatch.setattr(hovernet, "wbis", lambda prob, hv, params: resize_labels(gt, *prob.shape))
    ds.images[idx]["mpp"] = 0.5  # in memory only
    res = ev.evaluate_model(Background(), ds, [name], EvalConfig(), model_mpp=0.25)
    assert seen == [(256, 256)]
    assert res.mean == {k: 1.0 for k in ev.METRICS}
    ev.evaluate_model(Background(), ds, [name], EvalConfig(), model_mpp=0.26)  # 0.5/0.26
    ev.evaluate_model(Background(), ds, [name], EvalConfig(), model_mpp=None)  # as is
    ds.images[idx]["mpp"] = 0.51
    ev.evaluate_model(Background(), ds, [name], EvalConfig(), model_mpp=0.5)  # within 5 %
    assert seen[1:] == [(246, 246), (128, 128), (128, 128)]
