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

Every stage resumes: a stage whose output exists is skipped (teacher: its checkpoint at the
last iteration; pseudo-labels: ``threshold.json``, written last; student: ``model/``), a stage
that was interrupted continues from its own ``checkpoints/last.pt``. ``<run>/bass.json``
summarises the stages.

Painting of the model folders: ``opts.paint`` (score > 0.5 as the reference evaluation) or,
with ``count_matched_paint``, the box-score threshold chosen by count matching on the model's
own detections of patches it never trained on (teacher: t* of stage 2 on the unlabelled
patches; student: the same rule on the validation images' patches; on its own pseudo-labelled
patches the student's scores are inflated). Only pixels of those images are used, no
validation or test label. An under-trained model's scores sit far from 0.5, where a fixed
threshold loses many nuclei or keeps many false ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ircr.config import from_dict, read_yaml, to_dict
from ircr.data.detection import count_instances
from ircr.data.splits import Patch
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.io.atomic import atomic_write_text
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from ircr.models.maskrcnn.config import MASK_BRANCHES
from ircr.postproc.detections import PaintParams
from ircr.ssl.count_threshold import count_match_threshold
from ircr.ssl.pseudo_labels import (
    THRESHOLD_FILE,
    PseudoLabels,
    generate_pseudo_labels,
    load_pseudo_labels,
)
from ircr.ssl.tta import TTAConfig, detect_tta
from ircr.train.checkpoint import load_checkpoint
from ircr.train.detector_loop import DetectionSchedule, resolve, train_detector

__all__ = ["BassOptions", "run_bass", "teacher_config", "detector_fn", "SaveFolder"]

SaveFolder = Callable[[Path, nn.Module, MaskRCNNConfig, PaintParams], Path]


def _teacher_schedule() -> DetectionSchedule:
    return DetectionSchedule(epochs=30, lr_step_epochs=[8, 11])


@dataclass
class BassOptions:
    """Options of the ``bass`` method (see the module docstring)."""

    model: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)
    teacher_branches: list[str] = field(default_factory=lambda: ["nmh"])
    teacher: DetectionSchedule = field(default_factory=_teacher_schedule)
    student: DetectionSchedule = field(default_factory=DetectionSchedule)
    repeat_labelled: int = 19
    tta: TTAConfig = field(default_factory=TTAConfig)
    pseudo_mask_threshold: float = 0.5
    pseudo_threshold: float | None = None
    min_area: int = 4
    pseudo_max_patches: int | None = None
    paint: PaintParams = field(default_factory=PaintParams)
    count_matched_paint: bool = False

    def validate(self, where: str = "method") -> None:
        """One-line IrcrError naming ``<where>.<key>`` for an unusable value."""
        self.model.validate(where)
        bad = [b for b in self.teacher_branches if b not in MASK_BRANCHES]
        if bad or not self.teacher_branches:
            raise IrcrError(f"{where}: method.teacher_branches must be a non-empty subset of "
                            f"{list(MASK_BRANCHES)}, got {self.teacher_branches}")
        self.teacher.check(f"{where}: method.teacher")
        self.student.check(f"{where}: method.student")
        if self.repeat_labelled < 1:
            raise IrcrError(f"{where}: method.repeat_labelled must be >= 1, got "
                            f"{self.repeat_labelled}")
        self.tta.check(f"{where}: method.tta")
        if not 0 < self.pseudo_mask_threshold <= 1:
            raise IrcrError(f"{where}: method.pseudo_mask_threshold must be in (0, 1], got "
                            f"{self.pseudo_mask_threshold}")
        if self.pseudo_threshold is not None and not 0 <= self.pseudo_threshold < 1:
            raise IrcrError(f"{where}: method.pseudo_threshold must be in [0, 1) or null, got "
                            f"{self.pseudo_threshold}")
        if self.pseudo_max_patches is not None and self.pseudo_max_patches < 1:
            raise IrcrError(f"{where}: method.pseudo_max_patches must be >= 1 or null, got "
                            f"{self.pseudo_max_patches}")
        if self.min_area < 1:
            raise IrcrError(f"{where}: method.min_area must be >= 1, got {self.min_area}")
        self.paint.check(f"{where}: method.paint")


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


def _digest(obj: Any) -> str:
    """Short fingerprint of a stage's settings (dataclasses, lists, numbers)."""
    text = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _another_config(path: Path) -> IrcrError:
    return IrcrError(f"{path}: made with other settings than this run's (config, split or "
                     "seed changed); start a new run folder (--out)")


def _train_stage(name: str, cfg: MaskRCNNConfig, pool: Sequence[int], read: _Reader,
                 schedule: DetectionSchedule, stage_dir: Path, *, key: str,
                 device: torch.device, seed: int, min_area: int, stop_after: int | None,
                 log: Callable[[str], None]) -> nn.Module:
    """Train one detector stage, resuming its checkpoint (or load it when it is complete).
    ``key`` fingerprints the stage's settings; a checkpoint with another key is refused."""
    model = build_maskrcnn(cfg)
    ckpt = stage_dir / "checkpoints" / "last.pt"
    its = resolve(schedule, len(pool)).iterations
    if ckpt.is_file():
        state = load_checkpoint(ckpt, map_location="cpu")
        if state.get("config") != key:
            raise _another_config(ckpt)
        if int(state["iteration"]) >= its:
            model.load_state_dict(state["model"])
            log(f"BASS {name}: trained ({stage_dir})")
            return model.to(device).eval()
    log(f"BASS {name}: training ({its} iterations) in {stage_dir}")
    report = getattr(model.backbone, "pretrained_report", None)
    if report is not None:
        log(f"BASS {name}: backbone weights {report.summary()}")
    train_detector(model, pool, read, schedule, stage_dir, device=device, seed=seed,
                   min_area=min_area, stop_after=stop_after, log=log,
                   extra_state={"stage": name, "pool": len(pool), "config": key})
    return model.eval()


def _paint(opts: BassOptions, threshold: float | None) -> PaintParams:
    """The model folder's painting: ``opts.paint``, with the count-matched box-score
    threshold when ``opts.count_matched_paint`` (``threshold``)."""
    if opts.count_matched_paint and threshold is not None:
        return replace(opts.paint, score_threshold=float(threshold))
    return opts.paint


def _student_threshold(opts: BassOptions, ds: PreparedDataset, student: nn.Module,
                       patches: Sequence[Patch], counts: Sequence[int], device: torch.device,
                       log: Callable[[str], None]) -> float | None:
    """Count matching on the student's detections of ``patches`` (images only)."""
    if not opts.count_matched_paint:
        return None
    detect = detector_fn(student, device)
    scores = [detect_tta(detect, ds.read_patch(p)[0], opts.tta)["scores"] for p in patches]
    t = count_match_threshold(counts, scores).threshold
    log(f"BASS student: count-matched box-score threshold {t:.2f} for painting "
        f"({len(patches)} patches)")
    return t


def _labelled_counts(ds: PreparedDataset, labelled: Sequence[int], min_area: int) -> list[int]:
    """n_L data: instances (>= ``min_area`` px) of each labelled patch."""
    reader = _Reader(ds, labelled)
    return [count_instances(reader(i)[1], min_area) for i in range(len(labelled))]


def _pseudo(opts: BassOptions, ds: PreparedDataset, counts: Sequence[int],
            unlabelled: Sequence[int], teacher: nn.Module, out: Path, device: torch.device,
            log: Callable[[str], None], key: str) -> PseudoLabels:
    patches = [ds.patches[int(i)] for i in unlabelled]
    if (out / THRESHOLD_FILE).is_file():
        pl = load_pseudo_labels(out)
        if pl.patches != patches or pl.info.get("config") != key:
            raise _another_config(out / THRESHOLD_FILE)
        log(f"BASS pseudo-labels: done (threshold {pl.threshold:.2f}, {out})")
        return pl
    out.mkdir(parents=True, exist_ok=True)
    log(f"BASS pseudo-labels: teacher on {len(patches)} unlabelled patches "
        f"({opts.tta.n_views} view(s) each)")
    pl = generate_pseudo_labels(
        detector_fn(teacher, device), patches, lambda p: ds.read_patch(p)[0], counts, out,
        tta=opts.tta, mask_threshold=opts.pseudo_mask_threshold, min_area=opts.min_area,
        fixed_threshold=opts.pseudo_threshold, extra_info={"config": key},
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
    held_out: Sequence[int] = (),
) -> Path:
    """Run (or resume) the three stages; returns the final model folder ``<run>/model``.

    Args:
        opts: the options (:class:`BassOptions`, the ``bass`` method's ``method:`` keys).
        ds, labelled, unlabelled: the prepared dataset and the split's patch ids.
        save: writes a model folder ``save(folder, model, cfg, paint)`` (the trainer's,
            family ``maskrcnn``).
        stop_after: ``{"teacher"|"student": iteration}`` to interrupt a stage (tests).
        held_out: patch ids the student never trained on (the validation images' patches)
            for its count-matched paint threshold (``count_matched_paint``; only pixels are
            used); empty = the pseudo-labelled patches (biased: the student fits them).
    """
    say = log or (lambda _m: None)
    if not labelled:
        raise IrcrError("method bass: the split has no labelled patch")
    if not unlabelled:
        raise IrcrError("method bass: the split has no unlabelled patch (ratio 1?)")
    run = Path(run_dir)
    stops = stop_after or {}
    unlabelled = _subset(unlabelled, opts.pseudo_max_patches, seed)
    tcfg = teacher_config(opts)
    t_key = _digest({"model": tcfg, "schedule": opts.teacher, "min_area": opts.min_area,
                     "seed": seed, "labelled": list(labelled)})
    p_key = _digest({"teacher": t_key, "tta": opts.tta, "mask": opts.pseudo_mask_threshold,
                     "fixed": opts.pseudo_threshold, "unlabelled": list(unlabelled)})
    s_key = _digest({"pseudo": p_key, "model": opts.model, "schedule": opts.student,
                     "repeat": opts.repeat_labelled, "paint": opts.paint,
                     "count_matched": opts.count_matched_paint, "held_out": list(held_out)})
    teacher = _train_stage("teacher", tcfg, list(range(len(labelled))), _Reader(ds, labelled),
                           opts.teacher, run / "teacher", key=t_key, device=device, seed=seed,
                           min_area=opts.min_area, stop_after=stops.get("teacher"), log=say)
    counts = _labelled_counts(ds, labelled, opts.min_area)
    pl = _pseudo(opts, ds, counts, unlabelled, teacher, run / "pseudo_labels", device, say,
                 p_key)
    t_paint = _paint(opts, pl.info.get("count_matching_threshold"))
    if not (run / "teacher" / "model" / "model.yaml").is_file():
        save(run / "teacher" / "model", teacher, tcfg, t_paint)
    del teacher
    n = len(labelled)
    pool = list(range(n)) * int(opts.repeat_labelled) + [n + k for k in range(len(pl.patches))]
    final = run / "model"
    s_paint = opts.paint
    s_ckpt = run / "student" / "checkpoints" / "last.pt"
    if (final / "model.yaml").is_file():
        if not s_ckpt.is_file() or load_checkpoint(s_ckpt).get("config") != s_key:
            raise _another_config(final)
        say(f"BASS student: done ({final})")
        s_paint = from_dict(PaintParams, read_yaml(final / "postproc.yaml"),
                            where=str(final / "postproc.yaml"))
    else:
        student = _train_stage("student", opts.model, pool, _Reader(ds, labelled, pl),
                               opts.student, run / "student", key=s_key, device=device,
                               seed=seed,
                               min_area=opts.min_area, stop_after=stops.get("student"),
                               log=say)
        check = [ds.patches[int(i)] for i in held_out] or pl.patches
        s_paint = _paint(opts, _student_threshold(opts, ds, student, check, counts, device, say))
        save(final, student, opts.model, s_paint)
    summary = {
        "stages": {"teacher": str(run / "teacher" / "model"),
                   "pseudo_labels": str(run / "pseudo_labels"), "student": str(final)},
        "threshold": pl.threshold, "n_labelled_mean": pl.info.get("n_labelled_mean"),
        "pseudo_instances": pl.info.get("instances_kept"),
        "labelled_patches": n, "pseudo_patches": len(pl.patches),
        "repeat_labelled": int(opts.repeat_labelled), "student_pool": len(pool),
        "paint_teacher": asdict(t_paint), "paint_student": asdict(s_paint),
        "teacher_schedule": asdict(opts.teacher), "student_schedule": asdict(opts.student),
    }
    atomic_write_text(run / "bass.json", json.dumps(summary, indent=1) + "\n")
    return final
