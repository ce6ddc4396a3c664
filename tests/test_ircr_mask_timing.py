"""IRCR mask timing (``mask_source: previous_iteration``) and the teacher-HV clamp's scope.

Paper depth (blocks 3-4-6-3, decoder units 8-4) at width 0.125 on real MoNuSeg 64 px
patches, a few iterations each; the method's own functions are wrapped to record which masks
and which views each iteration uses.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.data.prepare import add_split, prepare_dataset
from ircr.train.config import experiment_from_dict
from ircr.train.methods.ircr import IRCR, to_uint8_images
from ircr.train.trainer import Trainer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def prepared(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mask_timing") / "prepared"
    prepare_dataset("monuseg", monuseg_root, out, limit=3, patch=64, ratio="1/4",
                    val_fraction=0.0)
    add_split(out, "1/4", seed=0, val_fraction=0.0)
    return out


def _cfg(prepared: Path, iterations: int, **opts: Any) -> Any:
    split = next(p.stem for p in (prepared / "splits").glob("ratio_1-4_seed0*.yaml"))
    return experiment_from_dict({
        "data": {"dataset": str(prepared), "split": split, "patch_size": 64,
                 "context_margin": 16, "batch_size": 1, "batch_size_unlabelled": 1,
                 "workers": 0},
        "model": {"width": 0.125},  # paper depth
        "train": {"epochs": iterations, "iterations_per_epoch": 1, "lr": 1e-3,
                  "lr_steps": [], "device": "cpu", "amp": "off", "progress": False,
                  "tensorboard": False, "val_every": 0, "seed": 10},
        "method": {"name": "ircr", "warmup_iterations": 0, "rampup_iterations": 0,
                   "guard_ratio": 0, **opts},
    })


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_previous_iteration_uses_the_masks_of_the_previous_iteration(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[np.ndarray, Any]] = []  # per iteration: (weak images, masks built)
    used: list[tuple[int, Any]] = []  # (iteration, teacher masks the PIAC term used)
    steps: list[dict[str, torch.Tensor]] = []  # per iteration: its new unlabelled batch
    strong_in: list[torch.Tensor] = []  # per iteration: the student's unlabelled input

    all_masks, cons_term = IRCR._all_masks, IRCR._cons_term
    train_step, student_forward = IRCR.train_step, IRCR.student_forward

    def rec_all_masks(self: IRCR, *args: Any) -> Any:
        out = all_masks(self, *args)
        made.append((args[2], out))
        return out

    def rec_cons_term(self: IRCR, fs: Any, ft: Any, valid: Any, t: Any, active: Any) -> Any:
        used.append((self.trainer.iteration, t))
        return cons_term(self, fs, ft, valid, t, active)

    def rec_train_step(self: IRCR, labelled: Any, unlabelled: Any) -> Any:
        steps.append({k: unlabelled[k].clone() for k in ("weak", "strong", "index")})
        out = train_step(self, labelled, unlabelled)
        assert self.held is not None
        self.held.masks.result()  # keep `made` in iteration order (the pool has 2 threads)
        return out

    def rec_student_forward(self: IRCR, labelled: Any, strong: Any) -> Any:
        strong_in.append(strong.clone())
        return student_forward(self, labelled, strong)

    monkeypatch.setattr(IRCR, "_all_masks", rec_all_masks)
    monkeypatch.setattr(IRCR, "_cons_term", rec_cons_term)
    monkeypatch.setattr(IRCR, "train_step", rec_train_step)
    monkeypatch.setattr(IRCR, "student_forward", rec_student_forward)
    run = tmp_path / "run"
    Trainer(_cfg(prepared, 3, mask_source="previous_iteration"), run).run()

    assert len(steps) == 3 and len(made) == 3
    for k in range(3):  # iteration k builds masks from its own new batch's weak view
        assert np.array_equal(made[k][0], to_uint8_images(steps[k]["weak"]))
    assert [it for it, _ in used] == [1, 2]  # iteration 0 has no masks yet
    for it, t in used:
        assert t is made[it - 1][1][0]  # the very masks iteration it - 1 built
        n = steps[it - 1]["strong"].shape[0]
        # the student sees the held batch (same strong views) first, then the new one
        assert torch.equal(strong_in[it][:n], steps[it - 1]["strong"])
        assert torch.equal(strong_in[it][n:], steps[it]["strong"])
    assert torch.equal(strong_in[0], steps[0]["strong"])
    rows = _rows(run)
    assert float(rows[0]["train_piac"]) == 0.0 and float(rows[0]["train_miac"]) == 0.0
    assert all(float(r["train_piac"]) > 0.0 for r in rows[1:])
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)


@pytest.mark.parametrize("masks_clamped", [False, True])
def test_hv_clamp_scope(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        masks_clamped: bool) -> None:
    """``clamp_teacher_hv`` always bounds the consistency target; the teacher's WBIS sees the
    raw HV unless ``clamp_teacher_hv_masks``. The cold teacher of iteration 0 (BN statistics
    at their initial values) outputs |HV| of order 1e3, so the difference is visible."""
    wbis_hv: list[np.ndarray] = []
    targets: list[torch.Tensor] = []
    teacher_side, cons_term = IRCR._teacher_side, IRCR._cons_term

    def rec_teacher_side(self: IRCR, probs: Any, hvs: np.ndarray, images: Any) -> Any:
        wbis_hv.append(hvs)
        return teacher_side(self, probs, hvs, images)

    def rec_cons_term(self: IRCR, fs: Any, ft: torch.Tensor, *rest: Any) -> Any:
        targets.append(ft.detach())
        return cons_term(self, fs, ft, *rest)

    monkeypatch.setattr(IRCR, "_teacher_side", rec_teacher_side)
    monkeypatch.setattr(IRCR, "_cons_term", rec_cons_term)
    Trainer(_cfg(prepared, 1, clamp_teacher_hv=True, clamp_teacher_hv_masks=masks_clamped),
            tmp_path / "run").run()
    assert len(wbis_hv) == 1 and len(targets) == 1
    assert float(targets[0][:, 1:].abs().max()) <= 1.0  # the consistency target: clamped
    hv_max = float(np.abs(wbis_hv[0]).max())
    if masks_clamped:
        assert hv_max <= 1.0
    else:
        assert hv_max > 10.0  # raw: the cold teacher's HV as it is
