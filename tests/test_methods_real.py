"""Every training method end to end on real MoNuSeg patches (paper-depth narrow network, 64 px).

MoNuSeg is prepared once with ``ircr data prepare`` (3 images, 64 px patches, 1/4 labelled);
each method trains a few iterations, is interrupted after its first iteration (checkpoint
written), resumes, finishes, and leaves metrics.csv, a checkpoint and a model folder.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_data_prepare
from ircr.train.config import experiment_from_dict, method_takes
from ircr.train.trainer import Trainer, TrainingInterrupted

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def prepared(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monuseg") / "prepared"
    run_data_prepare("monuseg", str(monuseg_root), "-o", str(out), "--patch", "64",
                     "--limit", "3", "--ratio", "1/4", "--val-fraction", "0.34")
    from ircr.data.prepare import add_split

    add_split(out, "1/4", seed=0, val_fraction=0.0)  # same patches, no validation image
    return out


def _cfg(prepared: Path, method: str, val: bool = False, **opts: object):
    # validating on a whole 1000x1000 image costs seconds: only where the test checks it
    split = "ratio_1-4_seed0_val0.34" if val else "ratio_1-4_seed0_val0"
    assert (prepared / "splits" / f"{split}.yaml").is_file()
    return experiment_from_dict({
        "data": {"dataset": str(prepared), "split": split, "patch_size": 64,
                 "context_margin": 16, "batch_size": 2, "batch_size_unlabelled": 2, "workers": 0},
        "model": {"width": 0.125},  # the paper's depth (blocks 3-4-6-3, decoder 8-4), narrow
        "train": {"epochs": 2, "iterations_per_epoch": 2, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "checkpoint_every": 1,
                  "val_every": 0},
        # consistency from iteration 2 on (defaults: 100 warm-up + 200 ramp-up iterations)
        "method": {"name": method, **opts, **({"warmup_iterations": 1, "rampup_iterations": 1}
                                              if method_takes(method, "warmup_iterations")
                                              else {})},
        "eval": {"window": 256, "overlap": 32, "batch_size": 4, "max_images": 1},
    })


def _train_interrupted_then_resume(cfg, run: Path) -> dict[str, str]:
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, run, stop_after=1).run()
    assert (run / "checkpoints" / "last.pt").is_file()
    model_dir = Trainer(cfg, run, resume=True).run()
    assert (model_dir / "weights.pt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(float(r["iterations"])) for r in rows] == [2, 4]
    return rows[-1]


@pytest.mark.parametrize("method,opts", [
    ("supervised", {}),
    ("mean_teacher", {}),
    ("ircr", {"mask_source": "current", "val": True}),
    ("ircr", {"mask_source": "previous"}),
])
def test_method_trains_resumes_and_logs(prepared: Path, tmp_path: Path, method: str,
                                        opts: dict[str, object]) -> None:
    last = _train_interrupted_then_resume(_cfg(prepared, method, **opts), tmp_path / "run")
    assert float(last["train_loss"]) > 0
    if method == "supervised":
        return
    assert float(last["train_sup"]) > 0
    if opts.get("val"):  # the teacher and the student are both validated on the held-out image
        assert 0.0 <= float(last["val_student_aji"]) <= 1.0
        assert 0.0 <= float(last["val_teacher_aji"]) <= 1.0
    if method == "ircr":
        for key in ("train_piac", "train_miac", "pairs_per_image", "prior_reject_frac"):
            assert last[key] != "", key
        if opts["mask_source"] == "current":  # previous: NaN until a patch is revisited
            assert 0.0 <= float(last["prior_reject_frac"]) <= 1.0
            assert float(last["pairs_per_image"]) >= 0.0


def test_self_training_pseudo_labels_then_student(prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "st"
    last = _train_interrupted_then_resume(_cfg(prepared, "self_training"), run)
    assert float(last["train_loss"]) > 0
    # the supervised teacher ran as a sub-training, and pseudo-labels exist per image
    assert (run / "st_round0" / "model" / "weights.pt").is_file()
    pseudo = sorted((run / "pseudo_round0").glob("*.npy"))
    assert pseudo, "no pseudo-label maps written"
    import numpy as np

    inst = np.load(pseudo[0])
    assert inst.ndim == 2 and inst.dtype == np.int32


@pytest.mark.parametrize("trained", [False, True])
def test_ircr_mask_pipeline_gives_the_synchronous_losses(prepared: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         trained: bool) -> None:
    """ssl/masks.py wired into IRCR: same per-epoch losses and the same final weights.

    ``trained=False``: the paper-depth narrow network from scratch (its maps hold no nuclei
    yet). ``trained=True``: the packaged trained network as student and teacher, so WBIS,
    the prior and the matching see real nuclei; this run also takes the CUDA route of the
    MIAC bands (torch, ssl/band_maps.py) on the CPU.
    """
    from ircr.engine.packaged import resolve_model
    from ircr.inference.model_folder import load_model_folder
    from ircr.ssl import masks
    from ircr.train.methods import ircr as ircr_mod

    packaged = load_model_folder(resolve_model(None)) if trained else None
    if trained:
        def lean(*a: object, **k: object) -> masks.MaskSettings:
            return masks.MaskSettings(*a, **{**k, "host_bands": False})  # type: ignore[arg-type]

        monkeypatch.setattr(ircr_mod, "MaskSettings", lean)
    runs = {}
    for mode in ("off", "on"):
        cfg = _cfg(prepared, "ircr", mask_pipeline=mode, mask_workers=2)
        cfg.train.epochs, cfg.train.checkpoint_every = 1, 0
        if packaged is not None:
            cfg.model = packaged.model_cfg
        trainer = Trainer(cfg, tmp_path / mode)
        method: Any = trainer.method
        if packaged is not None:
            trainer.model.load_state_dict(packaged.model.state_dict())
            method.teacher.load_state_dict(packaged.model.state_dict())
        model_dir = trainer.run()
        assert (method.masks is not None) == (mode == "on")
        rows = list(csv.DictReader((tmp_path / mode / "metrics.csv").open()))
        runs[mode] = (rows, torch.load(model_dir / "weights.pt", weights_only=True))
    (off_rows, off_w), (on_rows, on_w) = runs["off"], runs["on"]
    keys = [k for k in off_rows[0] if k.startswith("train_") or k in ("pairs_per_image",
                                                                      "prior_reject_frac")]
    assert "train_miac" in keys and "train_piac" in keys
    assert [{k: r[k] for k in keys} for r in on_rows] == [{k: r[k] for k in keys}
                                                           for r in off_rows]
    if trained:  # MIAC and PIAC had real pairs and scored nuclei to work on
        assert float(off_rows[-1]["pairs_per_image"]) > 0
        assert float(off_rows[-1]["train_miac"]) > 0
    assert all(torch.equal(on_w[k], off_w[k]) for k in off_w)
