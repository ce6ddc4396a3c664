"""Self-training as the IRCR-Net paper describes it (``self_training`` ``mode: progressive``).

Schedule and selection rules by hand (ircr.ssl.progressive), then a real run: paper depth
(blocks 3-4-6-3, decoder units 8-4) at width 0.125 on real MoNuSeg 64 px patches, one
iteration per epoch so metrics.csv shows the pseudo-labelled share of every iteration.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ircr.config import load_yaml_file
from ircr.data.prepare import add_split, prepare_dataset
from ircr.data.targets import hover_targets
from ircr.errors import IrcrError
from ircr.metrics import instance_metrics
from ircr.postproc.watershed import WBISParams
from ircr.ssl import progressive
from ircr.train.config import experiment_from_dict
from ircr.train.methods.self_training import SelfTraining
from ircr.train.trainer import Trainer

torch.set_num_threads(2)
PROTOCOLS = Path(__file__).parents[1] / "configs" / "protocols"


# -- rules by hand ----------------------------------------------------------------------------
def test_replaced_fraction_by_hand() -> None:
    # T = 8, start 0.25 -> iteration 2, end 0.75 -> iteration 6, final 1
    got = [progressive.replaced_fraction(i, 8, 0.25, 0.75, 1.0) for i in range(8)]
    assert got == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # T = 10, start 0.2 (2), end 0.6 (6), final 0.5: i = 4 -> 0.5 * 2 / 4
    assert progressive.replaced_fraction(4, 10, 0.2, 0.6, 0.5) == pytest.approx(0.25)
    assert progressive.replaced_fraction(3, 10, 0.3, 0.3, 0.5) == 0.5  # no ramp: a step
    assert progressive.replaced_fraction(2, 10, 0.3, 0.3, 0.5) == 0.0
    with pytest.raises(ValueError):
        progressive.replaced_fraction(0, 0, 0.2, 0.6, 1.0)


def test_replaced_count_by_hand() -> None:
    assert [progressive.replaced_count(f, 4) for f in (0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] \
        == [0, 0, 1, 2, 2, 3, 4]
    assert progressive.replaced_count(0.3, 10) == 3  # 0.3 * 10 = 2.9999999999999996
    assert progressive.replaced_count(1.5, 3) == 3


def test_confidence_and_selection_by_hand() -> None:
    prob = torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]], [[1.0, 0.0]], [[0.2, 0.6]]])
    valid = torch.tensor([[[True, True]], [[True, True]], [[True, False]], [[True, True]]])
    conf = progressive.patch_confidence(prob, valid)
    # mean of max(p, 1 - p) over valid pixels: 0.5, 0.9, 1.0 (one valid pixel), 0.7
    assert conf.tolist() == pytest.approx([0.5, 0.9, 1.0, 0.7])
    assert progressive.most_confident(conf, 2) == [1, 2]  # batch order
    assert progressive.most_confident(conf, 3) == [1, 2, 3]
    assert progressive.most_confident(conf, 0) == []
    tie = torch.tensor([0.8, 0.9, 0.8, 0.8])
    assert progressive.most_confident(tie, 2) == [0, 1]  # stable: the earlier 0.8


def test_pseudo_targets_recover_a_perfect_prediction(monuseg_root: Path) -> None:
    """A prediction equal to the ground truth's own targets gives back (nearly) its targets."""
    gt = np.asarray(Image.open(monuseg_root / "labels_inst" / "TCGA-18-5592-01Z-00-DX1.png"))
    gt = gt[300:428, 300:428].astype(np.int32)
    np_gt, hv_gt = hover_targets(gt)
    np_t, hv_t, inst = progressive.pseudo_targets(np_gt[None].astype(np.float32), hv_gt[None],
                                                  WBISParams())
    assert np_t.shape == (1, 128, 128) and np_t.dtype == np.int64
    assert hv_t.shape == (1, 2, 128, 128) and hv_t.dtype == np.float32
    assert instance_metrics(gt, inst[0]).aji > 0.8
    assert instance_metrics(gt, inst[0]).dice > 0.95
    assert float(np.abs(hv_t).max()) <= 1.0


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,msg", [
    ({"progressive_start": 0.8, "progressive_end": 0.5},
     r"'method.progressive_start' \(0.8\) must be <= 'method.progressive_end' \(0.5\)"),
    ({"mode": "progressive", "rounds": 2}, r"'method.rounds' applies to mode offline only"),
    ({"final_fraction": 1.5}, r"method.final_fraction"),
    ({"mode": "online"}, r"method.mode"),
])
def test_bad_options_are_one_line_errors(opts: dict[str, Any], msg: str) -> None:
    with pytest.raises(IrcrError, match=msg) as err:
        experiment_from_dict({"method": {"name": "self_training", **opts}})
    assert "\n" not in str(err.value)


def test_table2_protocols_use_the_papers_mode() -> None:
    for name in ("monuseg_table2.yaml", "monuseg_table2_pretrained.yaml"):
        proto = load_yaml_file(PROTOCOLS / name, "protocol")
        rows = [m for m in proto["methods"] if m.get("method", m["name"]) == "self_training"]
        assert rows and all(m["overrides"]["method.mode"] == "progressive" for m in rows)


def test_plan_counts_progressive_st_as_one_pass_over_unlabelled_patches() -> None:
    from ircr.experiment.plan import SplitSize, _native_ipe, _passes

    size = SplitSize(labelled=8, unlabelled=40, val_images=0, train_images=3)
    prog = {"method": {"name": "self_training", "mode": "progressive"},
            "data": {"batch_size": 4, "batch_size_unlabelled": 4}}
    off = {"method": {"name": "self_training", "rounds": 2},
           "data": {"batch_size": 4, "batch_size_unlabelled": 4}}
    assert (_passes(prog), _native_ipe(prog, size)) == (1, 10)  # 40 / 4, one run
    assert (_passes(off), _native_ipe(off, size)) == (3, 2)  # 2 teachers + student; 8 / 4


# -- a real run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("st_progressive") / "prepared"
    prepare_dataset("monuseg", monuseg_root, out, limit=3, patch=64, ratio="1/4",
                    val_fraction=0.0)
    add_split(out, "1/4", seed=0, val_fraction=0.0)
    return out


def _st_cfg(prepared: Path, iterations: int, **opts: Any) -> Any:
    split = next(p.stem for p in (prepared / "splits").glob("ratio_1-4_seed0*.yaml"))
    return experiment_from_dict({
        "data": {"dataset": str(prepared), "split": split, "patch_size": 64,
                 "context_margin": 16, "batch_size": 1, "batch_size_unlabelled": 2,
                 "workers": 0},
        "model": {"width": 0.125},  # paper depth
        "train": {"epochs": iterations, "iterations_per_epoch": 1, "lr": 1e-3,
                  "lr_steps": [], "device": "cpu", "amp": "off", "progress": False,
                  "tensorboard": False, "val_every": 0, "seed": 10},
        "method": {"name": "self_training", "mode": "progressive", **opts},
    })


def _fractions(run: Path) -> list[float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    return [float(r["train_pseudo_fraction"]) for r in rows]


def test_progressive_run_replaces_the_scheduled_share(prepared: Path, tmp_path: Path) -> None:
    """T = 4 iterations, batch 1 + 2, start 0.25 (iteration 1), end 0.75 (iteration 3):
    fractions 0, 0, 0.5, 1 -> 0, 0, 1, 2 of the 2 unlabelled patches; every loss finite."""
    trainer = Trainer(_st_cfg(prepared, 4, progressive_start=0.25, progressive_end=0.75,
                              final_fraction=1.0), tmp_path / "run")
    assert trainer.method.uses_unlabelled
    trainer.run()
    assert _fractions(tmp_path / "run") == [0.0, 0.0, 0.5, 1.0]
    assert isinstance(trainer.method, SelfTraining)
    assert trainer.method.last_replaced == [0, 1]  # the last iteration: both patches
    assert (tmp_path / "run" / "model" / "weights.pt").is_file()


def test_progressive_run_with_ema_labels(prepared: Path, tmp_path: Path) -> None:
    """``pseudo_model: ema``: a step from the first iteration (start = end = 0, final 0.5 ->
    1 of 2 patches), the EMA copy checkpointed."""
    trainer = Trainer(_st_cfg(prepared, 2, progressive_start=0.0, progressive_end=0.0,
                              final_fraction=0.5, pseudo_model="ema"), tmp_path / "run")
    trainer.run()
    assert _fractions(tmp_path / "run") == [0.5, 0.5]
    state = trainer.method.state_dict()
    assert "teacher" in state and isinstance(trainer.method, SelfTraining)
    assert trainer.method.teacher is not None
    student = dict(trainer.model.named_parameters())
    moved = [n for n, p in trainer.method.teacher.named_parameters()
             if not torch.equal(p, student[n])]
    assert moved  # the EMA copy lags the student
