"""Iteration budgets of an experiment: equal per ratio, fixed, or fitted to wall-clock minutes.

* ``budget: equal`` (default): every run of a label ratio gets the semi-supervised epoch length
  ``floor(#unlabelled patches / batch_size_unlabelled)`` (``#labelled / batch_size`` when a
  split has no unlabelled patches, e.g. ratio 1) as ``train.iterations_per_epoch``, so the
  supervised baseline is trained exactly as long as the semi-supervised methods.
* ``iterations: N`` or ``--budget-minutes M``: the schedule of ``E`` epochs with lr steps at
  epochs ``s`` is compressed to ``N`` iterations by :func:`compress_schedule`: ``E'`` epochs
  of ``N // E'`` iterations with steps at ``s * E' / E`` — ``E'`` is a multiple of
  ``E / gcd(E, s...)`` so each step falls at exactly the same fraction of training.
* ``--budget-minutes M``: each method's rate is measured in a short warm-up (a real
  :class:`~ircr.train.trainer.Trainer` stopped after a few steps; a validation of one image,
  scaled to all, and one checkpoint are timed too). A run of ``N`` iterations is expected to take
  ``setup + passes * N / rate + (E' + 2) * checkpoint + #validations * validation + test eval``
  (the 2: the final checkpoint and the model folder)
  (``passes`` = rounds + 1 for self-training: teacher(s) and student). One scale factor
  ``k <= 1`` of the equal-budget schedule is fitted so the sum over runs, divided by
  ``--jobs``, fits in what is left of ``M`` after the warm-up; every run of a ratio then gets
  the same ``N = floor(k * E * epoch length)``. The estimate assumes parallel jobs do not
  slow each other down (true for separate devices or idle CPU cores; on one GPU, use
  ``--jobs 1`` for a tight budget).
* A compressed schedule also compresses the consistency warm-up and ramp-up by the same
  factor (planned / uncompressed iterations), with a floor (:mod:`ircr.experiment.start`);
  the plan records them (``start``, ``consistency``) and prints them per run.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ircr.config import set_dotted
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.experiment.protocol import Protocol, RunSpec
from ircr.experiment.short import short_runs, warning_lines
from ircr.experiment.start import WARMUP_FLOOR, apply_compression, describe, start_label


@dataclass
class SplitSize:
    """Counts of one split: labelled / unlabelled patches, train / val images."""

    labelled: int
    unlabelled: int
    val_images: int
    train_images: int


@dataclass
class Rate:
    """Measured cost of one method: it/s, setup, one validation, one checkpoint (seconds)."""

    it_per_s: float
    setup_s: float
    val_s: float
    ckpt_s: float
    val_images: int


def split_size(cfg: dict[str, Any], where: str) -> SplitSize:
    """Patch and image counts of the run's ``data.split``."""
    ds = PreparedDataset(cfg["data"]["dataset"])
    try:
        sp = ds.load_split(cfg["data"]["split"])
    except IrcrError as exc:
        raise IrcrError(f"{where}: {exc}") from None
    return SplitSize(len(sp.labelled_patches), len(sp.unlabelled_patches), len(sp.val_images),
                     len(sp.train_images))


def epoch_length(cfg: dict[str, Any], size: SplitSize) -> int:
    """Semi-supervised epoch length (one pass over the unlabelled patches), at least 1."""
    data = cfg.get("data", {})
    if size.unlabelled:
        return max(1, size.unlabelled // int(data.get("batch_size_unlabelled", 4)))
    return max(1, size.labelled // int(data.get("batch_size", 4)))


def compress_schedule(total: int, epochs: int, lr_steps: list[int],
                      target_epochs: int) -> tuple[int, int, list[int]]:
    """(epochs', iterations per epoch, lr steps') of at most ``total`` iterations.

    Steps at or after ``epochs`` never happen and are dropped. When ``total`` is too small
    for exact fractions, steps are rounded to the nearest epoch (at least 1).
    """
    steps = sorted({int(s) for s in lr_steps if 1 <= s < epochs})
    g = epochs
    for s in steps:
        g = math.gcd(g, s)
    unit = epochs // g
    e2 = unit * max(1, round(target_epochs / unit))
    while e2 > total and e2 > unit:
        e2 -= unit
    if e2 <= total:
        return e2, total // e2, [s * e2 // epochs for s in steps]
    e2 = max(1, min(total, target_epochs))
    new = sorted({min(e2 - 1, max(1, round(s * e2 / epochs))) for s in steps} - {0})
    return e2, total // e2, new


def n_validations(epochs: int, val_every: int, has_val: bool) -> int:
    """Validations the trainer runs (every ``val_every`` epochs and always the last)."""
    if not has_val:
        return 0
    regular = epochs // val_every if val_every else 0
    last_extra = 0 if (val_every and epochs % val_every == 0) else 1
    return regular + last_extra


def _passes(cfg: dict[str, Any]) -> int:
    m = cfg.get("method", {})
    if m.get("name") != "self_training" or _progressive_st(cfg):
        return 1
    return int(m.get("rounds", 1)) + 1


def _progressive_st(cfg: dict[str, Any]) -> bool:
    """Self-training in ``mode: progressive``: one run that draws unlabelled batches."""
    m = cfg.get("method", {})
    return bool(m.get("name") == "self_training" and m.get("mode") == "progressive")


def measure_rate(run: RunSpec, warm_dir: Path, iterations: int) -> Rate:
    """Warm-up: a real trainer for ``iterations`` steps (self-training: its supervised step)."""
    from ircr.inference.evaluate import evaluate_models
    from ircr.train.config import experiment_from_dict, method_takes
    from ircr.train.trainer import Trainer, TrainingInterrupted

    d = copy.deepcopy(run.config)
    if _progressive_st(d):  # full-cost steps: pseudo-labels from the first iteration on
        set_dotted(d, "method.progressive_start", 0.0, "warm-up")
        set_dotted(d, "method.progressive_end", 0.0, "warm-up")
    elif d.get("method", {}).get("name") == "self_training":  # its supervised step's rate
        d["method"] = {k: v for k, v in d["method"].items() if method_takes("supervised", k)}
        set_dotted(d, "method.name", "supervised", "warm-up")
    # the method's supervised-only warm-up steps are cheaper: measure full-cost steps
    if method_takes(d.get("method", {}).get("name", "supervised"), "warmup_iterations"):
        set_dotted(d, "method.warmup_iterations", 0, "warm-up")
    for key, val in (("train.progress", False), ("train.tensorboard", False),
                     ("train.checkpoint_every", 0), ("train.max_iterations", None),
                     ("train.epochs", 1), ("train.iterations_per_epoch", iterations + 1)):
        set_dotted(d, key, val, "warm-up")
    if warm_dir.exists():
        shutil.rmtree(warm_dir)
    stamps: list[float] = []
    t0 = time.perf_counter()
    tr = Trainer(experiment_from_dict(d, where=f"warm-up of {run.method}"), warm_dir,
                 stop_after=iterations)
    tr.on_step = lambda _t: stamps.append(time.perf_counter())
    try:
        tr.run()
    except TrainingInterrupted:
        pass
    rate = (len(stamps) - 2) / max(stamps[-1] - stamps[1], 1e-9)
    setup = max(stamps[0] - t0 - 1.0 / rate, 0.0)
    n_val = len(tr.split.val_images)
    if tr.cfg.eval.max_images:
        n_val = min(n_val, tr.cfg.eval.max_images)
    t1 = time.perf_counter()
    if n_val:  # one validation image, timed and scaled to a whole validation
        family, postproc = tr.eval_family()
        evaluate_models(tr.method.eval_models(), tr.dataset, tr.split.val_images[:1],
                        tr.cfg.eval, postproc, tr.device, amp=tr.amp is not None,
                        family=family)
    t2 = time.perf_counter()
    tr.save()
    t3 = time.perf_counter()
    shutil.rmtree(warm_dir, ignore_errors=True)
    return Rate(rate, setup, (t2 - t1) * n_val, t3 - t2, n_val)


@dataclass
class PlannedRun:
    """What one run will do: its schedule, its final config and its expected seconds.

    ``start``: ``paper`` / ``stable`` / ``custom`` (``""``: the method has no consistency
    start). ``consistency``: warm-up / ramp-up iterations after compression, the configured
    ones and the scale factor (``{}``: no such options).
    """

    run_id: str
    method: str
    ratio: str
    split_seed: int
    train_seed: int
    epochs: int
    iterations_per_epoch: int
    iterations: int
    lr_steps: list[int]
    expected_s: float | None
    config: dict[str, Any]
    start: str = ""
    consistency: dict[str, Any] = field(default_factory=dict)


def _schedule(cfg: dict[str, Any], total: int | None, ipe: int | None,
              target_epochs: int) -> tuple[int, int, list[int], float]:
    """(epochs, iterations per epoch, lr steps, scale = planned / uncompressed iterations)."""
    t = cfg.get("train", {})
    epochs, steps = int(t.get("epochs", 150)), list(t.get("lr_steps", [100]))
    base_ipe = ipe or t.get("iterations_per_epoch")
    if total is None:
        if base_ipe is None:
            raise IrcrError("plan: internal: no iterations per epoch")
        return epochs, int(base_ipe), steps, 1.0
    if base_ipe is not None and total >= epochs * int(base_ipe):
        return epochs, int(base_ipe), steps, 1.0
    e, i, s = compress_schedule(total, epochs, steps, target_epochs)
    return e, i, s, min(1.0, e * i / (epochs * int(base_ipe))) if base_ipe else 1.0


def _finalize(run: RunSpec, epochs: int, ipe: int, steps: list[int],
              scale: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's final config and its compressed consistency start (``{}``: none)."""
    d = copy.deepcopy(run.config)
    for key, val in (("train.epochs", epochs), ("train.iterations_per_epoch", ipe),
                     ("train.lr_steps", steps), ("train.max_iterations", None),
                     ("train.progress", False)):
        set_dotted(d, key, val, run.run_id)
    consistency = apply_compression(d, scale, run.run_id)
    for key, val in run.method_overrides.items():  # the method's own keys win
        set_dotted(d, key, val, run.run_id)
    return d, consistency


def expected_seconds(cfg: dict[str, Any], rate: Rate, size: SplitSize, n_test: int,
                     n_models: int) -> float:
    """Expected wall seconds of a run with the final ``cfg`` (module docstring)."""
    t = cfg["train"]
    epochs, ipe = int(t["epochs"]), int(t["iterations_per_epoch"])
    per_image = rate.val_s / max(rate.val_images, 1)
    n_val = n_validations(epochs, int(t.get("val_every", 1)), size.val_images > 0)
    passes = _passes(cfg)
    pseudo = (passes - 1) * per_image / max(n_models, 1) * size.train_images
    return (rate.setup_s * passes + passes * epochs * ipe / rate.it_per_s
            + passes * (epochs + 2) * rate.ckpt_s + passes * n_val * rate.val_s
            + per_image * n_test + pseudo)


MAX_BUDGET_MINUTES = 366 * 24 * 60.0  # a year


def check_budget_minutes(value: float | None) -> None:
    """``--budget-minutes``: None or a finite number of minutes in (0, a year].

    NaN would never equal itself, so a plan made with it could never be resumed.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 < value <= MAX_BUDGET_MINUTES):
        raise IrcrError(f"--budget-minutes: must be a finite number of minutes in "
                        f"(0, {MAX_BUDGET_MINUTES:g}], got {value}")


def make_plan(proto: Protocol, runs: list[RunSpec], rates: dict[str, Rate] | None = None,
              budget_s: float | None = None, jobs: int = 1, n_test: int = 0,
              ) -> list[PlannedRun]:
    """Schedules of every run: equal/native budgets, fixed iterations, or a time budget."""
    sizes = {r.run_id: split_size(r.config, r.run_id) for r in runs}
    eq = {r.run_id: epoch_length(r.config, sizes[r.run_id]) for r in runs}
    ratio_total: dict[str, int] = {}
    for r in runs:
        native = int(r.config.get("train", {}).get("epochs", 150)) * eq[r.run_id]
        ratio_total[r.ratio] = max(ratio_total.get(r.ratio, 0), native)
    totals: dict[str, int | None] = {r.run_id: proto.iterations for r in runs}
    if budget_s is not None:
        if not rates:
            raise IrcrError("plan: --budget-minutes needs measured rates")
        k = _fit_scale(proto, runs, rates, sizes, ratio_total, budget_s, jobs, n_test)
        totals = {r.run_id: max(1, math.floor(k * ratio_total[r.ratio] + 1e-9)) for r in runs}
    n_models = len(proto.evaluate)
    out = []
    for r in runs:
        ipe = eq[r.run_id] if proto.budget == "equal" or budget_s is not None else None
        if ipe is None and r.config.get("train", {}).get("iterations_per_epoch") is None:
            ipe = _native_ipe(r.config, sizes[r.run_id])
        e, i, s, scale = _schedule(r.config, totals[r.run_id], ipe, proto.budget_epochs)
        own = own_iterations(r.config, sizes[r.run_id], r.run_id)
        if own is not None:  # its own stages and schedules (bass): not compressed
            e, i, s, scale = 1, own, [], 1.0
        cfg, consistency = _finalize(r, e, i, s, scale)
        t = cfg["train"]
        e, i, s = int(t["epochs"]), int(t["iterations_per_epoch"]), list(t["lr_steps"])
        exp = (expected_seconds(cfg, rates[r.method], sizes[r.run_id], n_test, n_models)
               if rates and r.method in rates else None)
        if consistency:  # a method row's own overrides win: record what the run gets
            m = cfg.get("method", {})
            consistency.update({k: m[k] for k in ("warmup_iterations", "rampup_iterations")
                                if k in m and k in consistency})
        out.append(PlannedRun(r.run_id, r.method, r.ratio, r.split_seed, r.train_seed, e, i,
                              e * i, s, exp, cfg, start_label(cfg), consistency))
    return out


def own_iterations(cfg: dict[str, Any], size: SplitSize, where: str) -> int | None:
    """Steps of a method with its own loop and schedule (``Method.own_iterations``), else
    None. Such a run keeps its schedule: equal budgets, ``iterations`` and the time budget do
    not apply to it (docs/experiment.md)."""
    from ircr.train.config import experiment_from_dict
    from ircr.train.methods import get_method

    ec = experiment_from_dict(copy.deepcopy(cfg), where=where)
    return get_method(ec.method.name).own_iterations(ec.method.options, size.labelled,
                                                     size.unlabelled)


def _native_ipe(cfg: dict[str, Any], size: SplitSize) -> int:
    """The trainer's own default: a pass over the unlabelled (SSL) or labelled patches."""
    from ircr.train.methods import get_method

    m = get_method(cfg.get("method", {}).get("name", "supervised"))
    if (m.uses_unlabelled or _progressive_st(cfg)) and size.unlabelled:
        return max(1, size.unlabelled // int(cfg.get("data", {}).get("batch_size_unlabelled", 4)))
    return max(1, size.labelled // int(cfg.get("data", {}).get("batch_size", 4)))


def _fit_scale(proto: Protocol, runs: list[RunSpec], rates: dict[str, Rate],
               sizes: dict[str, SplitSize], ratio_total: dict[str, int], budget_s: float,
               jobs: int, n_test: int) -> float:
    """Largest k <= 1 such that the expected seconds of all runs / jobs fit ``budget_s``."""
    fixed = var = 0.0
    for r in runs:
        rate = rates[r.method]
        probe = _finalize(r, proto.budget_epochs, 1, [])[0]
        cost0 = expected_seconds(probe, rate, sizes[r.run_id], n_test, len(proto.evaluate))
        per_it = _passes(r.config) / rate.it_per_s
        fixed += cost0 - per_it * proto.budget_epochs
        var += per_it * ratio_total[r.ratio]
    cap = budget_s * max(jobs, 1) - fixed
    if cap <= 0 or var <= 0:
        raise IrcrError(f"--budget-minutes: too short: {max(budget_s, 0) / 60:.1f} min are left "
                        f"after the warm-up, but setup, validation and evaluation alone are "
                        f"expected to take {fixed / max(jobs, 1) / 60:.1f} min")
    k = min(1.0, cap / var)
    if min(math.floor(k * t + 1e-9) for t in ratio_total.values()) < 1:
        raise IrcrError(f"--budget-minutes: {budget_s / 60:.1f} min leaves less than one "
                        "iteration per run")
    return k


def format_plan(plan: list[PlannedRun], jobs: int, budget_min: float | None) -> str:
    """Human-readable plan: one line per run and the expected total."""
    lines = [f"plan: {len(plan)} runs, {jobs} at a time"
             + (f", budget {budget_min:g} min" if budget_min else "")]
    for p in plan:
        exp = f"{p.expected_s / 60:6.1f} min" if p.expected_s is not None else ""
        start = describe(p.config) + _scale_note(p.consistency)
        lines.append(f"  {p.run_id:<32} {p.iterations:>7} it = {p.epochs} ep x "
                     f"{p.iterations_per_epoch} it, lr steps {p.lr_steps}"
                     + (f", {start}" if start else "") + f"  {exp}")
    lines += warning_lines(short_runs(plan_to_dict(plan)), len(plan), "  ")
    known = [p.expected_s for p in plan if p.expected_s is not None]
    if known:
        lines.append(f"  expected: {sum(known) / 60 / max(jobs, 1):.1f} min "
                     f"(sum {sum(known) / 60:.1f} min / {jobs} jobs)")
    return "\n".join(lines)


def _scale_note(consistency: dict[str, Any]) -> str:
    """`` (100 + 200 x 0.2, floor 20)`` when a budget compressed warm-up / ramp-up."""
    conf, scale = consistency.get("configured") or {}, float(consistency.get("scale", 1.0))
    if scale >= 1 or not conf or not any(conf.values()):
        return ""
    return (f" ({conf.get('warmup_iterations', 0)} + {conf.get('rampup_iterations', 0)} "
            f"x {scale:.3g}, floor {WARMUP_FLOOR})")


def plan_to_dict(plan: list[PlannedRun]) -> list[dict[str, Any]]:
    """JSON-serialisable plan (``plan.json``)."""
    return [asdict(p) for p in plan]


def plan_from_dict(rows: list[dict[str, Any]]) -> list[PlannedRun]:
    """Inverse of :func:`plan_to_dict`."""
    return [PlannedRun(**r) for r in rows]
