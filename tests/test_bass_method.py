"""The ``bass`` method end to end on CPU: tiny Mask R-CNN, synthetic data, three stages,
evaluate, segment a tile, resume after an interruption in stage 3 (Ctrl-C)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.ssl.count_threshold import THRESHOLD_GRID
from ircr.ssl.pseudo_labels import load_pseudo_labels
from ircr.train import detector_loop
from ircr.train.checkpoint import load_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.stop import TrainingStopped
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SPLIT = "ratio_1-4_seed0_val0.2_test0.2"
TINY = {"backbone": "tiny", "tiny_channels": [8, 16, 16, 32], "fpn_channels": 16,
        "mask_channels": 16, "box_representation": 32, "crc_channels": 8, "min_size": [64],
        "max_size": 128, "anchor_sizes": [4, 8, 16, 32, 64], "rpn_batch_size_per_image": 32,
        "box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
        "rpn_post_nms_top_n_test": 100, "box_detections_per_img": 50}
STAGE = {"iterations": 3, "batch_size": 2, "lr": 0.01, "warmup_iterations": 2,
         "checkpoint_every": 0, "log_every": 1}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bass") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 5, "size": 128}, patch=64,
                    stride=64, ratio="1/4", val_fraction=0.2, test_fraction=0.2)
    return out


def config(ds: Path, **method: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split=SPLIT, batch_size=2)
    data["train"].update(progress=False)
    data.pop("model", None)
    data["method"] = {"name": "bass", "model": dict(TINY), "teacher": {**STAGE},
                      "student": {**STAGE, "iterations": 4}, "repeat_labelled": 2,
                      "paint": {"score_threshold": 0.05}, **method}
    return data


def run(ds: Path, out: Path, resume: bool | str = False, seed: int | None = None,
        **method: Any) -> Path:
    data = config(ds, **method)
    if seed is not None:
        data["train"]["seed"] = seed
    torch.manual_seed(0)
    return Trainer(experiment_from_dict(data, "bass.yaml"), out, resume=resume).run()


@pytest.fixture(scope="module")
def full(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return run(synth, tmp_path_factory.mktemp("full") / "run")


def test_three_stages_leave_their_outputs(full: Path) -> None:
    run_dir = full.parent
    assert (run_dir / "teacher" / "model" / "model.yaml").is_file()
    assert read_yaml(run_dir / "teacher" / "model" / "model.yaml")["family"] == "maskrcnn"
    assert read_yaml(run_dir / "teacher" / "model" / "model.yaml")["model"]["mask_branches"] \
        == ["nmh"]
    info = json.loads((run_dir / "pseudo_labels" / "threshold.json").read_text())
    assert info["threshold"] in THRESHOLD_GRID and len(info["curve"]) == 91
    pl = load_pseudo_labels(run_dir / "pseudo_labels")
    assert pl.labels.shape[1:] == (64, 64) and len(pl.patches) == info["n_patches"]
    assert [int(lab.max()) for lab in pl.labels] == info["kept_per_patch"]
    student = load_checkpoint(run_dir / "student" / "checkpoints" / "last.pt")
    assert student["iteration"] == 4 and student["stage"] == "student"
    meta = read_yaml(full / "model.yaml")
    assert meta["family"] == "maskrcnn" and meta["model"]["mask_branches"] == ["nmh", "lrd", "crc"]
    summary = json.loads((run_dir / "bass.json").read_text())
    assert summary["student_pool"] == 2 * summary["labelled_patches"] + summary["pseudo_patches"]


def test_interrupted_in_stage_3_and_resumed_equals_uninterrupted(
        synth: Path, full: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = detector_loop._step
    calls = {"n": 0}

    def step(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # teacher's 3 iterations, then 2 of the student
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(detector_loop, "_step", step)
    with pytest.raises(TrainingStopped, match="resume"):
        run(synth, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "student" / "checkpoints" / "last.pt"
                           )["iteration"] == 2
    assert not (tmp_path / "run" / "model" / "model.yaml").exists()
    monkeypatch.setattr(detector_loop, "_step", real)
    resumed = run(synth, tmp_path / "run", resume=True)
    a = load_checkpoint(full.parent / "student" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed.parent / "student" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_with_other_settings_is_refused(synth: Path, full: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(full.parent, run_dir)
    assert run(synth, run_dir, resume=True) == run_dir / "model"  # same settings: all done
    with pytest.raises(IrcrError, match="config section 'method' differs"):  # as every method
        run(synth, run_dir, resume=True, student={**STAGE, "iterations": 4, "lr": 0.02})
    with pytest.raises(IrcrError, match="teacher/checkpoints/last.pt: made with other settings"):
        run(synth, run_dir, resume=True, seed=3)  # train.seed: not compared by the trainer
    (run_dir / "config.yaml").unlink()  # e.g. a run folder of an older version
    with pytest.raises(IrcrError, match="run/model: made with other settings"):
        run(synth, run_dir, resume=True, student={**STAGE, "iterations": 4, "lr": 0.02})
    (run_dir / "config.yaml").unlink()
    with pytest.raises(IrcrError, match="teacher/checkpoints/last.pt: made with other settings"):
        run(synth, run_dir, resume=True, min_area=2)


def test_evaluate_and_segment_the_student(synth: Path, full: Path) -> None:
    from ircr import load_model
    from ircr.data.store import PreparedDataset
    from ircr.inference.evaluate import evaluate_folder

    res = evaluate_folder(full, synth, split="test", progress=False, device="cpu")
    assert res.split.endswith(":test") and len(res.per_image) == 1
    assert {"aji", "dice", "pq", "f1"} <= set(res.mean)
    ds = PreparedDataset(synth)
    tile = ds.load_image(0)
    seg = load_model(full, device="cpu").segment(np.ascontiguousarray(tile), mpp=0.25)
    assert seg.inst.shape == tile.shape[:2] and seg.inst.dtype == np.int32


def test_bad_options_are_one_line_errors(synth: Path) -> None:
    with pytest.raises(IrcrError, match=r"method.teacher.iterations: must be >= 1"):
        experiment_from_dict(config(synth, teacher={"iterations": 0}), "bass.yaml")
    with pytest.raises(IrcrError, match="method.teacher_branches"):
        experiment_from_dict(config(synth, teacher_branches=["xyz"]), "bass.yaml")
    with pytest.raises(IrcrError, match="unknown config key 'method.gamma1'"):
        experiment_from_dict(config(synth, gamma1=0.1), "bass.yaml")
