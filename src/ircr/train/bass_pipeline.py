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
that was interrupted continues from its own ``checkpoints/last.pt``. Every stage is a pure
function of the run's seed (:func:`~ircr.train.stage_tools.stage_seed`), so where a run was
interrupted does not change its models. Damaged outputs are redone, never used: unreadable
pseudo-labels are generated again, a model folder that does not hold its stage's checkpoint
is written again. ``<run>/bass.json`` (written last) summarises the stages.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ircr.config import bounded, from_dict, read_yaml, short_repr, to_dict
from ircr.data.detection import count_instances
from ircr.data.splits import Patch
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder
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
from ircr.train.stage_tools import StageStop, stage_bar, stage_seed

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
    repeat_labelled: int = bounded(19, 1, 1000)  # the student's pool holds L x this items
    tta: TTAConfig = field(default_factory=TTAConfig)
    pseudo_mask_threshold: float = bounded(0.5, 0, 1, lo_open=True)
    pseudo_threshold: float | None = bounded(None, 0, 1, hi_open=True)
    min_area: int = bounded(4, 1, 10**7)
    pseudo_max_patches: int | None = bounded(None, 1, 10**9)
    paint: PaintParams = field(default_factory=PaintParams)
    count_matched_paint: bool = False

    def validate(self, where: str = "method") -> None:
        """One-line IrcrError naming ``<where>.<key>`` for an unusable value."""
        self.model.validate(where)
        bad = [b for b in self.teacher_branches if b not in MASK_BRANCHES]
        if bad or not self.teacher_branches:
            raise IrcrError(f"{where}: method.teacher_branches must be a non-empty subset of "
                            f"{list(MASK_BRANCHES)}, got {short_repr(self.teacher_branches)}")
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


@dataclass
class _Ctx:
    """What every stage needs besides its inputs: device, the run's seed, the log, progress
    bars on/off and how to resume (the end of a Ctrl-C message)."""

    device: torch.device
    seed: int
    log: Callable[[str], None]
    progress: bool
    hint: str


def _train_stage(name: str, cfg: MaskRCNNConfig, pool: Sequence[int], read: _Reader,
                 schedule: DetectionSchedule, stage_dir: Path, *, key: str, ctx: _Ctx,
                 min_area: int, stop_after: int | None) -> nn.Module:
    """Train one detector stage, resuming its checkpoint (or load it when it is complete).
    ``key`` fingerprints the stage's settings; a checkpoint with another key is refused.
    The network's initial weights and every random draw come from ``(seed, name)``."""
    ckpt = stage_dir / "checkpoints" / "last.pt"
    its = resolve(schedule, len(pool)).iterations
    with stage_seed(ctx.seed, name, ctx.device):
        model = build_maskrcnn(cfg)
        if ckpt.is_file():
            state = load_checkpoint(ckpt, map_location="cpu")
            if state.get("config") != key:
                raise _another_config(ckpt)
            if int(state["iteration"]) >= its:
                model.load_state_dict(state["model"])
                ctx.log(f"BASS {name}: trained ({stage_dir})")
                return model.to(ctx.device).eval()
        ctx.log(f"BASS {name}: training ({its} iteration{'s' * (its != 1)}) in {stage_dir}")
        report = getattr(model.backbone, "pretrained_report", None)
        if report is not None:
            ctx.log(f"BASS {name}: backbone weights {report.summary()}")
        t0 = time.time()
        train_detector(model, pool, read, schedule, stage_dir, device=ctx.device,
                       seed=ctx.seed, min_area=min_area, stop_after=stop_after, log=ctx.log,
                       extra_state={"stage": name, "pool": len(pool), "config": key},
                       progress=ctx.progress, desc=f"BASS {name}", resume_hint=ctx.hint)
    ctx.log(f"BASS {name}: {its} iterations in {_secs(time.time() - t0)}")
    return model.eval()


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def _paint(opts: BassOptions, threshold: float | None) -> PaintParams:
    """The model folder's painting: ``opts.paint``, with the count-matched box-score
    threshold when ``opts.count_matched_paint`` (``threshold``)."""
    if opts.count_matched_paint and threshold is not None:
        return replace(opts.paint, score_threshold=float(threshold))
    return opts.paint


def _student_threshold(opts: BassOptions, ds: PreparedDataset, student: nn.Module,
                       patches: Sequence[Patch], counts: Sequence[int],
                       ctx: _Ctx) -> float | None:
    """The threshold step: count matching on the student's detections of ``patches``
    (images only); a progress bar, Ctrl-C stops it (it is redone on resume)."""
    if not opts.count_matched_paint:
        return None
    detect = detector_fn(student, ctx.device)
    scores: list[np.ndarray] = []
    t0 = time.time()
    bar = stage_bar(ctx.progress, len(patches), "BASS threshold", unit="patch")
    try:
        with stage_seed(ctx.seed, "threshold", ctx.device), \
                StageStop("BASS threshold step", ctx.hint) as stop:
            for i, p in enumerate(patches):
                scores.append(detect_tta(detect, ds.read_patch(p)[0], opts.tta)["scores"])
                if bar is not None:
                    bar.update(1)
                stop.check(i + 1, len(patches))
    finally:
        if bar is not None:
            bar.close()
    t = count_match_threshold(counts, scores).threshold
    ctx.log(f"BASS student: count-matched box-score threshold {t:.2f} for painting "
            f"({len(patches)} patches in {_secs(time.time() - t0)})")
    return t


def _labelled_counts(ds: PreparedDataset, labelled: Sequence[int], min_area: int) -> list[int]:
    """n_L data: instances (>= ``min_area`` px) of each labelled patch."""
    reader = _Reader(ds, labelled)
    return [count_instances(reader(i)[1], min_area) for i in range(len(labelled))]


def _stored_key(path: Path) -> Any:
    """The settings fingerprint of a ``threshold.json`` (None when unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _done_pseudo(out: Path, patches: list[Patch], key: str,
                 log: Callable[[str], None]) -> PseudoLabels | None:
    """Stage 2's output when it is complete and readable; None when it must be (re)made
    (an unreadable file, e.g. a truncated ``pseudo_labels.npz``: the stage is redone)."""
    done = out / THRESHOLD_FILE
    if not done.is_file():
        return None
    try:
        pl = load_pseudo_labels(out)
    except IrcrError as exc:
        stored = _stored_key(done)
        if stored is not None and stored != key:
            raise _another_config(done) from None
        log(f"BASS pseudo-labels: {exc}; generating them again")
        try:
            done.unlink()  # incomplete until both files are written again
        except OSError as err:
            raise IrcrError(f"{done}: cannot remove it ({err.strerror}); delete "
                            f"{out} and run again") from None
        return None
    if pl.patches != patches or pl.info.get("config") != key:
        raise _another_config(done)
    log(f"BASS pseudo-labels: done (threshold {pl.threshold:.2f}, {out})")
    return pl


def _pseudo(opts: BassOptions, ds: PreparedDataset, counts: Sequence[int],
            unlabelled: Sequence[int], teacher: nn.Module, out: Path, ctx: _Ctx,
            key: str) -> PseudoLabels:
    patches = [ds.patches[int(i)] for i in unlabelled]
    done = _done_pseudo(out, patches, key, ctx.log)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    ctx.log(f"BASS pseudo-labels: teacher on {len(patches)} unlabelled patches "
            f"({opts.tta.n_views} view(s) each), then count matching")
    t0 = time.time()
    bar = stage_bar(ctx.progress, len(patches), "BASS pseudo-labels", unit="patch")
    try:
        with stage_seed(ctx.seed, "pseudo_labels", ctx.device), \
                StageStop("BASS pseudo-labels", ctx.hint) as stop:

            def tick(done: int, n: int) -> None:
                if bar is not None:
                    bar.update(1)
                elif done % 200 == 0:
                    ctx.log(f"BASS pseudo-labels: {done}/{n} patches")
                stop.check(done, n)

            pl = generate_pseudo_labels(
                detector_fn(teacher, ctx.device), patches, lambda p: ds.read_patch(p)[0],
                counts, out, tta=opts.tta, mask_threshold=opts.pseudo_mask_threshold,
                min_area=opts.min_area, fixed_threshold=opts.pseudo_threshold,
                extra_info={"config": key}, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    ctx.log(f"BASS pseudo-labels: threshold {pl.threshold:.2f} (n_L "
            f"{pl.info['n_labelled_mean']:.1f}, kept {pl.info['instances_per_patch_mean']:.1f} "
            f"per patch) in {_secs(time.time() - t0)}")
    return pl


def _folder_problem(folder: Path, state: dict[str, torch.Tensor],
                    paint: PaintParams | None = None) -> str | None:
    """Why the model folder ``folder`` cannot be used as this stage's output (None: it can):
    missing, unreadable (:func:`load_model_folder`'s one-line reason), other weights than
    ``state`` or another painting than ``paint`` (when given)."""
    if not (folder / "model.yaml").is_file():
        return "missing"
    try:
        with torch.random.fork_rng(devices=[]):  # building the network draws weights
            loaded = load_model_folder(folder)
    except IrcrError as exc:
        return f"broken ({exc})"
    got = loaded.model.state_dict()
    if got.keys() != state.keys() or any(not torch.equal(got[k], state[k].detach().cpu())
                                         for k in got):
        return "holds other weights than the stage's checkpoint"
    if paint is not None and asdict(loaded.postproc) != asdict(paint):
        return "paints with other settings than this run's"
    return None


def _teacher_folder(run: Path, teacher: nn.Module, tcfg: MaskRCNNConfig, paint: PaintParams,
                    save: SaveFolder, log: Callable[[str], None]) -> Path:
    """``<run>/teacher/model``, (re)written unless it holds exactly this teacher."""
    folder = run / "teacher" / "model"
    problem = _folder_problem(folder, teacher.state_dict(), paint)
    if problem is not None:
        if problem != "missing":
            log(f"BASS teacher: model folder {folder} {problem}; writing it again")
        save(folder, teacher, tcfg, paint)
    return folder


def _student_done(final: Path, s_ckpt: Path, key: str,
                  log: Callable[[str], None]) -> PaintParams | None:
    """The student's painting when ``<run>/model`` is complete and holds the student of the
    checkpoint; None when it must be (re)written (missing or broken folder)."""
    if not (final / "model.yaml").is_file():
        return None
    state = load_checkpoint(s_ckpt) if s_ckpt.is_file() else {}
    if state.get("config") != key:
        raise _another_config(final)
    problem = _folder_problem(final, state["model"])
    if problem is not None:
        log(f"BASS student: model folder {final} {problem}; writing it again")
        return None
    log(f"BASS student: done ({final})")
    return from_dict(PaintParams, read_yaml(final / "postproc.yaml"),
                     where=str(final / "postproc.yaml"))


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
    held_out: Sequence[int] = (), progress: bool = False,
    resume_hint: str = "run the same command to resume",
) -> Path:
    """Run (or resume) the three stages; returns the final model folder ``<run>/model``.

    Every stage is a pure function of ``seed`` and its inputs (:func:`stage_seed`), so a run
    interrupted in any stage and resumed gives the uninterrupted run's models.

    Args:
        opts: the options (:class:`BassOptions`, the ``bass`` method's ``method:`` keys).
        ds, labelled, unlabelled: the prepared dataset and the split's patch ids.
        save: writes a model folder ``save(folder, model, cfg, paint)`` (the trainer's,
            family ``maskrcnn``).
        stop_after: ``{"teacher"|"student": iteration}`` to interrupt a stage (tests).
        held_out: patch ids the student never trained on (the validation images' patches)
            for its count-matched paint threshold (``count_matched_paint``; only pixels are
            used); empty = the pseudo-labelled patches (biased: the student fits them).
        progress: a progress bar with ETA in every stage (stderr).
        resume_hint: how to resume, the end of the message of a Ctrl-C/SIGTERM stop.
    """
    ctx = _Ctx(device, int(seed), log or (lambda _m: None), progress, resume_hint)
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
                           opts.teacher, run / "teacher", key=t_key, ctx=ctx,
                           min_area=opts.min_area, stop_after=stops.get("teacher"))
    counts = _labelled_counts(ds, labelled, opts.min_area)
    pl = _pseudo(opts, ds, counts, unlabelled, teacher, run / "pseudo_labels", ctx, p_key)
    t_paint = _paint(opts, pl.info.get("count_matching_threshold"))
    t_folder = _teacher_folder(run, teacher, tcfg, t_paint, save, ctx.log)
    del teacher
    n = len(labelled)
    pool = list(range(n)) * int(opts.repeat_labelled) + [n + k for k in range(len(pl.patches))]
    final = run / "model"
    s_paint = _student_done(final, run / "student" / "checkpoints" / "last.pt", s_key, ctx.log)
    if s_paint is None:
        student = _train_stage("student", opts.model, pool, _Reader(ds, labelled, pl),
                               opts.student, run / "student", key=s_key, ctx=ctx,
                               min_area=opts.min_area, stop_after=stops.get("student"))
        check = [ds.patches[int(i)] for i in held_out] or pl.patches
        s_paint = _paint(opts, _student_threshold(opts, ds, student, check, counts, ctx))
        save(final, student, opts.model, s_paint)
    summary = {
        "stages": {"teacher": str(t_folder),
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
