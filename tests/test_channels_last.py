"""``train.channels_last``: the network trains in NHWC memory layout with the same values.

The unit test runs the paper-depth network (blocks 3-4-6-3, decoder 8-4) at narrow width; the
training test runs 2+2 iterations on real MoNuSeg patches with and without the option from the
same seed, once interrupted and resumed, for supervised and for the EMA-teacher method (whose
teacher is a deep copy of the student).
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch

from conftest import run_data_prepare
from ircr.data.prepare import add_split
from ircr.models import build_model
from ircr.models.config import ModelConfig
from ircr.train.config import experiment_from_dict
from ircr.train.memory_format import apply_channels_last
from ircr.train.trainer import Trainer, TrainingInterrupted

torch.set_num_threads(2)


def test_channels_last_network_gives_the_same_maps() -> None:
    torch.manual_seed(0)
    ref = build_model(ModelConfig(width=0.125), load_pretrained=False).eval()
    cl = apply_channels_last(copy.deepcopy(ref))
    convs = [m.weight for m in cl.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.rand(2, 3, 96, 96)  # an ordinary NCHW batch: the hook converts it
    with torch.no_grad():
        a, b = ref(x), cl(x)
    assert set(a) == set(b) == {"np", "hv"}
    for k in a:
        assert b[k].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-4)  # fp32 rounding
    clone = copy.deepcopy(cl)  # an EMA teacher is a deep copy: layout and hook travel
    with torch.no_grad():
        torch.testing.assert_close(clone(x)["hv"], a["hv"], rtol=1e-3, atol=2e-4)


@pytest.fixture(scope="module")
def prepared(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monuseg_cl") / "prepared"
    run_data_prepare("monuseg", str(monuseg_root), "-o", str(out), "--patch", "64",
                     "--limit", "2", "--ratio", "1/4")
    add_split(out, "1/4", seed=0, val_fraction=0.0)
    return out


def _run(prepared: Path, run: Path, method: str, channels_last: bool,
         stop_after: int | None = None) -> list[float]:
    cfg = experiment_from_dict({
        "data": {"dataset": str(prepared), "split": "ratio_1-4_seed0_val0", "patch_size": 64,
                 "context_margin": 16, "batch_size": 2, "batch_size_unlabelled": 2,
                 "workers": 0},
        "model": {"width": 0.125},
        "train": {"epochs": 2, "iterations_per_epoch": 2, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "checkpoint_every": 1,
                  "val_every": 0, "channels_last": channels_last, "seed": 3},
        "method": {"name": method},
    })
    if stop_after is not None:
        with pytest.raises(TrainingInterrupted):
            Trainer(cfg, run, stop_after=stop_after).run()
    Trainer(cfg, run, resume=stop_after is not None).run()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(float(r["iterations"])) for r in rows] == [2, 4]
    return [float(r["train_loss"]) for r in rows]


@pytest.mark.parametrize("method", ["supervised", "mean_teacher"])
def test_channels_last_training_resumes_exactly(prepared: Path, tmp_path: Path,
                                                method: str) -> None:
    whole = _run(prepared, tmp_path / "whole", method, True)
    resumed = _run(prepared, tmp_path / "resumed", method, True, stop_after=3)
    assert resumed == whole  # the checkpoint restores a channels_last run exactly
    nchw = _run(prepared, tmp_path / "nchw", method, False)
    # the first epoch (iterations 1-2) agrees with NCHW up to rounding; after that Adam's
    # sign-like first steps amplify rounding differences of near-zero gradients
    assert whole[0] == pytest.approx(nchw[0], rel=1e-2)
    state = torch.load(tmp_path / "whole" / "model" / "weights.pt", weights_only=True)
    fresh = build_model(ModelConfig(width=0.125), load_pretrained=False)
    fresh.load_state_dict(state)  # the model folder loads into an ordinary NCHW network


def test_channels_last_gradients_match() -> None:
    from ircr.losses import hovernet_loss

    torch.manual_seed(1)
    ref = build_model(ModelConfig(width=0.125), load_pretrained=False).train()
    cl = apply_channels_last(copy.deepcopy(ref))
    x = torch.rand(2, 3, 64, 64) * 255
    np_t = (torch.rand(2, 64, 64) > 0.7).long()
    hv_t = torch.rand(2, 2, 64, 64) * 2 - 1
    for model in (ref, cl):
        loss, _ = hovernet_loss(model(x), np_t, hv_t)
        loss.backward()
    # at a random start the early encoder's gradients are sums with heavy cancellation: fp32
    # NCHW itself is off float64 by ~1 % (max abs / max) there, channels_last by ~3-7 %
    # (measured), so the check is the direction of every parameter's gradient
    for (name, a), b in zip(ref.named_parameters(), cl.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        cos = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert float(cos) > 0.995, name
