"""Run an experiment: plan, run folders (skip / resume / record failures), jobs, progress.

Experiment folder::

    protocol.yaml            copy of the protocol file
    plan.json                the planned runs (schedule, final config, expected seconds);
                             a rerun reuses it, so resumed runs keep their schedule
    runs/<run_id>/           a trainer run folder (config.yaml, metrics.csv, checkpoints/,
                             model/) plus run.json (its plan entry) and metrics.json
    report.md, report.csv, significance.csv, fig4_aji.png, curves_r<ratio>.png
                             (ircr.experiment.report)

``runs/<id>/metrics.json`` is written last and atomically: ``status: done`` with the final
iteration, wall seconds and the metrics of each evaluated model on the validation images (the
trainer's last validation, from ``metrics.csv``) and on the test images (means, and every
test image's metrics in ``test_per_image`` — patches with ``test_unit: patch``, named
``<image>@<y0>,<x0>`` — for the report's image-level tests); or ``status:
failed`` with the one-line error (traceback in ``error.txt``). A rerun skips done runs, resumes
interrupted ones from ``checkpoints/last.pt`` (the trainer's ``--resume`` semantics) and
retries failed ones. Ctrl-C stops the experiment; nothing finished is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.experiment import plan as planning
from ircr.experiment import planfile, run_metrics
from ircr.experiment.protocol import Protocol, RunSpec, expand, import_plugins, load_protocol
from ircr.experiment.status import read_json, run_status, write_json_atomic
from ircr.experiment.workers import Task, run_in_processes, run_in_this_process
from ircr.io.lock import FolderLock

# --budget-minutes: the plan gets the budget minus what has run since the command started,
# minus this share and this reserve (report, plots, process start-up, estimate error); the
# 8-minute CPU experiment of issue 27 overran by 38 s without them
BUDGET_MARGIN = 0.05
BUDGET_RESERVE_S = 15.0


@dataclass
class RunContext:
    """What a run process needs besides its plan entry (picklable for ``--jobs``)."""

    evaluate: list[str]
    test_dataset: str | None
    test_split: str
    plugins: list[str] = field(default_factory=list)
    threads: int = 0
    progress_every: float = 30.0
    index: str = ""
    device: str | None = None  # --device: replaces train.device (not part of the run's plan)
    progress: bool = True  # False (--no-progress): no progress bars in the run
    test_unit: str = "image"  # "patch": every grid patch on its own (BASS's unit)
    own_test: bool = False  # test_fraction > 0: each run's split's test images


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """``on_step`` callback printing one line per run at most every ``every`` seconds."""

    def __init__(self, entry: dict[str, Any], index: str, every: float,
                 out: Callable[[str], None], run_dir: Path, iteration: int) -> None:
        self.entry, self.index, self.every, self.out = entry, index, every, out
        self.t_last = 0.0
        self.start: tuple[float, int] = (time.time(), iteration)
        self.start_dir: Path | None = run_dir

    def __call__(self, tr: Any) -> None:
        now = time.time()
        if tr.run_dir != self.start_dir:  # a sub-training (self-training teacher) started
            self.start, self.start_dir = (now, int(tr.iteration)), tr.run_dir
        total = int(getattr(tr, "total", 0) or 0)
        if now - self.t_last < self.every and tr.iteration < total:
            return
        self.t_last = now
        done = tr.iteration - self.start[1]
        rate = done / max(now - self.start[0], 1e-9)
        speed = f"{rate:.2f} it/s ETA {_fmt_s((total - tr.iteration) / rate)}" if rate > 0 \
            else "? it/s ETA ?"
        e = self.entry
        sub = "" if tr.run_dir.name == e["run_id"] else f" [{tr.run_dir.name}]"
        self.out(f"{self.index} {e['method']} ratio {e['ratio']} seed {e['split_seed']}/"
                 f"{e['train_seed']}{sub}: it {tr.iteration}/{total} {speed}")


def _print(line: str) -> None:
    print(line, flush=True)


def run_one(entry: dict[str, Any], run_dir: Path, ctx: RunContext,
            out: Callable[[str], None] = _print) -> dict[str, Any]:
    """Train (or resume) and evaluate one planned run; returns its ``metrics.json``."""
    status = run_status(run_dir)
    if status.get("status") == "done":
        return status
    import torch

    from ircr.train.config import experiment_from_dict
    from ircr.train.methods.base import Method
    from ircr.train.trainer import Trainer

    import_plugins(ctx.plugins, "protocol")
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    run_json = run_dir / "run.json"
    if run_json.is_file() and read_json(run_json).get("config") != entry["config"]:
        raise IrcrError(f"{run_dir}: this run folder was planned with another config; "
                        "use another --out or remove the folder")
    write_json_atomic(run_json, entry)
    (run_dir / "metrics.json").unlink(missing_ok=True)  # a failed run is retried
    t0 = time.time()
    doc: dict[str, Any] = {k: entry[k] for k in ("run_id", "method", "ratio", "split_seed",
                                                  "train_seed")}
    try:
        cfg = experiment_from_dict(json.loads(json.dumps(entry["config"])),
                                   where=str(run_json), stored=True)
        if ctx.device:
            cfg.train.device = ctx.device
        if not ctx.progress:
            cfg.train.progress = False
        tr = Trainer(cfg, run_dir, resume="auto", config_source=str(run_json))
        resumed = tr.iteration
        out(f"{ctx.index} {entry['run_id']}: " + (f"resuming at iteration {resumed}"
                                                  if resumed else "starting") +
            f" ({entry['iterations']} iteration{'s' * (entry['iterations'] != 1)})")
        tr.on_step = Progress(entry, ctx.index, ctx.progress_every, out, run_dir, resumed)
        tr.run()
        test, per_image = run_metrics.metrics_on_test(
            tr, ctx.evaluate, ctx.test_dataset, ctx.test_split, ctx.test_unit, ctx.own_test)
        # a method with its own stages (bass) leaves the trainer's counter at 0
        own = (getattr(type(tr.method).own_iterations, "__func__", None)
               is not getattr(Method.own_iterations, "__func__", None))
        doc.update(status="done", iterations=int(entry["iterations"] if own else tr.iteration),
                   wall_s=time.time() - t0, train_wall_s=float(tr._wall()),
                   val=(run_metrics.val_from_csv(run_dir, ctx.evaluate)
                        or run_metrics.folder_val(tr, ctx.evaluate)), test=test,
                   test_per_image=per_image)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, not fatal
        msg = str(exc) if isinstance(exc, IrcrError) else f"{type(exc).__name__}: {exc}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        doc.update(status="failed", error=msg.splitlines()[0] if msg else type(exc).__name__,
                   iterations=run_status(run_dir).get("iterations", 0), wall_s=time.time() - t0)
    write_json_atomic(run_dir / "metrics.json", doc)
    where = "test" if doc.get("test", {}).get("student") else "val"
    aji = doc.get(where, {}).get("student", {}).get("aji")
    tail = f"{where} AJI {aji:.4f}" if isinstance(aji, float) else doc.get("error", "")
    out(f"{ctx.index} {entry['run_id']}: {doc['status']} in {_fmt_s(doc['wall_s'])} {tail}")
    return doc


def _worker(entry: dict[str, Any], run_dir: Path, ctx: RunContext) -> dict[str, Any]:
    """Body of a ``--jobs`` worker process (module-level: it is pickled by name)."""
    return run_one(entry, Path(run_dir), ctx)


def _task(state: Any, task: tuple[dict[str, Any], str, RunContext]) -> dict[str, Any]:
    """One run as an executor task (``--cluster``; :mod:`ircr.experiment.cluster`)."""
    entry, run_dir, ctx = task
    return run_one(entry, Path(run_dir), ctx)


def ensure_splits(runs: list[RunSpec], val_fraction: float, test_fraction: float = 0.0) -> None:
    """Create missing split files (``ircr data split``) before any run starts."""
    from ircr.data.prepare import add_split
    from ircr.data.store import PreparedDataset

    seen: set[tuple[str, str]] = set()
    for r in runs:
        ds_path, split = str(r.config["data"]["dataset"]), str(r.config["data"]["split"])
        if (ds_path, split) in seen:
            continue
        seen.add((ds_path, split))
        if not Path(ds_path).is_dir():
            raise IrcrError(f"{r.run_id}: data.dataset: prepared dataset folder not found: "
                            f"{ds_path} (create it with 'ircr data prepare')")
        if split not in PreparedDataset(ds_path).split_names():
            add_split(ds_path, r.ratio, r.split_seed, val_fraction, test_fraction)


def prepare_plan(proto: Protocol, runs: list[RunSpec], out: Path, budget_minutes: float | None,
                 jobs: int, log: Callable[[str], None], started: float | None = None,
                 replan: bool = False, dry_run: bool = False) -> list[planning.PlannedRun]:
    """Reuse ``plan.json`` or make a new plan (warm-ups first when there is a time budget).

    A stored plan that differs from the protocol, its configs or the budget is refused with
    the differences unless ``replan`` (:mod:`ircr.experiment.planfile`). A dry run writes
    nothing: it shows the plan a real run would make (or reuse).
    """
    plan_path = out / "plan.json"
    if budget_minutes is not None:
        _refuse_own_schedules(runs)
    if plan_path.is_file():
        doc = planfile.read_plan(plan_path)
        changes = planfile.plan_changes(doc, proto, runs, budget_minutes)
        if not changes:
            log(f"using the plan in {plan_path}")
            if not dry_run and doc.get("significance") != significance_settings(proto):
                write_json_atomic(plan_path, {**doc, "significance":
                                              significance_settings(proto)})
            return planning.plan_from_dict(doc["runs"])
        if dry_run:
            log("note: " + planfile.changed_message(plan_path, changes))
        elif not replan:
            raise IrcrError(planfile.changed_message(plan_path, changes))
    t0 = time.time() if started is None else started
    rates: dict[str, planning.Rate] | None = None
    n_test = _n_test(proto, runs)
    if budget_minutes is not None:
        rates = {}
        for r in runs:
            if r.method not in rates:
                log(f"warm-up: {r.method} ({proto.warmup_iterations} iterations)")
                rates[r.method] = planning.measure_rate(r, out / "warmup" / r.method,
                                                        proto.warmup_iterations)
                log(f"warm-up: {r.method} {rates[r.method].it_per_s:.2f} it/s, setup "
                    f"{rates[r.method].setup_s:.1f} s, validation {rates[r.method].val_s:.1f} s")
        shutil.rmtree(out / "warmup", ignore_errors=True)
    budget_s = None if budget_minutes is None else usable_seconds(budget_minutes, time.time() - t0)
    plan = planning.make_plan(proto, runs, rates, budget_s, jobs, n_test)
    if dry_run:
        return plan
    entries = planning.plan_to_dict(plan)
    moved = planfile.set_aside(out, entries) if replan else None
    if moved is not None:
        log(f"--replan: the old plan and the run folders it does not reuse are in {moved}")
    write_json_atomic(plan_path, {
        "budget_minutes": budget_minutes, "jobs": jobs, "warmup_s": time.time() - t0,
        "rates": {k: vars(v) for k, v in (rates or {}).items()},
        "evaluate": proto.evaluate, "test_dataset": _str(proto.test_dataset),
        "test_split": proto.test_split, "settings": planfile.settings_of(proto),
        "significance": significance_settings(proto),
        "specs": planfile.specs_of(runs), "runs": entries})
    return plan


def significance_settings(proto: Protocol) -> dict[str, Any]:
    """What the report's significance tests need (plan.json; not part of the plan)."""
    return {"reference": proto.reference_row(), "bootstrap": proto.bootstrap,
            "test_unit": proto.test_unit}


def _refuse_own_schedules(runs: list[RunSpec]) -> None:
    """--budget-minutes cannot fit a method that keeps its own stage schedules (bass)."""
    from ircr.experiment.plan import own_iterations, split_size

    for r in runs:
        if own_iterations(r.config, split_size(r.config, r.run_id), r.run_id) is not None:
            raise IrcrError(f"--budget-minutes: run {r.run_id}: method "
                            f"'{r.config['method']['name']}' trains on its own stage schedules "
                            "(e.g. method.teacher / method.student iterations), which a time "
                            "budget cannot shorten; set them in the row's overrides and run "
                            "without --budget-minutes")


def usable_seconds(budget_minutes: float, elapsed: float) -> float:
    """Seconds the runs may take: the budget less what ran so far, the margin and the reserve."""
    return budget_minutes * 60.0 * (1.0 - BUDGET_MARGIN) - BUDGET_RESERVE_S - elapsed


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _n_test(proto: Protocol, runs: list[RunSpec]) -> int:
    from ircr.data.store import PreparedDataset
    from ircr.inference.evaluate import select_images

    if proto.test_fraction > 0 and runs:  # every split holds out the same number
        cfg = runs[0].config["data"]
        return len(PreparedDataset(cfg["dataset"]).load_split(cfg["split"]).test_images)
    if proto.test_dataset is None:
        return 0

    if not Path(proto.test_dataset).is_dir():
        raise IrcrError(f"protocol key 'test_dataset': prepared dataset folder not found: "
                        f"{proto.test_dataset}")
    return len(select_images(PreparedDataset(proto.test_dataset), proto.test_split)[0])


def run_experiment(protocol_path: str | Path, out: str | Path, jobs: int = 1,
                   budget_minutes: float | None = None, dry_run: bool = False,
                   progress_every: float = 30.0, log: Callable[[str], None] = _print,
                   replan: bool = False, started: float | None = None,
                   device: str | None = None, progress: bool = True,
                   cluster: str | None = None, client: Any = None,
                   threads_per_worker: int | None = None) -> dict[str, Any]:
    """Plan, run every pending run (``jobs`` processes, or one task each on ``cluster`` /
    ``client``: :mod:`ircr.experiment.cluster`), write the report; returns a summary.

    ``device`` (``--device``) replaces every run's ``train.device``; ``progress=False``
    turns the runs' progress bars off. Neither is part of the plan.

    ``out`` is locked for the whole command (:class:`ircr.io.lock.FolderLock`): a second
    experiment into it is refused with the holder's pid. ``started``: when the command
    started (``time.time()``), the start of a ``--budget-minutes`` budget (default: now).
    """
    t0 = time.time() if started is None else started
    if jobs < 1:
        raise IrcrError(f"--jobs must be >= 1, got {jobs}")
    planning.check_budget_minutes(budget_minutes)
    if device:
        from ircr.inference.device import select_device

        select_device(device)  # a bad --device fails before planning, not in every run
    if cluster is not None and jobs == 1:  # a time budget is planned for N runs at once
        from ircr.executor import parse_cluster

        kind, target = parse_cluster(cluster)
        jobs = int(target) if kind == "local" else jobs
    proto = load_protocol(protocol_path)
    runs = expand(proto, str(protocol_path))
    out = Path(out)
    existed = out.exists()
    with FolderLock(out, "experiment folder"):
        ensure_splits(runs, proto.val_fraction, proto.test_fraction)
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
        if threads:
            import torch

            torch.set_num_threads(threads)
        plan = prepare_plan(proto, runs, out, budget_minutes, jobs, log, t0, replan, dry_run)
        log(planning.format_plan(plan, jobs, budget_minutes))
        if dry_run:
            log("dry run: nothing was written (the plan is made again by the real run)")
            summary: dict[str, Any] = {"planned": len(plan)}
        else:
            if not (out / "protocol.yaml").is_file():
                shutil.copyfile(protocol_path, out / "protocol.yaml")
            summary = _run_plan(plan, out, proto, jobs, threads, progress_every, log, t0,
                                budget_minutes, device, progress,
                                (cluster, client, threads_per_worker))
    if dry_run and not existed:
        shutil.rmtree(out, ignore_errors=True)
    return summary


def _run_plan(plan: list[planning.PlannedRun], out: Path, proto: Protocol, jobs: int,
              threads: int, progress_every: float, log: Callable[[str], None], t0: float,
              budget_minutes: float | None, device: str | None = None, progress: bool = True,
              where: tuple[str | None, Any, int | None] = (None, None, None)
              ) -> dict[str, Any]:
    """Run the pending runs of a plan, then write the report (also when interrupted)."""
    from ircr.experiment.report import write_report

    entries = planning.plan_to_dict(plan)
    pending = [e for e in entries if run_status(out / "runs" / e["run_id"]).get("status") != "done"]
    skipped = len(entries) - len(pending)
    if skipped:
        log(f"skipping {skipped} finished run(s)")
    try:
        results = _run_all(pending, out, proto, jobs, threads, progress_every, log,
                           device, progress, where)
    except KeyboardInterrupt:
        log(f"interrupted: {_state_line(out, entries)}; rerun the same command to resume. "
            f"report so far: {write_report(out)}")
        raise
    report = write_report(out)
    n_done = sum(1 for r in results if r.get("status") == "done")
    n_failed = sum(1 for r in results if r.get("status") == "failed")
    wall = time.time() - t0
    summary: dict[str, Any] = {"runs": len(entries), "skipped": skipped, "done": n_done,
                               "failed": n_failed, "wall_s": wall, "report": str(report)}
    log(f"experiment: {len(entries)} runs: {skipped} already finished, {n_done} done now, "
        f"{n_failed} failed; {_fmt_s(wall)}; report: {report}")
    if budget_minutes is not None and wall > budget_minutes * 60:
        log(f"warning: the experiment took {_fmt_s(wall)}, over its --budget-minutes "
            f"{budget_minutes:g} by {wall - budget_minutes * 60:.0f} s (the machine was slower "
            "than in the warm-up)")
    return summary


def _state_line(out: Path, entries: list[dict[str, Any]]) -> str:
    """``3 done, 1 failed, 2 stopped with a checkpoint, 4 not started`` of a plan."""
    count: dict[str, int] = {}
    for e in entries:
        st = run_status(out / "runs" / e["run_id"]).get("status", "missing")
        count[st] = count.get(st, 0) + 1
    names = (("done", "done"), ("failed", "failed"),
             ("incomplete", "stopped with a checkpoint"), ("missing", "not started"))
    return ", ".join(f"{count[k]} {text}" for k, text in names if count.get(k)) or "no runs"


def _run_all(pending: list[dict[str, Any]], out: Path, proto: Protocol, jobs: int, threads: int,
             progress_every: float, log: Callable[[str], None], device: str | None = None,
             progress: bool = True,
             where: tuple[str | None, Any, int | None] = (None, None, None)
             ) -> list[dict[str, Any]]:
    """Run the pending runs here (``jobs == 1``), in worker processes (experiment.workers) or
    as executor tasks (``--cluster``: experiment.cluster)."""
    tasks = [Task(e, out / "runs" / e["run_id"],
                  RunContext(list(proto.evaluate), _str(proto.test_dataset), proto.test_split,
                             list(proto.plugins), threads, progress_every,
                             f"[{i + 1}/{len(pending)}]", device, progress,
                             proto.test_unit, proto.test_fraction > 0))
             for i, e in enumerate(pending)]
    if where[0] is not None or where[1] is not None:  # --cluster: one executor task per run
        from ircr.experiment.cluster import run_on_cluster

        return run_on_cluster(_task, [(t.entry, str(t.run_dir), t.ctx) for t in tasks],
                              *where, log)
    if jobs == 1:
        return run_in_this_process(tasks, 1, lambda e, d, c: run_one(e, d, c, log), log)
    results = run_in_processes(tasks, jobs, _worker, log)
    sys.stdout.flush()
    return results
