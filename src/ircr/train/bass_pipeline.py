"""The BASS pipeline (Zhang et al., MIDL; reference-algorithms §7): three stages, one run.

1. **Teacher**: Mask R-CNN (mask branches ``teacher_branches``, default the plain NMH head)
   trained on the labelled patches (``<run>/teacher/``: checkpoints, metrics.csv, ``model/``).
2. **Pseudo-labels**: the teacher (eval mode, optional TTA) on every unlabelled patch, mask
   threshold 0.5, box-score threshold by count matching (``<run>/pseudo_labels/``:
   ``pseudo_labels.npz`` + ``threshold.json``, :mod:`ircr.ssl.pseudo_labels`).
3. **Student**: the BASS network (NMH + LRD + CRC by default) from scratch (as the released
   configs: ``load_from = None``) on the labelled patches repeated ``repeat_labelled`` times
   plus the pseudo-labelled patches (``<run>/student/``); its model folder is the run's
   ``<run>/model/`` (family ``maskrcnn``, evaluable with ``ircr evaluate``).

Every stage resumes: a stage whose output exists is skipped (teacher: ``teacher/model``;
pseudo-labels: ``threshold.json``, written last), a stage that was interrupted continues from
its own ``checkpoints/last.pt``. ``<run>/bass.json`` summarises the stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ircr.data.detection import count_instances
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.io.atomic import atomic_write_text
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from ircr.ssl.pseudo_labels import (
    THRESHOLD_FILE,
    PseudoLabels,
    generate_pseudo_labels,
    load_pseudo_labels,
)
from ircr.train.checkpoint import load_checkpoint
from ircr.train.detector_loop import DetectionSchedule, resolve, train_detector

if TYPE_CHECKING:  # pragma: no cover
    from ircr.train.methods.bass import BassOptions

__all__ = ["run_bass", "teacher_config", "detector_fn", "SaveFolder"]

SaveFolder = Callable[[Path, nn.Module, MaskRCNNConfig], Path]


def teacher_config(opts: BassOptions) -> MaskRCNNConfig:
    """The teacher's architecture: the student's with ``teacher_branches`` as mask head."""
    return replace(opts.model, mask_branches=list(opts.teacher_branches))


def detector_fn(model: nn.Module, device: torch.device) -> Callable[[np.ndarray],
                                                                       dict[str, Any]]:
    """(H, W, 3) uint8 -> numpy detections of ``model`` in eval mode (for pseudo-labels)."""

    def detect(image: np.ndarray) -> dict[str, Any]:
        x = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float()
        with torch.inference_mode():
            out = model([x.to(device)])[0]
        return {k: out[k].float().cpu().numpy() for k in ("boxes", "scores", "masks")}

    return detect


class _Reader:
    """Item id -> (image (P, P, 3) uint8, instance map (P, P) int32) of one stage's pool.

    Items ``0 .. L-1`` are the labelled patches (ground truth), ``L + k`` the k-th
    pseudo-labelled patch.
    """

    def __init__(self, ds: PreparedDataset, labelled: Sequence[int],
                 pseudo: PseudoLabels | None = None) -> None:
        self.ds, self.labelled, self.pseudo = ds, [int(i) for i in labelled], pseudo

    def __call__(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.labelled)
        if item < n:
            patch = self.ds.patches[self.labelled[item]]
            image, inst = self.ds.read_patch(patch)
            if inst is None:
                raise IrcrError(f"{self.ds.path}: labelled patch {tuple(patch)} of image "
                                f"'{self.ds.names[patch.image]}' has no labels")
            return image, inst.astype(np.int32)
        assert self.pseudo is not None
        k = item - n
        image, _ = self.ds.read_patch(self.pseudo.patches[k])
        return image, self.pseudo.labels[k]


def _stage(name: str, cfg: MaskRCNNConfig, pool: Sequence[int], read: _Reader,
           schedule: DetectionSchedule, stage_dir: Path, model_dir: Path, save: SaveFolder,
           *, device: torch.device, seed: int, min_area: int,
           stop_after: int | None, log: Callable[[str], None]) -> nn.Module:
    """Train one detector stage (or load it when its model folder exists)."""
    model = build_maskrcnn(cfg)
    ckpt = stage_dir / "checkpoints" / "last.pt"
    if (model_dir / "model.yaml").is_file() and ckpt.is_file():
        model.load_state_dict(load_checkpoint(ckpt, map_location="cpu")["model"])
        log(f"BASS {name}: done ({model_dir})")
        return model.to(device).eval()
    its = resolve(schedule, len(pool)).iterations
    log(f"BASS {name}: training ({its} iterations) in {stage_dir}")
    train_detector(model, pool, read, schedule, stage_dir, device=device, seed=seed,
                   min_area=min_area, stop_after=stop_after, log=log,
                   extra_state={"stage": name, "pool": len(pool)})
    model.eval()
    save(model_dir, model, cfg)
    return model


def _pseudo(opts: BassOptions, ds: PreparedDataset, labelled: Sequence[int],
            unlabelled: Sequence[int], teacher: nn.Module, out: Path, device: torch.device,
            log: Callable[[str], None]) -> PseudoLabels:
    patches = [ds.patches[int(i)] for i in unlabelled]
    if (out / THRESHOLD_FILE).is_file():
        pl = load_pseudo_labels(out)
        if pl.patches != patches:
            raise IrcrError(f"{out}: pseudo-labels are for other patches than this split's "
                            "unlabelled ones (start a new run folder)")
        log(f"BASS pseudo-labels: done (threshold {pl.threshold:.2f}, {out})")
        return pl
    out.mkdir(parents=True, exist_ok=True)
    reader = _Reader(ds, labelled)
    counts = [count_instances(reader(i)[1], opts.min_area) for i in range(len(labelled))]
    log(f"BASS pseudo-labels: teacher on {len(patches)} unlabelled patches "
        f"({opts.tta.n_views} view(s) each)")
    pl = generate_pseudo_labels(
        detector_fn(teacher, device), patches, lambda p: ds.read_patch(p)[0], counts, out,
        tta=opts.tta, mask_threshold=opts.pseudo_mask_threshold, min_area=opts.min_area,
        fixed_threshold=opts.pseudo_threshold,
        progress=lambda done, n: log(f"BASS pseudo-labels: {done}/{n} patches")
        if done % 200 == 0 else None)
    log(f"BASS pseudo-labels: threshold {pl.threshold:.2f} (n_L {pl.info['n_labelled_mean']:.1f}"
        f", kept {pl.info['instances_per_patch_mean']:.1f} per patch)")
    return pl


def _subset(ids: Sequence[int], n: int | None, seed: int) -> list[int]:
    """``n`` of ``ids`` drawn with the run's seed (in their order), or all of them."""
    if n is None or n >= len(ids):
        return [int(i) for i in ids]
    keep = np.random.default_rng([int(seed), 0x706C]).choice(len(ids), size=n, replace=False)
    return [int(ids[k]) for k in sorted(keep)]


def run_bass(
    opts: BassOptions, ds: PreparedDataset, labelled: Sequence[int], unlabelled: Sequence[int],
    run_dir: str | Path, save: SaveFolder, *, device: torch.device, seed: int = 0,
    stop_after: dict[str, int] | None = None, log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) the three stages; returns the final model folder ``<run>/model``.

    Args:
        opts: the method's options (:class:`ircr.train.methods.bass.BassOptions`).
        ds, labelled, unlabelled: the prepared dataset and the split's patch ids.
        save: writes a model folder ``save(folder, model, cfg)`` (the trainer's, family
            ``maskrcnn``).
        stop_after: ``{"teacher"|"student": iteration}`` to interrupt a stage (tests).
    """
    say = log or (lambda _m: None)
    if not labelled:
        raise IrcrError("method bass: the split has no labelled patch")
    if not unlabelled:
        raise IrcrError("method bass: the split has no unlabelled patch (ratio 1?)")
    run = Path(run_dir)
    stops = stop_after or {}
    unlabelled = _subset(unlabelled, opts.pseudo_max_patches, seed)
    common = {"device": device, "seed": seed, "min_area": opts.min_area, "log": say}
    teacher = _stage("teacher", teacher_config(opts), list(range(len(labelled))),
                     _Reader(ds, labelled), opts.teacher, run / "teacher",
                     run / "teacher" / "model", save, stop_after=stops.get("teacher"),
                     **common)
    pl = _pseudo(opts, ds, labelled, unlabelled, teacher, run / "pseudo_labels", device, say)
    del teacher
    n = len(labelled)
    pool = list(range(n)) * int(opts.repeat_labelled) + [n + k for k in range(len(pl.patches))]
    final = run / "model"
    _stage("student", opts.model, pool, _Reader(ds, labelled, pl), opts.student,
           run / "student", final, save, stop_after=stops.get("student"), **common)
    summary = {
        "stages": {"teacher": str(run / "teacher" / "model"),
                   "pseudo_labels": str(run / "pseudo_labels"), "student": str(final)},
        "threshold": pl.threshold, "n_labelled_mean": pl.info.get("n_labelled_mean"),
        "pseudo_instances": pl.info.get("instances_kept"),
        "labelled_patches": n, "pseudo_patches": len(pl.patches),
        "repeat_labelled": int(opts.repeat_labelled), "student_pool": len(pool),
        "teacher_schedule": asdict(opts.teacher), "student_schedule": asdict(opts.student),
    }
    atomic_write_text(run / "bass.json", json.dumps(summary, indent=1) + "\n")
    return final
