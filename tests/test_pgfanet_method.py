"""The ``pgfanet`` method: one training step on a real MoNuSeg patch (paper depth, narrow), and
end to end on synthetic data (train, model folder, ``ircr evaluate``, ``ircr segment``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.train.config import experiment_from_dict
from ircr.train.lr_schedule import poly_lr
from ircr.train.trainer import Trainer

torch.set_num_threads(2)
NARROW = {"width": 0.125}  # ResNet-34 depth (3-4-6-3) twice, 1/8 of the channels
TERMS = ("seg", "aux", "var", "cons", "inter", "intra", "shape")


def _cfg(ds: Path, split: str, patch: int, **train: Any) -> Any:
    return experiment_from_dict({
        "data": {"dataset": str(ds), "split": split, "patch_size": patch,
                 "context_margin": 8, "batch_size": 1, "batch_size_unlabelled": 1,
                 "workers": 0},
        "train": {"epochs": 1, "iterations_per_epoch": 1, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "val_every": 0,
                  "lr_schedule": "poly", "lr_warmup": 0.05, "grad_clip": 4.0, **train},
        "method": {"name": "pgfanet", "net": NARROW},
        "eval": {"window": 64, "overlap": 16, "batch_size": 2},
    })


def _last_row(run: Path) -> dict[str, str]:
    return list(csv.DictReader((run / "metrics.csv").open()))[-1]


def test_one_step_on_a_real_monuseg_patch(monuseg_root: Path, tmp_path: Path) -> None:
    ds = tmp_path / "monuseg"
    prepare_dataset("monuseg", monuseg_root, ds, limit=1, patch=64, ratio="1/4",
                    val_fraction=0.0)
    split = next((ds / "splits").glob("*.yaml")).stem
    cfg = _cfg(ds, split, 64)
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    model_dir = trainer.run()
    row = _last_row(tmp_path / "run")
    for k in TERMS:  # every loss term was computed and is finite
        assert math.isfinite(float(row[f"train_{k}"])), k
    # a MoNuSeg patch holds nuclei: CE + Dice and the variance loss are positive, and the
    # consistency weight is the ramp's first value 0.1 * exp(-5)
    assert float(row["train_seg"]) > 0 and float(row["train_var"]) > 0
    assert float(row["train_unsup_weight"]) == pytest.approx(0.1 * math.exp(-5), rel=1e-6)
    assert float(row["train_loss"]) == pytest.approx(
        sum(float(row[f"train_{k}"]) for k in ("seg", "aux", "var"))
        + float(row["train_unsup_weight"]) * float(row["train_cons"]), rel=1e-5)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "weight" in k)
    # one step of warm-up: lr = 1e-3 * (0 + 1) / W with W = floor(0.05 * 1) = 0 -> poly value
    assert float(row["lr"]) == pytest.approx(1e-3)
    meta = (model_dir / "model.yaml").read_text()
    assert "family: pgfanet" in meta and "width: 0.125" in meta


def test_resnet34_weights_load_into_both_backbones(tmp_path: Path) -> None:
    import torchvision

    from ircr.models.pgfanet_net import PGFANetConfig, build_pgfanet

    torch.manual_seed(0)
    ref = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(ref, path)
    net = build_pgfanet(PGFANetConfig(pretrained=path))
    for key in ("conv1.weight", "layer3.1.conv1.weight", "layer4.0.downsample.0.weight",
                "layer2.3.bn2.running_var"):
        assert torch.equal(net.stage1.state_dict()[key], ref[key]), key
    assert torch.equal(net.stage2.state_dict()["layer1.0.conv1.weight"],
                       ref["layer1.0.conv1.weight"])
    assert net.pretrained_report is not None  # printed by the trainer before training
    assert net.pretrained_report.summary().startswith(f"ResNet-34 weights from {path}")
    # the dilated layer-4 conv keeps torchvision's 3x3 shape, with dilation 4
    assert net.stage1.layer4[1].conv1.dilation == (4, 4)
    assert net.stage1.layer3[0].conv1.stride == (1, 1)
    with pytest.raises(IrcrError, match="method.net.width must be 1"):
        build_pgfanet(PGFANetConfig(width=0.125, pretrained=path))


def test_poly_schedule_by_hand() -> None:
    # T = 100, warm-up 5 %: W = 5 -> 1e-3 * 1/5, 5/5; then 1e-3 * (1 - 50/100)^0.9
    assert poly_lr(1e-3, 0, 100, 0.05, 0.9) == pytest.approx(2e-4)
    assert poly_lr(1e-3, 4, 100, 0.05, 0.9) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100, 0.05, 0.9) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly_lr(1e-3, 99, 100, 0.0, 1.0) == pytest.approx(1e-5)


def test_preset_is_the_released_monuseg_schedule() -> None:
    from ircr.train.config import load_experiment

    repo = Path(__file__).resolve().parents[1]
    for r in ("1-32", "1-16", "1-8", "1-4"):
        cfg = load_experiment(repo / f"configs/monuseg/pgfanet/pgfanet_r{r}.yaml")
        d, t, m = cfg.data, cfg.train, cfg.method
        assert (d.patch_size, d.batch_size, d.batch_size_unlabelled) == (128, 16, 16)
        assert (t.epochs, t.lr, t.lr_schedule, t.lr_warmup, t.lr_power, t.grad_clip) == (
            300, 2.5e-4, "poly", 0.05, 0.9, 4.0)
        assert (m.name, m.options.consistency, m.options.net.width) == ("pgfanet", 0.1, 1.0)
        assert (m.options.postproc.min_size, m.options.postproc.dilate_radius) == (20, 2)
        assert d.split == f"ratio_{r}_seed0"


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    base = {"data": {"dataset": str(tmp_path)}, "method": {"name": "pgfanet"}}
    for key, value, needle in (("consistency", -1, "method.consistency"),
                               ("net", {"widht": 1}, "widht"),
                               ("postproc", {"dilate_radius": -2}, "dilate_radius"),
                               ("ema_alpha", 2.0, "method.ema_alpha")):
        data = {**base, "method": {"name": "pgfanet", key: value}}
        with pytest.raises(IrcrError, match=needle):
            experiment_from_dict(data)


def test_synthetic_end_to_end_evaluate_and_segment(tmp_path: Path) -> None:
    from ircr.cli.main import main
    from ircr.data.synthetic import make_tile
    from ircr.inference.family import InferenceSetting
    from ircr.inference.model_folder import load_model_folder
    from ircr.io.writers import write_png
    from ircr.postproc.interior import interior_instances

    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 4, "size": 96}, patch=32,
                    stride=32, ratio="1/4", val_fraction=0.25)
    split = next((ds / "splits").glob("*val0.25*.yaml")).stem
    cfg = _cfg(ds, split, 32, epochs=2, lr_warmup=0.5)
    model_dir = Trainer(cfg, tmp_path / "run").run()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    # poly schedule over T = 2 iterations, W = 1: 1e-3 * 1/1, then 1e-3 * (1 - 1/2)^0.9
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-3 * 0.5 ** 0.9])
    row = rows[-1]
    assert {"val_student_aji", "val_teacher_aji"} <= set(row)  # validated as pgfanet
    loaded = load_model_folder(model_dir)
    assert loaded.family.name == "pgfanet" and loaded.model_cfg.width == 0.125
    out = tmp_path / "eval"
    assert main(["evaluate", str(model_dir), str(ds), "--split", "val", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    mean = json.loads((out / "metrics.json").read_text())["mean"]
    for k in ("aji", "dice", "pq"):  # the folder scores exactly what training validated
        assert mean[k] == pytest.approx(float(row[f"val_student_{k}"]), abs=1e-9), k
    image, _ = make_tile(np.random.default_rng(5), (80, 100))
    write_png(tmp_path / "tile.png", image)
    seg_out = tmp_path / "seg"
    assert main(["segment", "--model", str(model_dir), str(tmp_path / "tile.png"), "-o",
                 str(seg_out), "--device", "cpu", "--mpp", "0.25", "--no-progress"]) == 0
    assert any(seg_out.rglob("*.geojson"))
    # the family's two steps on the same tile: argmax of the blended probabilities, then the
    # interior post-processing of the folder
    pred = loaded.family.predict(loaded.model, image, InferenceSetting(window=64, overlap=16))
    assert pred.prob.shape == (80, 100) and pred.maps["probs"].shape == (2, 80, 100)
    probs = np.concatenate([(1 - pred.prob)[None], pred.maps["probs"]])
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    inst = loaded.family.instances(pred, loaded.postproc)
    assert np.array_equal(inst, interior_instances(probs.argmax(axis=0), loaded.postproc))


@pytest.mark.slow  # ~1-2 min on 2 busy cores; the resume mechanism is tested fast in test_resume
def test_interrupted_and_resumed_run_is_exact(tmp_path: Path) -> None:
    from ircr.train.checkpoint import load_checkpoint
    from ircr.train.trainer import TrainingInterrupted

    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 4, "size": 96}, patch=32,
                    stride=32, ratio="1/4", val_fraction=0.0)
    split = next((ds / "splits").glob("*val0.yaml")).stem
    cfg = _cfg(ds, split, 32, epochs=2, iterations_per_epoch=2, deterministic=True)
    Trainer(cfg, tmp_path / "straight").run()
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, tmp_path / "resumed", stop_after=3).run()
    Trainer(cfg, tmp_path / "resumed", resume=True).run()
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")
            for d in ("straight", "resumed"))
    for part in ("model", "method"):  # the student and the EMA teacher
        flat_a = a[part] if part == "model" else a[part]["teacher"]
        flat_b = b[part] if part == "model" else b[part]["teacher"]
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part
