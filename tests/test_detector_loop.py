"""The detector-stage training loop (ircr.train.detector_loop): schedule, batches, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.train.checkpoint import load_checkpoint
from ircr.train.detector_loop import (
    DetectionSchedule,
    StageInterrupted,
    detection_batch,
    lr_at,
    resolve,
    train_detector,
)


def test_lr_warmup_and_steps_by_hand() -> None:
    s = DetectionSchedule(lr=0.02, warmup_iterations=500, warmup_factor=0.001, lr_steps=[800])
    assert lr_at(s, 0) == pytest.approx(0.02 * 0.001)
    # half-way: 0.02 * (1 - 0.5 * 0.999) = 0.01001
    assert lr_at(s, 250) == pytest.approx(0.01001)
    assert lr_at(s, 500) == pytest.approx(0.02) and lr_at(s, 799) == pytest.approx(0.02)
    assert lr_at(s, 800) == pytest.approx(0.002)
    assert lr_at(DetectionSchedule(warmup_iterations=0), 0) == pytest.approx(0.02)


def test_epochs_resolve_to_iterations_by_hand() -> None:
    # MoNuSeg 1/8: 110 labelled patches at batch 2 = 55 iterations per epoch; the paper's
    # teacher: 30 epochs with lr steps after epochs 8 and 11
    s = resolve(DetectionSchedule(epochs=30, lr_step_epochs=[8, 11], batch_size=2), 110)
    assert (s.iterations, s.lr_steps, s.epochs) == (1650, [440, 605], None)
    # 221 patches: 110.5 iterations per epoch -> ceil(30 * 110.5) = 3315
    assert resolve(DetectionSchedule(epochs=30, batch_size=2), 221).iterations == 3315
    assert resolve(DetectionSchedule(iterations=7), 1000).iterations == 7


def _items() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k in range(3):
        img = np.full((16, 16, 3), 200, np.uint8)
        inst = np.zeros((16, 16), np.int32)
        inst[2:6, 1:4 + k] = 1  # one box [1, 2, 4 + k, 6]
        inst[10:12, 10:15] = 2
        img[inst > 0] = 30
        out[k] = (img, inst)
    return out


def test_batches_are_a_pure_function_of_seed_and_iteration() -> None:
    items = _items()
    s = DetectionSchedule(batch_size=2)
    a = detection_batch([0, 1, 2], items.__getitem__, s, seed=5, iteration=7)
    b = detection_batch([0, 1, 2], items.__getitem__, s, seed=5, iteration=7)
    assert a[2] == b[2]
    for x, y in zip(a[1], b[1], strict=True):
        assert torch.equal(x["boxes"], y["boxes"])
    # every item comes once per cycle of the pool (keys 0..5 = two cycles of 3)
    seen = [i for it in range(3) for i in detection_batch([0, 1, 2], items.__getitem__, s, 5,
                                                          it)[2]]
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:]) == [0, 1, 2]


def test_flipped_batches_keep_boxes_on_the_nuclei() -> None:
    items = _items()
    s = DetectionSchedule(batch_size=4, hflip=True, vflip=True)
    for it in range(4):
        images, targets, _ = detection_batch([0, 1, 2], items.__getitem__, s, 1, it)
        for img, t in zip(images, targets, strict=True):
            for box, mask in zip(t["boxes"].int().tolist(), t["masks"], strict=True):
                x0, y0, x1, y1 = box
                inside = img[0, y0:y1, x0:x1][mask[y0:y1, x0:x1] > 0]
                assert inside.numel() == int(mask.sum()) and bool((inside == 30).all())


class _FakeDetector(nn.Module):
    """Loss dict from a 2-parameter model: (w * mean intensity / 255 - #boxes)^2 + b^2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.tensor(1.0))

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        pred = torch.stack([self.w * im.mean() / 255 for im in images])
        n = torch.tensor([float(len(t["boxes"])) for t in targets])
        return {"loss_count": ((pred - n) ** 2).mean(), "loss_bias": self.b ** 2}


def _train(run: Path, stop_after: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = _FakeDetector()
    s = DetectionSchedule(iterations=6, batch_size=2, lr=0.05, warmup_iterations=2,
                          checkpoint_every=4, log_every=2)
    train_detector(model, [0, 1, 2, 0], _items().__getitem__, s, run,
                   device=torch.device("cpu"), seed=3, stop_after=stop_after,
                   extra_state={"stage": "student"})
    return model


def test_resume_after_interruption_is_exact(tmp_path: Path) -> None:
    full = _train(tmp_path / "full")
    with pytest.raises(StageInterrupted):
        _train(tmp_path / "cut", stop_after=3)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["iteration"] == 3
    resumed = _train(tmp_path / "cut")
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert float(full.b.detach()) < 1.0  # it trained

    def table(run: Path) -> list[list[str]]:  # without the timing column (last)
        return [r.split(",")[:-1] for r in (run / "metrics.csv").read_text().splitlines()]

    assert table(tmp_path / "cut") == table(tmp_path / "full")
    assert len(table(tmp_path / "cut")) == 1 + 3
    assert table(tmp_path / "cut")[0][:4] == ["epoch", "iteration", "lr", "train_loss"]


def test_checkpoint_of_another_stage_is_refused(tmp_path: Path) -> None:
    _train(tmp_path)
    model = _FakeDetector()
    with pytest.raises(IrcrError, match="checkpoint is for stage='student'"):
        train_detector(model, [0], _items().__getitem__, DetectionSchedule(iterations=7),
                       tmp_path, device=torch.device("cpu"), extra_state={"stage": "teacher"})


def test_schedule_errors_name_the_key() -> None:
    with pytest.raises(IrcrError, match=r"method.student.momentum: must be in \[0, 1\)"):
        DetectionSchedule(momentum=1.5).check("method.student")
