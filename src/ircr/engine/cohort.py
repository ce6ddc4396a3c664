"""A cohort of inputs on an executor: one task per input, the model loaded once per worker.

:func:`segment_cohort` is ``ircr segment --cluster/--shard`` and its Python API. Each input is
one task of an :class:`~ircr.executor.base.Executor` (serial, or Dask distributed: a
``LocalCluster`` or an existing scheduler). The worker loads the model once (a
:class:`~ircr.executor.base.WorkerSetup` recipe: the model folder and the loading options,
never the weights, go to the workers) and writes the input's outputs itself with
:meth:`NucleusSegmenter.process`, atomically as in the serial mode, so a task that runs twice
(its worker died) does no harm.

Before anything is submitted, inputs whose outputs are complete are skipped here with
``skip_done`` (no task, no model) and existing outputs are refused without ``overwrite`` or
``skip_done``. A failing input becomes a ``failed`` row with its reason; the others finish.
At the end the cohort summary (``ircr_summary.csv/.json``, ``ircr_nuclei_all.csv``;
:mod:`ircr.engine.folder_outputs`) is written, except for a shard (``shard=(I, N)``: a
deterministic 1/N of the inputs), whose summary :func:`ircr.engine.cohort_merge.merge_cohort`
rebuilds once every shard is done.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ircr.engine.folder_outputs import failed_row, summary_row, write_folder_outputs
from ircr.engine.inputs import check_input_file, output_stem
from ircr.engine.outputs import check_outputs, finished_summary, output_files, output_names
from ircr.engine.packaged import resolve_model
from ircr.errors import IrcrError, file_error
from ircr.executor import Executor, Outcome, WorkerSetup, open_executor


@dataclass(frozen=True)
class CohortInput:
    """One input file, its output sub-folder (relative to OUT) and its summary-row name."""

    path: Path
    sub: Path = Path(".")

    @property
    def image(self) -> str:
        """The ``image`` column: the sub-folder and the file name (as in serial runs)."""
        return str(self.sub / self.path.name)


@dataclass(frozen=True)
class SegmentJob:
    """What every task needs besides its input (plain values, sent to the workers)."""

    out: Path
    outputs: tuple[str, ...]
    mpp: float | None = None
    tissue: bool = True
    overwrite: bool = False
    skip_done: bool = False
    force: bool = False  # segment inputs that do not look like brightfield H&E


@dataclass
class CohortResult:
    """Rows of the cohort summary (input order) and what was written.

    Attributes:
        rows: one :func:`ircr.engine.folder_outputs.summary_row` per input, ``status``
            ``done``, ``skipped`` or ``failed`` (with ``error``).
        written: the cohort summary files (none for a shard).
        wall_s: seconds of the whole run; executor: its one-line description.
    """

    rows: list[dict[str, Any]]
    written: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    executor: str = ""

    def count(self, status: str) -> int:
        """Inputs with this status."""
        return sum(1 for r in self.rows if r.get("status") == status)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(image, reason) of every failed input."""
        return [(r["image"], str(r.get("error"))) for r in self.rows
                if r.get("status") == "failed"]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 1 <= I <= N (None stays None).

    Raises:
        IrcrError: anything else.
    """
    if text is None:
        return None
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or \
            not 1 <= int(i) <= int(n):
        raise IrcrError(f"--shard: expected I/N with 1 <= I <= N (e.g. 2/8), got '{text}'")
    return int(i), int(n)


def select_shard(items: Sequence[CohortInput], shard: tuple[int, int] | None
                 ) -> list[CohortInput]:
    """Shard I of N: every N-th input, from the I-th, in the order of the ``image`` names.

    The order does not depend on the order of the arguments, so every array task given the
    same inputs gets a disjoint share and together they cover every input once.
    """
    if shard is None:
        return list(items)
    i, n = shard
    return sorted(items, key=lambda it: it.image)[i - 1::n]


def build_segmenter(**kwargs: Any) -> Any:
    """A worker's model (:func:`ircr.engine.segmenter.load_model` with ``kwargs``)."""
    from ircr.engine.segmenter import load_model

    return load_model(**kwargs)


def model_setup(model: str | Path | None, options: dict[str, Any]) -> WorkerSetup:
    """The workers' model recipe; its key changes with the folder's files (a retrained model
    in the same folder is loaded again on a long-lived cluster)."""
    folder = resolve_model(model)
    files = sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                   for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    key = f"segmenter:{folder.resolve()}:{files}:{sorted(options.items())}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return WorkerSetup(f"segmenter-{digest}", build_segmenter,
                       {"path": str(folder), **options})


def segment_task(seg: Any, task: tuple[CohortInput, SegmentJob]) -> dict[str, Any]:
    """Segment one input on a worker: its summary dict plus the warnings raised.

    The driver refused existing outputs before submitting (:func:`_done_before`), so files
    found here were written by this job: an earlier attempt of this task whose worker died
    mid-way (the scheduler runs it again). They are replaced, not an error.
    """
    item, job = task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = seg.process(item.path, job.out / item.sub, outputs=list(job.outputs),
                              mpp=job.mpp, tissue=job.tissue, progress=False,
                              overwrite=True, skip_done=job.skip_done,
                              clean_temps=False, force=job.force)
    return {"summary": summary, "warnings": sorted({str(w.message) for w in caught})}


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _done_before(item: CohortInput, job: SegmentJob) -> dict[str, Any] | None:
    """The finished summary of ``item`` (``skip_done``), or None; refuses existing outputs."""
    files = output_files(job.out / item.sub, output_stem(item.path), list(job.outputs))
    if job.skip_done:
        return finished_summary(files)
    if not job.overwrite:
        for f in files.values():
            if f.exists():
                raise file_error(f, "output exists (pass --overwrite to replace it or "
                                    "--skip-done to skip finished inputs)")
    return None


class _Progress:
    """``[done/total] image: result; ETA`` lines from the processed inputs' rate."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.done, self.t0 = total, log, 0, time.perf_counter()

    def __call__(self, item: CohortInput, row: dict[str, Any], worker: str) -> None:
        self.done += 1
        left = self.total - self.done
        rate = (time.perf_counter() - self.t0) / self.done
        eta = f"; ETA {_fmt_s(rate * left)}" if left else ""
        if row["status"] == "failed":
            what = f"FAILED: {row['error']}"
        else:
            what = f"{row['n_nuclei']} nuclei in {row['seconds']:.1f} s"
        where = f" ({worker})" if worker else ""
        self.log(f"[{self.done}/{self.total}] {item.image}: {what}{where}{eta}")


def _row(item: CohortInput, job: SegmentJob, out: Outcome,
         log: Callable[[str], None]) -> dict[str, Any]:
    if not out.ok:
        return failed_row(item.image, str(out.error), job.out / item.sub)
    for note in out.value["warnings"]:
        log(f"warning: {item.image}: {note}")
    return summary_row(item.image, out.value["summary"], out.seconds, job.out / item.sub)


def _as_inputs(inputs: Sequence[Any]) -> list[CohortInput]:
    items = [it if isinstance(it, CohortInput) else
             CohortInput(Path(it[0]), Path(it[1])) if isinstance(it, tuple) else
             CohortInput(Path(it)) for it in inputs]
    for it in items:
        check_input_file(it.path)
    return items


def segment_cohort(inputs: Sequence[Any], out: str | Path, model: str | Path | None = None,
                   *, client: Any = None, cluster: str | None = None,
                   executor: Executor | None = None, threads: int | None = None,
                   outputs: Sequence[str] | None = None, mpp: float | None = None,
                   tissue: bool = True, overwrite: bool = False, skip_done: bool = False,
                   shard: tuple[int, int] | None = None, force: bool = False,
                   load_options: dict[str, Any] | None = None,
                   log: Callable[[str], None] = print) -> CohortResult:
    """Segment many inputs, one task each, and write the cohort summary.

    Args:
        inputs: image/slide files, ``(file, output sub-folder)`` pairs or
            :class:`CohortInput`.
        out: output folder (per-input outputs under ``out / sub``).
        model: model folder or packaged name (None: ``default``).
        client, cluster, executor: where to run: a ``distributed.Client``, a ``--cluster``
            value (``local:N``, ``tcp://HOST:PORT``, scheduler file) or an
            :class:`~ircr.executor.base.Executor`; none of them: serially in this process.
        threads: torch threads per Dask worker (see :func:`ircr.executor.open_executor`).
        outputs, mpp, tissue, overwrite, skip_done: as :meth:`NucleusSegmenter.process`.
        shard: (I, N): only shard I of N (:func:`select_shard`); no cohort summary then.
        load_options: keyword arguments of :func:`ircr.engine.segmenter.load_model` (device,
            batch_size, window, ...), applied on every worker.
        log: progress lines (``[done/total] image: ...; ETA``).

    Raises:
        IrcrError: bad options, a missing input, existing outputs (without ``overwrite`` or
            ``skip_done``), an unreachable cluster. A failing input does not raise: its row
            has ``status: failed`` and ``error``.
    """
    t0 = time.perf_counter()
    names = list(output_names() if outputs is None else outputs)
    check_outputs(names)
    job = SegmentJob(Path(out), tuple(names), mpp, tissue, overwrite, skip_done, force)
    items = select_shard(_as_inputs(inputs), shard)
    setup = model_setup(model, load_options or {})
    rows: list[dict[str, Any] | None] = [None] * len(items)
    todo = []
    for k, item in enumerate(items):
        done = _done_before(item, job)
        if done is not None:
            rows[k] = summary_row(item.image, {**done, "skipped": True}, 0.0,
                                  job.out / item.sub)
        else:
            todo.append(k)
    if len(todo) < len(items):
        log(f"{len(items) - len(todo)} input(s) done before, skipped (--skip-done)")
    where = ""
    if todo:
        where = _run(todo, items, job, setup, rows, executor, client, cluster, threads, log)
    final = [r for r in rows if r is not None]
    result = CohortResult(final, wall_s=time.perf_counter() - t0, executor=where)
    if shard is None:
        result.written = write_folder_outputs(job.out, final)
    return result


def _run(todo: list[int], items: list[CohortInput], job: SegmentJob, setup: WorkerSetup,
         rows: list[dict[str, Any] | None], executor: Executor | None, client: Any,
         cluster: str | None, threads: int | None, log: Callable[[str], None]) -> str:
    """Run the ``todo`` items on the executor, filling ``rows``; its description."""
    own = executor is None
    ex = executor or open_executor(cluster, client, threads)
    try:
        where = ex.describe()
        log(f"{len(todo)} input(s) on {where}")
        progress = _Progress(len(todo), log)
        tasks = [(items[k], job) for k in todo]
        for out in ex.map(segment_task, tasks, setup):
            k = todo[out.index]
            rows[k] = _row(items[k], job, out, log)
            progress(items[k], rows[k] or {}, out.worker)
    finally:
        if own:
            ex.close()
    return where
