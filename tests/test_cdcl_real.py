"""CDCL at the paper's depth (DenseNet-161 blocks 6-12-36-24, narrow width) on real MoNuSeg
patches: one optimiser step with every loss term switched on (no warm-up, full ramp) gives
finite terms, anchors for the contrastive loss, a changed student and a ``cdcl`` model folder."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from ircr.data.prepare import prepare_dataset
from ircr.train.config import experiment_from_dict
from ircr.train.trainer import Trainer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def prepared(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monuseg_cdcl") / "prepared"
    prepare_dataset("monuseg", monuseg_root, out, limit=1, patch=64, ratio="1/4",
                    val_fraction=0.0)
    return out


def test_one_paper_depth_step_on_real_patches(prepared: Path, tmp_path: Path) -> None:
    split = next((prepared / "splits").glob("*.yaml")).stem
    cfg = experiment_from_dict({
        "data": {"dataset": str(prepared), "split": split, "patch_size": 64,
                 "context_margin": 16, "batch_size": 1, "batch_size_unlabelled": 2,
                 "workers": 0},
        "train": {"epochs": 1, "max_iterations": 1, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "val_every": 0},
        "method": {"name": "cdcl", "warmup_iterations": 0, "rampup_iterations": 0,
                   "model": {"growth_rate": 8, "num_init_features": 16,
                             "decoder_channels": [32, 32, 32], "head_channels": 16,
                             "proj_dim": 32}},
        "eval": {"window": 64, "overlap": 16, "batch_size": 4},
    }, "cdcl_real.yaml")
    assert cfg.method.options.model.block_config == [6, 12, 36, 24]
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    model_dir = trainer.run()
    row = next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert int(float(row["iterations"])) == 1
    for key in ("loss", "sup", "cons", "ent", "contrast"):
        assert math.isfinite(float(row[f"train_{key}"])), key
    assert float(row["train_sup"]) > 0 and float(row["train_ent"]) > 0
    assert float(row["train_unsup_weight"]) == 1.0
    assert float(row["train_anchor_patches"]) > 0  # mostly-background/-foreground patches
    after = trainer.model.state_dict()
    assert not torch.equal(before["encoder.features.conv0.weight"],
                           after["encoder.features.conv0.weight"])
    assert "family: cdcl" in (model_dir / "model.yaml").read_text()
