"""``ircr experiment PROTOCOL --cluster SPEC``: every pending run is one executor task.

Runs go to the executor of :func:`ircr.executor.open_executor` (a Dask ``LocalCluster`` with
one GPU per worker where there are GPUs, or an existing scheduler); each task trains or resumes
its run folder exactly as ``--jobs`` does (:func:`ircr.experiment.runner.run_one`), so skip,
resume and the report are the same. A run whose workers kept dying (Dask's ``KilledWorker``)
gets ``status: failed`` with that reason in its ``metrics.json`` and is retried on the next
invocation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ircr.executor import open_executor
from ircr.executor.base import TaskFn
from ircr.io.atomic import atomic_write_text

RUN_KEYS = ("run_id", "method", "ratio", "split_seed", "train_seed")


def _lost(entry: dict[str, Any], run_dir: Path, error: str) -> dict[str, Any]:
    """The ``metrics.json`` of a run whose task could not finish (its worker died)."""
    doc = {**{k: entry.get(k) for k in RUN_KEYS}, "status": "failed", "error": error,
           "iterations": 0, "wall_s": 0.0}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "metrics.json", json.dumps(doc, indent=2) + "\n")
    return doc


def run_on_cluster(task: TaskFn, tasks: list[tuple[dict[str, Any], str, Any]],
                   cluster: str | None, client: Any, threads: int | None,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run ``task(None, (entry, run_dir, ctx))`` for every run; their ``metrics.json`` docs."""
    results: list[dict[str, Any]] = []
    t0 = time.time()
    with open_executor(cluster, client, threads) as ex:
        log(f"{len(tasks)} run(s) on {ex.describe()}")
        for k, out in enumerate(ex.map(task, tasks), 1):
            entry, run_dir, _ = tasks[out.index]
            doc = out.value if out.ok else _lost(entry, Path(run_dir), str(out.error))
            results.append(doc)
            left = len(tasks) - k
            eta = (time.time() - t0) / k * left
            log(f"[{k}/{len(tasks)}] {entry['run_id']}: {doc.get('status')}"
                + (f" ({doc.get('error')})" if doc.get("status") == "failed" else "")
                + (f"; ETA {int(eta // 60)}m{int(eta % 60):02d}s" if left else ""))
    return results
