"""Training loop of a detector stage (BASS teacher and student: Mask R-CNN on patches).

Why not the HoVer-Net loop of :class:`~ircr.train.trainer.Trainer`: a detector stage trains on
whole patches with boxes + masks made from per-patch instance maps (pseudo-labels are per
patch, and overlapping patches of one image have different ones), flips only (the released
BASS pipeline: flip 0.5 + resizing, the resizing done by the network's own transform), SGD with
linear warm-up per iteration and a labelled repeat factor. It shares the trainer's pieces:
atomic checkpoints with RNG state (:mod:`ircr.train.checkpoint`), Ctrl-C/SIGTERM ->
checkpoint -> :class:`~ircr.train.stop.TrainingStopped`, time-based checkpoints,
``metrics.csv`` (:class:`~ircr.train.logging.MetricsLogger`, one row per ``log_every``
iterations; the ``epoch`` column is that row's index).

Data: ``pool`` is a list of item ids (repeats allowed: the repeat factor); the batch of
iteration ``i`` takes keys ``i*B .. i*B+B-1``; key ``k`` picks ``pool[perm_c[k mod n]]`` from
a seeded permutation of cycle ``c = k // n`` and draws its flips from ``(seed, k)``. So the
data of an iteration is a pure function of (seed, i) and a resumed stage sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ircr.config import bounded
from ircr.data.detection import detection_targets
from ircr.errors import IrcrError
from ircr.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ircr.train.logging import MetricsLogger
from ircr.train.stage_tools import stage_bar
from ircr.train.stop import CheckpointClock, StopRequest, TrainingStopped

__all__ = ["DetectionSchedule", "StageInterrupted", "lr_at", "resolve", "detection_batch",
           "train_detector"]

ReadItem = Callable[[int], tuple[np.ndarray, np.ndarray]]
_PICK, _AUG = 0x706963, 0x617567


class StageInterrupted(RuntimeError):
    """Raised by ``stop_after`` (tests of resume) right after that iteration's checkpoint."""


MAX_STEPS = 10**9  # optimiser steps of one stage
MAX_EPOCHS = 1_000_000  # a stage's length in passes over its pool (finite)


@dataclass
class DetectionSchedule:
    """SGD schedule of one detector stage (defaults: the released BASS configs).

    Attributes:
        iterations: optimiser steps of the stage.
        epochs: when set, the stage's length in passes over its item pool instead:
            ``iterations = ceil(epochs * pool / batch_size)`` (:meth:`resolve`).
        lr_step_epochs: lr steps in epochs (converted with the same rule, added to
            ``lr_steps``).
        batch_size: patches per step (2 per GPU in the paper).
        lr, momentum, weight_decay: SGD (0.02, 0.9, 1e-4 in the configs; the paper text says
            weight decay 0.001).
        warmup_iterations, warmup_factor: linear warm-up from ``warmup_factor * lr`` to ``lr``
            over the first iterations (500, 0.001).
        lr_steps, lr_gamma: iterations after which lr is multiplied by ``lr_gamma``.
        grad_clip: max gradient norm (None = off, as the released configs).
        hflip, vflip: random flips (p = 0.5 each; the paper: horizontal only).
        checkpoint_every: iterations between checkpoints (and at the end; 0 = end only).
        checkpoint_minutes: also checkpoint after this much wall time (0 = off).
        log_every: iterations per metrics.csv row.
    """

    iterations: int = bounded(2000, hi=MAX_STEPS)  # lower bounds: check()
    epochs: float | None = bounded(None, hi=MAX_EPOCHS)
    lr_step_epochs: list[float] = bounded(hi=MAX_EPOCHS, factory=list)
    batch_size: int = bounded(2, hi=1024)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = bounded(500, hi=MAX_STEPS)
    warmup_factor: float = 0.001
    lr_steps: list[int] = bounded(hi=MAX_STEPS, factory=list)
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    hflip: bool = True
    vflip: bool = False
    checkpoint_every: int = 100
    checkpoint_minutes: float = 0.0
    log_every: int = 20

    def check(self, where: str = "schedule") -> DetectionSchedule:
        """One-line IrcrError naming ``where.<key>`` for an unusable value (not called
        ``validate``: the config loader calls that with the file only; the method calls this
        with the dotted key, e.g. ``"<file>: method.teacher"``)."""
        checks = [
            (self.iterations >= 1, "iterations", "must be >= 1"),
            (self.epochs is None or self.epochs > 0, "epochs", "must be > 0 or null"),
            (all(e > 0 for e in self.lr_step_epochs), "lr_step_epochs", "must be epochs > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.warmup_iterations >= 0, "warmup_iterations", "must be >= 0"),
            (0 < self.warmup_factor <= 1, "warmup_factor", "must be in (0, 1]"),
            (all(s >= 1 for s in self.lr_steps), "lr_steps", "must be iterations >= 1"),
            (0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0 or null"),
            (self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0"),
            (self.checkpoint_minutes >= 0, "checkpoint_minutes", "must be >= 0"),
            (self.log_every >= 1, "log_every", "must be >= 1"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise IrcrError(f"{where}.{key}: {problem}, got {getattr(self, key)}")
        return self


def resolve(s: DetectionSchedule, pool_size: int) -> DetectionSchedule:
    """The schedule in iterations for a pool of ``pool_size`` items (epochs converted)."""
    per_epoch = max(int(pool_size), 1) / s.batch_size

    def its(epochs: float) -> int:
        return max(1, math.ceil(epochs * per_epoch - 1e-9))

    iterations = s.iterations if s.epochs is None else its(s.epochs)
    steps = sorted({*s.lr_steps, *(its(e) for e in s.lr_step_epochs)})
    return replace(s, iterations=iterations, epochs=None, lr_step_epochs=[], lr_steps=steps)


def lr_at(s: DetectionSchedule, iteration: int) -> float:
    """Learning rate of step ``iteration`` (0-based): linear warm-up, then step decay."""
    lr = s.lr * s.lr_gamma ** sum(1 for step in s.lr_steps if iteration >= step)
    if iteration < s.warmup_iterations:
        k = (1.0 - iteration / s.warmup_iterations) * (1.0 - s.warmup_factor)
        lr *= 1.0 - k
    return lr


def detection_batch(
    pool: Sequence[int], read: ReadItem, s: DetectionSchedule, seed: int, iteration: int,
    min_area: int = 1,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[int]]:
    """Images (3, P, P) float 0..255, targets and item ids of one iteration (CPU tensors)."""
    images, targets, items = [], [], []
    n = len(pool)
    for j in range(s.batch_size):
        key = iteration * s.batch_size + j
        cycle, pos = divmod(key, n)
        item = int(pool[int(np.random.default_rng([seed, _PICK, cycle]).permutation(n)[pos])])
        image, inst = read(item)
        rng = np.random.default_rng([seed, _AUG, key])
        flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
        if s.hflip and flip_h:
            image, inst = image[:, ::-1], inst[:, ::-1]
        if s.vflip and flip_v:
            image, inst = image[::-1], inst[::-1]
        t = detection_targets(np.ascontiguousarray(inst), min_area=min_area,
                              where=f"training item {item}")
        images.append(torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy())
                      .float())
        targets.append({"boxes": torch.from_numpy(t["boxes"]),
                        "labels": torch.from_numpy(t["labels"]),
                        "masks": torch.from_numpy(t["masks"])})
        items.append(item)
    return images, targets, items


@dataclass
class _Progress:
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    t0: float = field(default_factory=time.time)

    def add(self, parts: dict[str, float]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def row(self, iteration: int, lr: float) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"iteration": iteration, "lr": lr}
        out.update({f"train_{k}": v / max(self.count, 1) for k, v in self.sums.items()})
        out["seconds_per_iteration"] = (time.time() - self.t0) / max(self.count, 1)
        return out


def _state(model: nn.Module, opt: torch.optim.Optimizer, iteration: int,
           extra: dict[str, Any], prog: _Progress) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": iteration,
            "rng": capture_rng(), "log_sums": dict(prog.sums), "log_count": prog.count,
            **extra}


def train_detector(
    model: nn.Module,
    pool: Sequence[int],
    read: ReadItem,
    schedule: DetectionSchedule,
    run_dir: str | Path,
    *,
    device: torch.device,
    seed: int = 0,
    min_area: int = 1,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    extra_state: dict[str, Any] | None = None,
    progress: bool = False,
    desc: str = "training",
    resume_hint: str = "run the same command to resume",
) -> int:
    """Train ``model`` (returns a loss dict in train mode) for the stage's iterations.

    Resumes from ``run_dir/checkpoints/last.pt`` when it exists (``extra_state`` must then
    match what was saved, e.g. the stage name and pool size: another stage's checkpoint is
    refused). ``progress``: a bar named ``desc`` with ETA on stderr; ``resume_hint`` ends the
    message of a Ctrl-C/SIGTERM stop. Returns the number of iterations done
    (= ``schedule.iterations``).
    """
    if not pool:
        raise IrcrError(f"{run_dir}: no training patches for this stage")
    schedule = resolve(schedule.check(), len(pool))
    run = Path(run_dir)
    ckpt = run / "checkpoints" / "last.pt"
    extra = dict(extra_state or {})
    model.to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=schedule.lr,
                          momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    it = 0
    prog = _Progress()  # the partial metrics.csv row travels in the checkpoint
    if ckpt.is_file():
        state = load_checkpoint(ckpt, map_location=device)
        for key, val in extra.items():
            if state.get(key) != val:
                raise IrcrError(f"{ckpt}: checkpoint is for {key}={state.get(key)!r}, this run "
                                f"has {key}={val!r} (start a new run folder)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        it = int(state["iteration"])
        restore_rng(state["rng"])
        prog.sums = {str(k): float(v) for k, v in state.get("log_sums", {}).items()}
        prog.count = int(state.get("log_count", 0))
    logger = MetricsLogger(run, tensorboard=False)
    logger.truncate(it // schedule.log_every)
    say = log or (lambda _m: None)
    say(f"{run}: iterations {it}/{schedule.iterations}, {len(pool)} items in the pool, "
        f"batch {schedule.batch_size}")
    clock = CheckpointClock(schedule.checkpoint_minutes)
    bar = stage_bar(progress, schedule.iterations, desc, initial=it)
    try:
        with StopRequest() as stop:
            while it < schedule.iterations:
                lr = lr_at(schedule, it)
                _step(model, opt, pool, read, schedule, seed, it, lr, device, min_area, prog)
                it += 1
                if bar is not None:
                    bar.update(1)
                if it % schedule.log_every == 0 or it == schedule.iterations:
                    logger.log((it - 1) // schedule.log_every, prog.row(it, lr))
                    prog = _Progress()
                due = (schedule.checkpoint_every and it % schedule.checkpoint_every == 0) \
                    or it == schedule.iterations or clock.due() or stop.requested \
                    or (stop_after is not None and it >= stop_after)
                if due:
                    save_checkpoint(ckpt, _state(model, opt, it, extra, prog))
                    clock.reset()
                if stop.requested:
                    raise TrainingStopped(f"{run}: stopped at iteration {it} "
                                          f"({stop.requested}), checkpoint saved; {resume_hint}")
                if stop_after is not None and it >= stop_after:
                    raise StageInterrupted(f"{run}: stopped after iteration {it} (stop_after)")
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    return it


def _step(model: nn.Module, opt: torch.optim.Optimizer, pool: Sequence[int], read: ReadItem,
          s: DetectionSchedule, seed: int, it: int, lr: float, device: torch.device,
          min_area: int, prog: _Progress) -> None:
    images, targets, items = detection_batch(pool, read, s, seed, it, min_area)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    for group in opt.param_groups:
        group["lr"] = lr
    losses = model(images, targets)
    loss = torch.stack([v for v in losses.values()]).sum()
    if not math.isfinite(float(loss.detach())):
        parts = {k: float(v.detach()) for k, v in losses.items()}
        raise IrcrError(f"training: loss is not finite at iteration {it} (items {items}; "
                        f"parts {parts}); lower the learning rate or check the labels")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    opt.step()
    prog.add({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}})
