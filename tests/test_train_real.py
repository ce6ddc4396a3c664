"""Training on real MoNuSeg patches (CPU, tiny network): overfitting and beating no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset
from ircr.train.config import experiment_from_dict
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def tiny(ds: Path, split: str, **sections: dict[str, Any]) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split=split, patch_size=128)
    data["train"].update(progress=False, lr_steps=[])
    for key, val in sections.items():
        data[key].update(val)
    return data


def np_dice(model: torch.nn.Module, image: np.ndarray, inst: np.ndarray) -> float:
    """Foreground Dice of the NP branch (p > 0.5) on one (H, W, 3) uint8 patch."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    pred = torch.softmax(out["np"], 1)[0, 1].numpy() > 0.5
    gt = inst > 0
    return float(2 * (pred & gt).sum() / max(1, pred.sum() + gt.sum()))


@pytest.fixture(scope="module")
def two_patches(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 MoNuSeg images on a 128 px grid (128 patches); ratio 1/64 labels exactly 2 of them."""
    out = tmp_path_factory.mktemp("monuseg") / "ds"
    prepare_dataset("monuseg", monuseg_root, out, limit=2, patch=128, ratio="1/64",
                    val_fraction=0.0)
    return out


def test_overfits_two_monuseg_patches(two_patches: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = tiny(two_patches, "ratio_1-64_seed0_val0",
                data={"batch_size": 2, "augment": {"geometric": False, "photometric": False}},
                train={"epochs": 1, "iterations_per_epoch": 100, "lr": 2.0e-3})
    tr = Trainer(experiment_from_dict(data, "test"), tmp_path / "run")
    assert len(tr.split.labelled) == 2
    ds = tr.dataset
    patches = []
    for pid in tr.split.labelled:
        p = ds.patches[pid]
        image, inst = ds.read_window(p.image, p.y0, p.x0, 128, 128)
        assert inst is not None and (inst > 0).mean() > 0.05  # real nuclei in the patch
        patches.append((image, inst))
    before = [np_dice(tr.model, *p) for p in patches]
    tr.run()
    after = [np_dice(tr.model, *p) for p in patches]
    assert min(after) > 0.9, (before, after)


# In the default run on purpose: the only proof that training improves AJI (real data, the
# trainer's own whole-image validation: predict_maps + WBIS + metrics). See the docstring.
def test_training_beats_untrained_network_in_val_aji(monuseg_root: Path,
                                                     tmp_path: Path) -> None:
    """3 MoNuSeg images (2 train, 1 val), width 0.25, lr 2e-3, batch 4, 200 iterations.

    The width-0.125 network of ``tiny_synthetic.yaml`` is a seed lottery here: its HV branch
    can sit at ~0 output for hundreds of iterations (seed 11: mean |hv| 0.013 inside the
    predicted foreground), the min-max-normalised Sobel energy of WBIS is then >= 0.43
    everywhere, no marker survives and the val AJI is 0. Measured val AJI after "its"
    iterations (untrained <= 0.03 where recorded; the data of iteration i depends only on
    (seed, i), so runs validated every 50-100 iterations equal this one at the same "its"):

    =================================  ====  =====  =====  =====  =====
    setting (torch 2.14.1)             its   s10    s11    s12    s13
    =================================  ====  =====  =====  =====  =====
    w 0.125, lr 2e-3, batch 4 (old)    300   0.041  0      0.26
    w 0.125, lr 1e-3, batch 4          200          0
    w 0.125, lr 2e-3, batch 4, msge 2  200          0
    w 0.125, lr 2e-3, batch 8          200          0
    w 0.25,  lr 2e-3, batch 4          100   0.325  0.332  0.019
    w 0.25,  lr 1e-3, batch 4          150   0.031  0.022  0.316
    w 0.25,  lr 2e-3, batch 4 (this)   200   0.208  0.380  0.290  0.214
    =================================  ====  =====  =====  =====  =====

    torch 2.13.0, this setting, seed 10: 0.152 (0.328 at 100 its). Untrained (seed 10) 0.009,
    so the test's margin over its threshold is 0.099 (torch 2.14.1) and 0.043 (2.13): thin,
    and an estimated ~150 s on one idle core (width 0.25 costs ~2.6x width 0.125 per iteration).
    """
    torch.set_num_threads(1)
    out = tmp_path / "ds"
    prepare_dataset("monuseg", monuseg_root, out, limit=3, patch=128, ratio="1",
                    val_fraction=0.34)
    data = tiny(out, "ratio_1_seed0_val0.34", data={"batch_size": 4}, model={"width": 0.25},
                train={"epochs": 1, "iterations_per_epoch": 200, "lr": 2.0e-3, "seed": 10},
                eval={"window": 256, "overlap": 64})
    cfg = experiment_from_dict(data, "test")
    tr = Trainer(cfg, tmp_path / "run")
    untrained = tr.validate()["val_student_aji"]
    tr.run()
    trained = tr.last_row["val_student_aji"]
    assert trained > untrained + 0.1, (untrained, trained)
