"""Self-supervised encoder pretraining loop (``ircr pretrain``): BYOL + dense BYOL.

The loop owns the online network (encoder + projectors + predictors), the EMA target, AdamW
with linear warm-up and cosine decay, bf16 autocast on CUDA, checkpoints, exact resume and the
output folder. Tiles come from a callable ``tiles(k) -> (pool, T, T, 3) uint8`` (the engine
samples them from images and slides); iteration ``i`` uses pool ``i // data.refresh`` and a
numpy generator seeded with ``(seed, i)`` for its tile choice and views, so the data of an
iteration never depends on what ran before it and an interrupted, resumed run equals an
uninterrupted one (bit-exact on CPU).

Output folder::

    encoder.pt            {"ircr_pretrain": {format, arch, ...}, "state_dict": encoder weights}
    card.json             sources, pixel counts, mpp, steps, objective, versions, timings
    metrics.csv           iteration, loss, global, dense, lr, ema, it/s every train.log_every
    config.yaml           the resolved config
    checkpoints/last.pt   atomic; Ctrl-C / SIGTERM write it and stop
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ircr.config import to_dict, write_yaml
from ircr.errors import IrcrError
from ircr.inference.device import amp_dtype, autocast, select_device
from ircr.io.atomic import atomic_write_text
from ircr.io.torchfile import save_torch
from ircr.models.pretrained import PRETRAIN_FORMAT, PRETRAIN_WEIGHTS
from ircr.models.selfsup import BackboneBody, DenseNetBody, HoVerNetEncoder, PretrainNet
from ircr.ssl.byol import byol_loss, cosine_ramp, dense_byol_loss
from ircr.ssl.ema import ema_update, make_teacher
from ircr.ssl.views import correspondence, render_views, sample_views
from ircr.train import run_text
from ircr.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ircr.train.pretrain_config import PretrainConfig, pretrain_config_from_dict
from ircr.train.seeding import seed_everything
from ircr.train.stop import CheckpointClock, StopRequest, TrainingStopped
from ircr.train.trainer import TrainingInterrupted

__all__ = ["Pretrainer", "build_encoder", "lr_at"]

TileFn = Callable[[int], np.ndarray]
#: settings a resumed run may change (they do not change the result)
RUN_ONLY = ("progress", "device", "checkpoint_every", "checkpoint_minutes", "log_every",
            "max_minutes")


def build_encoder(cfg: PretrainConfig) -> HoVerNetEncoder | BackboneBody | DenseNetBody:
    """The encoder ``cfg.target`` names, random init."""
    if cfg.target == "hovernet":
        return HoVerNetEncoder(cfg.model)
    if cfg.target == "cdcl":
        return DenseNetBody(cfg.densenet)
    return BackboneBody(cfg.backbone, cfg.tiny_channels)


def lr_at(cfg: PretrainConfig, i: int) -> float:
    """Linear warm-up over ``warmup_iterations``, then cosine decay to 0 at ``iterations``."""
    t = cfg.train
    warm = min(1.0, (i + 1) / t.warmup_iterations) if t.warmup_iterations else 1.0
    return t.lr * warm * 0.5 * (1 + math.cos(math.pi * i / t.iterations))


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    for key in RUN_ONLY:
        out.get("train", {}).pop(key, None)
    return out


class Pretrainer:
    """Pretrain ``cfg``'s encoder on ``tiles`` into ``out``.

    Args:
        cfg: validated config.
        out: output folder (created).
        tiles: ``tiles(k)`` -> pool ``k``, (cfg.data.pool, T, T, 3) uint8; a pure function of k.
        resume: continue from ``out/checkpoints/last.pt`` (error if absent); False refuses a
            folder that already holds a checkpoint or weights.
        card: extra card entries (sources, skipped, versions), written into ``card.json``.
        resume_hint: the command that resumes, printed on Ctrl-C / SIGTERM.
        stop_after: raise :class:`TrainingInterrupted` after this iteration (tests).
        on_step: called after every step with the pretrainer (tests, progress hooks).
    """

    def __init__(self, cfg: PretrainConfig, out: str | Path, tiles: TileFn, *,
                 resume: bool = False, card: dict[str, Any] | None = None,
                 resume_hint: str = "", stop_after: int | None = None,
                 on_step: Callable[[Pretrainer], None] | None = None) -> None:
        self.cfg, self.out, self.tiles = cfg, Path(out), tiles
        self.card_extra = dict(card or {})
        self.resume_hint, self.stop_after, self.on_step = resume_hint, stop_after, on_step
        self.device = select_device(cfg.train.device, key="train.device")
        self.amp = amp_dtype(cfg.train.amp, self.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.online = PretrainNet(build_encoder(cfg), cfg.heads).to(self.device)
        self.target = cast(PretrainNet, make_teacher(self.online).train())
        self.optimizer = torch.optim.AdamW(self.online.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.iteration = 0
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._acc: list[dict[str, float]] = []
        self._pool: tuple[int, np.ndarray] | None = None
        self._stop = StopRequest()
        self._clock = CheckpointClock(cfg.train.checkpoint_minutes)
        self._start(resume)

    # -- folder, checkpoints -----------------------------------------------------------------
    @property
    def last(self) -> Path:
        """``out/checkpoints/last.pt``."""
        return self.out / "checkpoints" / "last.pt"

    def _start(self, resume: bool) -> None:
        if resume:
            if not self.last.is_file():
                raise IrcrError(f"{self.last}: no checkpoint to resume from")
            self._load(self.last)
            return
        if self.last.is_file() or (self.out / PRETRAIN_WEIGHTS).is_file():
            raise IrcrError(f"{self.out}: already holds a pretraining run; use --resume to "
                            "continue it or choose another -o folder")
        self.out.mkdir(parents=True, exist_ok=True)
        write_yaml(self.out / "config.yaml", self.cfg)

    def _state(self) -> dict[str, Any]:
        return {"kind": "ircr-pretrain", "config": to_dict(self.cfg),
                "online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "rows": json.dumps(self.rows), "acc": json.dumps(self._acc),
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "rng": capture_rng()}

    def save(self) -> Path:
        """Write ``checkpoints/last.pt`` (atomic) and ``metrics.csv``."""
        save_checkpoint(self.last, self._state())
        self._write_metrics()
        self._clock.reset()
        return self.last

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state.get("kind") != "ircr-pretrain":
            raise IrcrError(f"{path}: not an ircr pretrain checkpoint")
        stored = pretrain_config_from_dict(state["config"], str(path))
        if _comparable(to_dict(stored)) != _comparable(to_dict(self.cfg)):
            raise IrcrError(f"{path}: the config differs from the one this run started with "
                            f"(see {self.out / 'config.yaml'}); resume with the same settings")
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.rows = list(json.loads(state["rows"]))
        self._acc = list(json.loads(state["acc"]))
        self.seconds = float(state["seconds"])
        self.cpu_seconds = float(state["cpu_seconds"])
        restore_rng(state["rng"])

    # -- data --------------------------------------------------------------------------------
    def batch(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Views of iteration ``i``: (view_a, view_b) (B, 3, V, V) float 0..255 on the device,
        and their (B, 2, 3) view -> tile maps."""
        d = self.cfg.data
        k = i // d.refresh
        if self._pool is None or self._pool[0] != k:
            pool = np.asarray(self.tiles(k))
            if pool.ndim != 4 or pool.shape[0] < d.batch_size or pool.dtype != np.uint8:
                raise IrcrError(f"pretrain tiles: pool {k} has shape {pool.shape} "
                                f"{pool.dtype}; expected ({d.pool}, T, T, 3) uint8")
            self._pool = (k, pool)
        pool = self._pool[1]
        rng = np.random.default_rng([self.cfg.train.seed, i])
        idx = np.sort(rng.choice(pool.shape[0], size=d.batch_size, replace=False))
        tiles = torch.from_numpy(np.ascontiguousarray(pool[idx])).to(self.device)
        tiles = tiles.permute(0, 3, 1, 2).float()
        pa = sample_views(rng, d.batch_size, self.cfg.views)
        pb = sample_views(rng, d.batch_size, self.cfg.views)
        size = self.cfg.views.size
        va, vb = render_views(tiles, pa, size), render_views(tiles, pb, size)
        ta = torch.as_tensor(pa.theta, dtype=torch.float32, device=self.device)
        tb = torch.as_tensor(pb.theta, dtype=torch.float32, device=self.device)
        return va, vb, ta, tb

    # -- objective ---------------------------------------------------------------------------
    def loss(self, va: Tensor, vb: Tensor, ta: Tensor,
             tb: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Symmetrised BYOL + dense BYOL of two view batches; returns (total, parts)."""
        ob = self.cfg.objective
        with autocast(self.device, self.amp):
            oa, o_b = self.online(va), self.online(vb)
            with torch.no_grad():
                za, zb = self.target.project(va), self.target.project(vb)
        g = byol_loss(oa["global"], zb["global"]) + byol_loss(o_b["global"], za["global"])
        h, w = oa["dense"].shape[-2:]
        grid_ab, valid_ab = correspondence(ta, tb, h, w)
        grid_ba, valid_ba = correspondence(tb, ta, h, w)
        dense = (dense_byol_loss(oa["dense"], zb["dense"], grid_ab, valid_ab)
                 + dense_byol_loss(o_b["dense"], za["dense"], grid_ba, valid_ba))
        total = ob.global_weight * g + ob.dense_weight * dense
        return total, {"global": float(g.detach()), "dense": float(dense.detach()),
                       "overlap": float((valid_ab.float().mean() + valid_ba.float().mean()) / 2)}

    def step(self) -> float:
        """One iteration: views, loss, AdamW step, EMA update of the target."""
        i, t = self.iteration, self.cfg.train
        lr = lr_at(self.cfg, i)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.online.train()
        va, vb, ta, tb = self.batch(i)
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = self.loss(va, vb, ta, tb)
        value = float(total.detach())
        if not math.isfinite(value):
            raise IrcrError(f"{self.out}: loss became {value} at iteration {i + 1}; the last "
                            f"checkpoint is {self.last}; lower train.lr")
        total.backward()
        if t.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.online.parameters(), t.grad_clip)
        self.optimizer.step()
        tau = cosine_ramp(self.cfg.objective.ema_start, self.cfg.objective.ema_end, i,
                          t.iterations)
        ema_update(self.target, self.online, tau)
        self.iteration += 1
        self._acc.append({"loss": value, **parts, "lr": lr, "ema": tau})
        return value

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Path:
        """Train to ``train.iterations``; write the weights and card; return the folder."""
        t = self.cfg.train
        if self.iteration >= t.iterations and (self.out / PRETRAIN_WEIGHTS).is_file():
            return self.out
        _say(self.describe())
        bar = run_text.progress_bar(t.progress, t.iterations, self.iteration)
        t0, c0, it0 = time.time(), time.process_time(), self.iteration
        self._clock.reset()
        try:
            with self._stop:
                while self.iteration < t.iterations:
                    self._check_stop(t0, c0)
                    if t.max_minutes and time.time() - t0 >= t.max_minutes * 60:
                        _say(f"train.max_minutes {t.max_minutes:g} reached at iteration "
                             f"{self.iteration}/{t.iterations}; writing what it has")
                        break
                    loss = self.step()
                    self._after_step(bar, loss, t0, it0)
        finally:
            if bar is not None:
                bar.close()
        self.seconds += time.time() - t0
        self.cpu_seconds += time.process_time() - c0
        self.save()  # the finished state: --resume of a finished run does nothing
        out = self._finish()
        _say(f"done: {self.iteration} iterations in {self.seconds:.0f} s; encoder weights "
             f"{out / PRETRAIN_WEIGHTS}; use it as model.pretrained (HoVer-Net), "
             "method.model.backbone_weights (BASS) or method.model.pretrained (CDCL)")
        return out

    def _after_step(self, bar: Any, loss: float, t0: float, it0: int) -> None:
        t = self.cfg.train
        if self.iteration % t.log_every == 0 or self.iteration == t.iterations:
            rate = (self.iteration - it0) / max(time.time() - t0, 1e-9)
            self._log_row(rate)
        if self.on_step is not None:
            self.on_step(self)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if self.iteration < t.iterations and (
                (t.checkpoint_every and self.iteration % t.checkpoint_every == 0)
                or self._clock.due()):
            self.save()
        if self.stop_after is not None and self.iteration >= self.stop_after:
            raise TrainingInterrupted(f"stopped after iteration {self.iteration}")

    def _log_row(self, rate: float) -> None:
        if not self._acc:
            return
        row: dict[str, Any] = {"iteration": self.iteration}
        for key in self._acc[0]:
            row[key] = float(np.mean([a[key] for a in self._acc]))
        row["it_per_s"] = rate
        self.rows.append(row)
        self._acc = []

    def _check_stop(self, t0: float, c0: float) -> None:
        if self._stop.requested is None:
            return
        self.seconds += time.time() - t0
        self.cpu_seconds += time.process_time() - c0
        last = self.save()
        raise TrainingStopped(
            f"{self._stop.requested} at iteration {self.iteration}/{self.cfg.train.iterations}; "
            f"checkpoint saved to {last}; resume with: {self.resume_hint or '--resume'}")

    def describe(self) -> str:
        """Lines printed before training: what is trained, device, data, schedule."""
        cfg = self.cfg
        what = (f"HoVer-Net {cfg.model.encoder} encoder (width {cfg.model.width:g}, blocks "
                f"{cfg.model.blocks})" if cfg.target == "hovernet"
                else f"CDCL DenseNet encoder (growth rate {cfg.densenet.growth_rate}, blocks "
                f"{cfg.densenet.block_config})" if cfg.target == "cdcl"
                else f"BASS {cfg.backbone} backbone body")
        n = sum(p.numel() for p in self.online.encoder.parameters())
        amp = "bf16" if self.amp is not None else "off"
        start = f"resuming at iteration {self.iteration}; " if self.iteration else ""
        return "\n".join([
            f"{what}: {n / 1e6:.2f} M parameters; device {self.device}; AMP {amp}",
            f"{start}{cfg.train.iterations} iterations x {cfg.data.batch_size} tiles "
            f"({cfg.data.tile} px at {cfg.data.mpp:g} µm/px -> two {cfg.views.size} px views); "
            f"objective BYOL x {cfg.objective.global_weight:g} + dense BYOL x "
            f"{cfg.objective.dense_weight:g}",
            f"checkpoints to {self.last}; Ctrl-C saves one and stops",
        ])

    # -- outputs -----------------------------------------------------------------------------
    def _write_metrics(self) -> None:
        if not self.rows:
            return
        cols = list(self.rows[0])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    def _finish(self) -> Path:
        enc = self.online.encoder
        assert isinstance(enc, (HoVerNetEncoder, BackboneBody, DenseNetBody))
        weights = enc.weights()
        meta = {"format": PRETRAIN_FORMAT, "version": 1, "arch": enc.arch(),
                "iterations": self.iteration, "mpp": self.cfg.data.mpp}
        save_torch(self.out / PRETRAIN_WEIGHTS, {"ircr_pretrain": meta, "state_dict": weights})
        atomic_write_text(self.out / "card.json", json.dumps(self.card(len(weights)), indent=2))
        return self.out

    def card(self, n_tensors: int) -> dict[str, Any]:
        """The card: what was trained on what, how, with which versions."""
        cfg = self.cfg
        views = self.iteration * cfg.data.batch_size * 2
        return {
            "format": PRETRAIN_FORMAT, "weights": PRETRAIN_WEIGHTS, "tensors": n_tensors,
            "arch": self.online.encoder.arch(), "mpp": cfg.data.mpp,
            "steps": self.iteration, "complete": self.iteration >= cfg.train.iterations,
            "batch_size": cfg.data.batch_size,
            "tiles_seen": self.iteration * cfg.data.batch_size,
            "view_pixels_seen": views * cfg.views.size ** 2,
            "objective": {"image": "BYOL (2 - 2 cos, symmetrised, EMA target)",
                          "dense": "pixel-level BYOL at exactly corresponding locations",
                          **to_dict(cfg.objective)},
            "seconds": round(self.seconds, 1), "cpu_seconds": round(self.cpu_seconds, 1),
            "device": str(self.device),
            "amp": "bf16" if self.amp is not None else "off", "seed": cfg.train.seed,
            **self.card_extra, "config": to_dict(cfg),
        }


def _say(text: str) -> None:
    run_text.say(text, "ircr pretrain")
