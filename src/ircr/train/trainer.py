"""The one trainer: loop, AMP, lr schedule, NaN checks, checkpoints, exact resume, logging.

The trainer owns the student model, the Adam optimiser, the step lr schedule, bf16 autocast,
the data loaders, validation, ``metrics.csv``/TensorBoard and checkpoints; the method plug-in
(:mod:`ircr.train.methods`) computes the loss of each iteration.

Run folder::

    config.yaml          the resolved experiment config
    split.yaml           copy of the split file used (labelled/unlabelled patches, val images)
    metrics.csv          one row per epoch (loss parts, val metrics per eval model, lr, it/s)
    tensorboard/         events, when tensorboard is installed
    checkpoints/last.pt  atomic; epoch_NNNN.pt copies every ``train.keep_every`` epochs
    model/               final model folder (ircr.inference.model_folder), used by evaluate/segment

Exact resume: the data of iteration ``i`` depends only on (seed, i) (see
:mod:`ircr.train.loaders`), and checkpoints hold the model, optimiser, method state, RNG
states, the iteration and the epoch's running loss sums, so an interrupted and resumed run
equals an uninterrupted one (bit-exact in deterministic CPU mode, with any number of workers).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ircr.config import set_dotted, to_dict, write_yaml
from ircr.errors import IrcrError
from ircr.inference.device import amp_dtype, autocast, select_device
from ircr.inference.evaluate import evaluate_models, predict_whole
from ircr.inference.family import ModelFamily, get_family
from ircr.io.atomic import atomic_write, clean_stale_temps
from ircr.io.lock import FolderLock
from ircr.io.paths import ensure_dir
from ircr.io.torchfile import first_nonfinite
from ircr.losses import hovernet_loss
from ircr.train import distributed, loaders, run_text
from ircr.train.checkpoint import (
    NonFiniteState,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from ircr.train.config import ExperimentConfig, experiment_from_dict
from ircr.train.init_weights import load_init_weights
from ircr.train.logging import MetricsLogger, NullLogger
from ircr.train.lr_schedule import finished_schedule, lr_at_epoch, poly_lr
from ircr.train.memory_format import apply_channels_last
from ircr.train.methods import Method, get_method
from ircr.train.model_output import write_model_folder
from ircr.train.seeding import seed_everything
from ircr.train.stop import CheckpointClock, StopRequest, TrainingStopped


class TrainingInterrupted(Exception):
    """Raised by the ``stop_after`` hook (tests of resume) after the given iteration."""


class Trainer:
    """Train one experiment into ``run_dir``.

    Args:
        cfg: validated experiment config.
        run_dir: output folder (created).
        resume: True = continue from ``checkpoints/last.pt`` (error if absent); False = fresh
            run (error if the folder already holds a checkpoint); "auto" = resume if present.
        stop_after: raise :class:`TrainingInterrupted` right after this global iteration
            (and its checkpoint, if one is due) — used by resume tests.
        config_source: path of the config file (recorded in messages only).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool | str = False,
                 stop_after: int | None = None, config_source: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.stop_after = stop_after
        self.where = config_source or str(self.run_dir / "config.yaml")
        self.dist = distributed.context_from_env()  # torchrun: several ranks (distributed.py)
        if self.dist.active:
            _check_distributable(cfg, self.where)
        self.device = distributed.initialise(
            self.dist, select_device(cfg.train.device, key="train.device"))
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.iteration = 0
        self.epoch = 0
        self._lr = cfg.train.lr  # the last step's lr under train.lr_schedule "poly"
        self.total = 0  # iterations of the run: set in run() before the first step
        self._acc: dict[str, float] = {}
        self._acc_n = 0
        self._wall_offset = 0.0
        self._t0 = time.time()
        self.last_row: dict[str, Any] = {}
        self._saved_iteration: int | None = None  # iteration of the checkpoint on disk
        self._finished_schedule: dict[str, Any] | None = None  # set when resuming a done run
        self.already_finished = False
        # called after every optimiser step (progress lines, rate measurement); spawn() passes it on
        self.on_step: Callable[[Trainer], None] | None = None
        self.best: dict[str, tuple[float, int]] = {}  # val metric -> (best value, epoch)
        self._stop = StopRequest()
        self._clock = CheckpointClock(cfg.train.checkpoint_minutes)
        # one writer (rank 0 under torchrun); released by run()
        self._lock = FolderLock(self.run_dir, "run folder", enabled=self.dist.main)
        try:
            self._setup()
        except BaseException:
            self._lock.release()
            raise

    # -- construction ------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        last = self.run_dir / "checkpoints" / "last.pt"
        method_cls = get_method(cfg.method.name, self.where)
        if self.run_dir.is_dir():  # before looking at it: a second writer is refused first
            self._lock.acquire()
        started = method_cls.saved_progress(self.run_dir)  # the same rule for every method
        if self.resume is True and started is None:
            raise IrcrError(f"{self.run_dir}: no checkpoint to resume from (start it without "
                            "--resume)")
        if self.resume is False and started is not None:
            raise IrcrError(f"{self.run_dir}: run folder already holds a checkpoint; "
                            "use --resume or another --out")
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.dataset = loaders.open_prepared(cfg.data.dataset, self.where)
        self.split = loaders.resolve_split(self.dataset, cfg.data.split, self.where)
        self.wbis_params = cfg.postproc
        self.method: Method = method_cls(cfg.method.options, self)
        self.model: nn.Module = self.method.build_model().to(self.device)
        if cfg.train.channels_last:
            apply_channels_last(self.model)
        if cfg.train.init_weights is not None and not (self.resume and last.is_file()):
            load_init_weights(self.model, cfg.train.init_weights)  # before the EMA teacher
        if self.dist.active:
            if cfg.train.sync_bn:
                self.model = distributed.sync_batchnorm(self.model, self.device)
            distributed.broadcast_module(self.dist, self.model)  # one start on every rank
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr,
                                          betas=(0.9, 0.999), weight_decay=cfg.train.weight_decay)
        self.method.setup()
        ensure_dir(self.run_dir, "run folder")
        self._lock.acquire()
        self.logger: MetricsLogger | NullLogger = NullLogger()
        if self.dist.main:  # rank 0 alone writes into the run folder
            for sub in ("checkpoints", "model"):  # leftovers of a killed atomic write
                clean_stale_temps(self.run_dir / sub)
            self._write_run_description()
            self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.train.tensorboard)
        distributed.barrier(self.dist)
        if last.is_file() and self.resume:
            self._load(last)

    def _write_run_description(self) -> None:
        cfg_path = self.run_dir / "config.yaml"
        if self.resume and cfg_path.is_file():
            from ircr.config import read_yaml

            old = experiment_from_dict(read_yaml(cfg_path), where=str(cfg_path), stored=True)
            for section in ("model", "method", "loss"):
                if to_dict(getattr(old, section)) != to_dict(getattr(self.cfg, section)):
                    raise IrcrError(f"{cfg_path}: config section '{section}' differs from the "
                                    "run being resumed; resume with the same config")
        write_yaml(cfg_path, self.cfg)
        loaders.write_split_copy(self.split, self.run_dir)

    # -- helpers for methods -----------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast on the trainer's device when AMP is on, else a no-op context."""
        return autocast(self.device, self.amp)

    def supervised_loss(self, outputs: dict[str, Tensor],
                        labelled: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """HoVer-Net L_sup (NP CE + Dice, HV MSE + MSGE) on valid pixels, in float32.

        An empty labelled batch (``data.batch_size: 0``) gives 0 (still part of the graph).
        """
        if labelled["image"].shape[0] == 0:
            return outputs["np"].float().sum() * 0.0, {}
        out = {k: v.float() for k, v in outputs.items()}
        with torch.autocast(device_type=self.device.type, enabled=False):
            loss, parts = hovernet_loss(out, labelled["np"], labelled["hv"], self.cfg.loss,
                                        valid_mask=labelled["valid"])
        parts.pop("total", None)
        return loss, parts

    def spawn(self, method: str, run_dir: str | Path,
              overrides: dict[str, Any] | None = None) -> Trainer:
        """A sub-training with this config but another method (resumes if interrupted).

        The sub-run's ``method:`` is ``method`` with its default options and this run's
        shared method keys; ``overrides`` (dotted keys, e.g. ``{"method.rounds": 2}``) apply
        last, so a method sets the options and any other config key of its sub-runs.
        """
        data = to_dict(self.cfg)
        data["method"] = {**self.cfg.method.shared_dict(), "name": method}
        where = f"{self.where} ({method} sub-training)"
        for key, val in (overrides or {}).items():
            set_dotted(data, key, val, where)
        sub_cfg = experiment_from_dict(data, where=where)
        sub = Trainer(sub_cfg, run_dir, resume="auto", config_source=self.where)
        sub.on_step = self.on_step
        return sub

    def predict_image(self, model: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Sliding-window prediction of one whole dataset image: prob (H, W), hv (2, H, W)."""
        return predict_whole(model, self.dataset, name, self.cfg.eval, self.device,
                             amp=self.amp)

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "rng": capture_rng(),
            "acc": dict(self._acc),
            "acc_n": self._acc_n,
            "wall": float(self._wall()),
            "config": to_dict(self.cfg),
            "last_row": {k: float(v) for k, v in self.last_row.items()
                         if isinstance(v, (int, float))},
            "finished": self._finished_schedule is not None,
        }

    def save(self, keep_name: str | None = None) -> Path:
        """Write ``checkpoints/last.pt`` atomically (and a kept copy when named)."""
        last = self.run_dir / "checkpoints" / "last.pt"
        state = self._rank_state()  # collective under torchrun: every rank calls save()
        if self.dist.main:
            try:
                save_checkpoint(last, {**self._state(), **state})
            except NonFiniteState as exc:
                raise IrcrError(self._stop_message(f"tensor '{exc.key}' holds NaN or inf",
                                                   self.iteration)) from None
            if keep_name:
                atomic_write(last.with_name(keep_name), lambda tmp: shutil.copyfile(last, tmp))
        self._saved_iteration = self.iteration
        self._clock.reset()
        return last

    def _rank_state(self) -> dict[str, Any]:
        """Under torchrun: the ranks' mean loss sums and every rank's RNG state (else {})."""
        if not self.dist.active:
            return {}
        self._acc = distributed.mean_sums(self.dist, self._acc)
        return {"world": self.dist.world,
                "rank_rng": distributed.gather_objects(self.dist, capture_rng())}

    def _stop_message(self, problem: str, iteration: int) -> str:
        """One line: what went wrong where, and the last good checkpoint (if one exists)."""
        last = self.run_dir / "checkpoints" / "last.pt"
        if self._saved_iteration is not None and last.is_file():
            kept = (f"last good checkpoint: {last} (iteration {self._saved_iteration}); "
                    "resume with --resume after lowering train.lr")
        else:
            kept = "no checkpoint was written (lower train.lr and start again)"
        return (f"{self.run_dir}: {problem} at iteration {iteration} (epoch "
                f"{self.epoch}); training stopped, {kept}")

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        world = int(state.get("world", 1))
        if world != self.dist.world:
            raise IrcrError(f"{path}: written by {world} process(es) but this run has "
                            f"{self.dist.world}; resume with the same torchrun "
                            "--nproc-per-node (the global batch depends on it)")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise IrcrError(f"{path}: checkpoint does not match this config "
                            f"({type(exc).__name__})") from exc
        self.iteration = int(state["iteration"])
        self.epoch = int(state["epoch"])
        self._acc = {k: float(v) for k, v in state["acc"].items()}
        self._acc_n = int(state["acc_n"])
        self._wall_offset = float(state["wall"])
        self.last_row = dict(state.get("last_row") or {})
        self._saved_iteration = self.iteration
        if state.get("finished"):
            self._finished_schedule = finished_schedule(state.get("config") or {})
        ranks = state.get("rank_rng") or [state["rng"]]
        restore_rng(ranks[self.dist.rank])

    def _wall(self) -> float:
        return self._wall_offset + (time.time() - self._t0)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Path:
        """Train to the end of the schedule; returns the final model folder.

        Resuming a finished run (same schedule, complete model folder) changes nothing and
        sets :attr:`already_finished`. The run folder's lock is given back at the end.
        """
        try:
            return self._run()
        finally:
            self._lock.release()

    def _run(self) -> Path:
        out = self.run_dir / "model"
        if (self._finished_schedule == finished_schedule(to_dict(self.cfg))
                and (out / "model.yaml").is_file()):
            self.already_finished = True
            self.logger.close()
            return out
        self._finished_schedule = None  # e.g. more epochs asked for: not finished any more
        self._t0 = time.time()
        self.method.before_training()
        own = self.method.run_own()  # a method with its own loop (methods/base.py)
        if own is not None:
            self.logger.close()
            return own
        extra = self.method.extra_labelled()
        self.data = loaders.IterationData(self.dataset, self.split, self.cfg, extra,
                                          self.method.uses_unlabelled, self.where,
                                          instances=self.method.uses_instances,
                                          rank=self.dist.rank, world=self.dist.world)
        self.ipe = self.cfg.train.iterations_per_epoch or self.data.default_iterations()
        self.total = self.cfg.train.epochs * self.ipe
        if self.cfg.train.max_iterations is not None:
            self.total = min(self.total, self.cfg.train.max_iterations)
        if self.iteration < self.total:  # drop rows of epochs that will be re-run
            self.logger.truncate(self.iteration // self.ipe)
        if self.dist.main:
            run_text.say(self.describe_run())
        bar = run_text.progress_bar(self.cfg.train.progress and self.dist.main, self.total,
                                    self.iteration)
        batches = self.data.loader(self.iteration, self.total, self.device)
        self._clock.reset()
        try:
            with self._stop:
                while self.iteration < self.total:
                    self.epoch = self.iteration // self.ipe
                    self._run_epoch(batches, bar)
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        out = self._finish()
        if self.dist.main:
            run_text.say(self.closing_summary(out))
        return out

    def describe_run(self) -> str:
        """Lines printed before training (:func:`ircr.train.run_text.describe_run`)."""
        return run_text.describe_run(self)

    def closing_summary(self, model_dir: Path) -> str:
        """Lines printed after training (:func:`ircr.train.run_text.closing_summary`)."""
        return run_text.closing_summary(self, model_dir)

    def _check_stop(self) -> None:
        """On a caught SIGINT/SIGTERM: checkpoint now (an iteration boundary) and stop."""
        requested = self._stop.requested
        if self.dist.active:  # a signal on one rank stops every rank at the same iteration
            if not distributed.any_flags(self.dist, [requested is not None], self.device)[0]:
                return
        elif requested is None:
            return
        last = self.save()
        resolved = self.run_dir / "config.yaml"  # the config with every --set applied
        raise TrainingStopped(
            f"{requested or 'a stop on another rank'} at iteration {self.iteration}/"
            f"{self.total}; checkpoint "
            f"saved to {last}; resume with: ircr train {resolved} --out {self.run_dir} "
            "--resume" + (f" --nproc {self.dist.world} (or the same torchrun command)"
                          if self.dist.active else ""))

    def _next_batch(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        try:
            return next(batches)
        except Exception:
            self._check_stop()  # loader workers killed by the same signal: stop cleanly
            raise

    def _run_epoch(self, batches: Iterator[dict[str, Any]], bar: Any) -> None:
        cfg = self.cfg.train
        epoch = self.epoch
        lr = lr_at_epoch(cfg.lr, cfg.lr_steps, cfg.lr_gamma, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model: Any = self.model
        if hasattr(model, "freeze_encoder"):
            model.freeze_encoder = epoch < self.cfg.model.freeze_encoder_epochs
        self.model.train()
        end = min((epoch + 1) * self.ipe, self.total)
        t0, it0 = time.time(), self.iteration
        while self.iteration < end:
            self._check_stop()
            self._step(self._next_batch(batches), bar)
            if self.iteration < end and ((cfg.checkpoint_every and
                                          self.iteration % cfg.checkpoint_every == 0)
                                         or self._clock_due()):
                self.save()
            if self.stop_after is not None and self.iteration >= self.stop_after:
                raise TrainingInterrupted(f"stopped after iteration {self.iteration}")
        secs = max(time.time() - t0, 1e-9)
        if cfg.lr_schedule == "poly":
            lr = self._lr  # the last iteration's
        self._end_epoch(epoch, lr, (self.iteration - it0) / secs)

    def _clock_due(self) -> bool:
        """A time-based checkpoint is due (on any rank: all checkpoint together)."""
        due = self._clock.due()
        return distributed.any_flags(self.dist, [due], self.device)[0] if self.dist.active \
            else due

    def _step(self, batch: dict[str, Any], bar: Any) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        t = self.cfg.train
        if t.lr_schedule == "poly":
            self._lr = poly_lr(t.lr, self.iteration, self.total, t.lr_warmup, t.lr_power)
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr
        with self.autocast():
            loss, parts = self.method.train_step(batch["labelled"], batch.get("unlabelled"))
        value = distributed.mean_scalar(self.dist, float(loss.detach()), self.device)
        if not math.isfinite(value):
            raise IrcrError(self._stop_message(f"loss became {value}", self.iteration + 1))
        loss.backward()
        distributed.average_gradients(self.dist, self.model)
        if self.cfg.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        distributed.average_buffers(self.dist, self.model)  # before the EMA update
        self.method.after_optimizer_step()
        self.iteration += 1
        self._acc["loss"] = self._acc.get("loss", 0.0) + value
        for k, v in parts.items():
            self._acc[k] = self._acc.get(k, 0.0) + float(v)
        self._acc_n += 1
        if self.on_step is not None:
            self.on_step(self)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=self.epoch, loss=f"{value:.4f}", refresh=False)

    def _end_epoch(self, epoch: int, lr: float, its: float) -> None:
        bad = first_nonfinite(self.model)  # before validation runs on broken weights
        if bad is not None:
            raise IrcrError(self._stop_message(f"tensor 'model.{bad}' holds NaN or inf",
                                               self.iteration))
        self._acc = distributed.mean_sums(self.dist, self._acc)  # the ranks' mean
        n = max(self._acc_n, 1)
        row: dict[str, Any] = {f"train_{k}": v / n for k, v in self._acc.items()}
        row.update({k: float(v) for k, v in self.method.epoch_end().items()})
        row.update({"lr": lr, "iterations": self.iteration, "iter_per_s": its})
        last_epoch = self.iteration >= self.total
        every = self.cfg.train.val_every
        if self.dist.main and self.split.val_images and ((every and (epoch + 1) % every == 0)
                                                         or last_epoch):
            if last_epoch:
                n = len(self.split.val_images)
                run_text.say(f"validating on {n} whole image{'s' if n > 1 else ''}")
            row.update(self.validate(progress=last_epoch and self.cfg.train.progress))
            for k, v in row.items():
                if k.startswith("val_") and isinstance(v, float) and math.isfinite(v) and \
                        (k not in self.best or v > self.best[k][0]):
                    self.best[k] = (v, epoch)
        row["wall_s"] = self._wall()
        self.logger.log(epoch, row)
        self.last_row = row
        self._acc, self._acc_n = {}, 0
        keep = self.cfg.train.keep_every
        self.save(f"epoch_{epoch:04d}.pt" if keep and (epoch + 1) % keep == 0 else None)

    def validate(self, progress: bool = False) -> dict[str, float]:
        """Whole-image val metrics of every eval model: ``val_<model>_<metric>`` floats."""
        models = self.method.eval_models()
        was = {name: m.training for name, m in models.items()}
        family, postproc = self.eval_family()
        try:
            res = evaluate_models(models, self.dataset, self.split.val_images, self.cfg.eval,
                                  postproc, self.device, amp=self.amp, progress=progress,
                                  family=family)
        finally:
            for name, m in models.items():
                m.train(was[name])
        return {f"val_{name}_{k}": v for name, metrics in res.items() for k, v in metrics.items()}

    def eval_family(self) -> tuple[ModelFamily | None, Any]:
        """(family, post-processing) of :meth:`Method.eval_models`: the method's own
        (:meth:`Method.model_family`) or (None = HoVer-Net, ``cfg.postproc``)."""
        own = self.method.model_family()
        return (get_family(own.family), own.postproc) if own else (None, self.cfg.postproc)

    def _finish(self) -> Path:
        self._finished_schedule = finished_schedule(to_dict(self.cfg))
        self.save()
        out = self.run_dir / "model"
        distributed.on_main(self.dist, lambda: write_model_folder(self))  # the others wait
        return out

def _check_distributable(cfg: ExperimentConfig, where: str) -> None:
    """One-line errors for what torchrun cannot train (methods with their own loop)."""
    method_cls = get_method(cfg.method.name, where)
    if method_cls.run_own is not Method.run_own:
        raise IrcrError(f"{where}: method '{cfg.method.name}' is not supported under torchrun "
                        "(train it in one process)")
    if getattr(cfg.method.options, "mask_source", None) == "previous":
        raise IrcrError(f"{where}: method.mask_source 'previous' is not supported under "
                        "torchrun (its mask cache is per process); use 'current'")
