"""BASS (boundary-aware contrastive semi-supervised nuclei segmentation) as a method plug-in.

``method: {name: bass, ...}`` runs the three stages of :mod:`ircr.train.bass_pipeline`
(teacher -> pseudo-labels -> student) with Mask R-CNN networks of the ``maskrcnn`` model
family, each stage trained by :mod:`ircr.train.detector_loop`; the run's ``model/`` is the
student, a ``maskrcnn`` model folder (``ircr evaluate``, ``ircr segment``). The method owns its
loop (:meth:`Method.run_own`): the HoVer-Net loop of the trainer does not run.

Options (``method:`` keys, :class:`~ircr.train.bass_pipeline.BassOptions`; defaults = the released
BASS configuration, reference §7.2):

* ``model``: the student's :class:`~ircr.models.maskrcnn.MaskRCNNConfig` (mask branches,
  LRD boundary weight, CRC form/temperatures/d/alpha/weight, backbone, ``min_size``: 800 =
  the paper's 256 -> 800 upscaling); ``teacher_branches``: the teacher's mask head (``[nmh]``:
  a plain Mask R-CNN, as the paper's teacher).
* ``teacher`` / ``student``: :class:`~ircr.train.detector_loop.DetectionSchedule` (SGD 0.02,
  momentum 0.9, weight decay 1e-4, warm-up 500 iterations from 0.001x; teacher 30 epochs of
  the labelled patches at batch 2 with lr steps after epochs 8 and 11 (the epoch-30 checkpoint
  is the one the paper's pseudo-label script uses); student 2000 iterations, constant lr).
* ``repeat_labelled`` (19): the labelled patches' repeat factor in the student's pool.
* ``tta`` (none), ``pseudo_mask_threshold`` (0.5), ``pseudo_threshold`` (None = count
  matching; a number fixes the box-score threshold), ``min_area`` (instances with fewer
  pixels are no training targets; 4, our choice: slivers of nuclei cut by the patch edge),
  ``pseudo_max_patches`` (None = every unlabelled patch, the paper; a number = a seeded
  random subset of that many, for CPU-scale runs).
* ``paint``: how the model folders turn detections into instances
  (:class:`~ircr.postproc.detections.PaintParams`: score > 0.5 as the reference evaluation,
  mask >= 0.5, no dilation by default); ``count_matched_paint`` (False): use the box-score
  threshold count matching gives for each model on patches it did not train on instead
  (teacher: the unlabelled patches; student: the validation images' patches; pixels only, no
  labels; for under-trained models whose scores sit far from 0.5).
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError
from ircr.inference.model_folder import save_model_folder
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from ircr.postproc.detections import PaintParams
from ircr.train.bass_pipeline import BassOptions, run_bass
from ircr.train.detector_loop import resolve
from ircr.train.methods import register_method
from ircr.train.methods.base import Method
from ircr.train.stage_tools import cpu_threads


@register_method("bass")
class Bass(Method):
    """Teacher -> count-matched pseudo-labels -> BASS student (three stages, one run)."""

    options_type = BassOptions

    def build_model(self) -> nn.Module:
        """The student network (its weights are trained by the stages, not the trainer)."""
        opts: BassOptions = self.options
        return build_maskrcnn(opts.model)

    @classmethod
    def saved_progress(cls, run_dir: Path) -> Path | None:
        """A started BASS run: any stage's output or checkpoint (``ircr train`` then needs
        ``--resume``, as for every method)."""
        for rel in ("model/model.yaml", "student/checkpoints/last.pt",
                    "pseudo_labels/threshold.json", "pseudo_labels/pseudo_labels.npz",
                    "teacher/model/model.yaml", "teacher/checkpoints/last.pt"):
            if (run_dir / rel).is_file():
                return run_dir / rel
        return None

    def run_own(self) -> Path:
        """Run or resume the three stages; the run's model folder is the student."""
        t = self.trainer
        opts: BassOptions = self.options
        val = set(t.split.val_images)
        held_out = [i for i, p in enumerate(t.dataset.patches) if t.dataset.names[p.image] in val]
        if t.device.type == "cpu":
            threads, why = cpu_threads()
            torch.set_num_threads(threads)
            print(f"BASS on CPU: {why}")
        hint = (f"resume with: ircr train {t.run_dir / 'config.yaml'} --out {t.run_dir} "
                "--resume")
        return run_bass(opts, t.dataset, t.split.labelled, t.split.unlabelled, t.run_dir,
                        self._save, device=t.device, seed=int(t.cfg.train.seed), log=print,
                        held_out=held_out, progress=bool(t.cfg.train.progress),
                        resume_hint=hint)

    def _save(self, folder: Path, model: nn.Module, cfg: MaskRCNNConfig,
              paint: PaintParams) -> Path:
        """Write a ``maskrcnn`` model folder (teacher or student) as the trainer writes its."""
        t = self.trainer
        mpps = [float(m["mpp"]) for m in t.dataset.images if m.get("mpp") is not None]
        ev = t.cfg.eval
        return save_model_folder(
            folder, copy.deepcopy(model).cpu().eval(), cfg, asdict(paint),
            mpp=mpps[0] if mpps else None, patch_size=t.cfg.data.patch_size,
            inference={"window": ev.window, "overlap": ev.overlap, "batch_size": ev.batch_size},
            family="maskrcnn",
            extra={"method": "bass", "train": {
                "dataset": str(t.cfg.data.dataset), "split": t.split.name,
                "stage": "teacher" if folder.parent.name == "teacher" else "student",
                "run_dir": str(t.run_dir)}})

    def eval_models(self) -> dict[str, nn.Module]:
        """No HoVer-Net validation: the stages evaluate nothing during training."""
        return {}

    def model_folders(self) -> dict[str, Path]:
        """The student (the run's ``model/``) and the teacher (``teacher/model/``), both
        ``maskrcnn`` model folders (``ircr experiment`` tests them)."""
        run = self.trainer.run_dir
        return {"student": run / "model", "teacher": run / "teacher" / "model"}

    @classmethod
    def own_iterations(cls, options: Any, n_labelled: int, n_unlabelled: int) -> int:
        """Teacher + student optimiser steps for a split of these patch counts (the student's
        pool: labelled x ``repeat_labelled`` + the pseudo-labelled patches, at most
        ``pseudo_max_patches``; a patch without any kept instance is still counted)."""
        opts: BassOptions = options
        n_pseudo = n_unlabelled if opts.pseudo_max_patches is None else min(
            n_unlabelled, opts.pseudo_max_patches)
        teacher = resolve(opts.teacher, n_labelled).iterations
        student = resolve(opts.student, n_labelled * opts.repeat_labelled + n_pseudo).iterations
        return int(teacher + student)

    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        """Never called: the stages train with their own loop (:meth:`run_own`)."""
        raise IrcrError("method bass: trains in stages (run_own), not per trainer step")
