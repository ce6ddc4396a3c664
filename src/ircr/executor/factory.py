"""``--cluster`` values and the executor they open (the one place segment and experiment ask).

* none: :class:`~ircr.executor.serial.SerialExecutor` (this process);
* ``local`` / ``local:N``: a Dask ``LocalCluster`` of N worker processes (default: one per
  GPU, else one per CPU core);
* ``tcp://HOST:PORT`` (or ``tls://``, ``ucx://``): an existing Dask scheduler;
* ``PATH.json``: a Dask scheduler file (``dask scheduler --scheduler-file PATH.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.executor.base import Executor

SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def parse_cluster(value: str, key: str = "--cluster") -> tuple[str, Any]:
    """``("local", N)``, ``("address", URL)`` or ``("file", Path)`` from a ``--cluster`` value.

    Raises:
        IrcrError: anything else (one line naming ``key``).
    """
    text = value.strip()
    if text == "local" or text.startswith("local:"):
        n_text = text.partition(":")[2]
        if not n_text:
            return "local", _default_workers()
        if not n_text.isdigit() or int(n_text) < 1:
            raise IrcrError(f"{key}: local:N needs a worker count N >= 1, got '{value}'")
        return "local", int(n_text)
    if text.startswith(SCHEMES):
        return "address", text
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise IrcrError(f"{key}: scheduler file not found: {text}")
        return "file", Path(text)
    raise IrcrError(f"{key}: expected local:N, tcp://HOST:PORT or a Dask scheduler file "
                    f"(.json), got '{value}'")


def _default_workers() -> int:
    from ircr.executor.dask_cluster import gpu_count

    return gpu_count() or max(1, os.cpu_count() or 1)


def open_executor(cluster: str | None = None, client: Any = None,
                  threads: int | None = None) -> Executor:
    """The executor for a ``--cluster`` value or a ``distributed.Client`` (None: serial).

    Args:
        threads: torch threads per Dask worker (None: one per worker on a local cluster
            without GPUs sharing the cores, else the worker's own setting).
    """
    if threads is not None and threads < 1:
        raise IrcrError(f"--threads-per-worker: must be >= 1, got {threads}")
    if cluster is None and client is None:
        from ircr.executor.serial import SerialExecutor

        return SerialExecutor()
    from ircr.executor.dask_cluster import DaskExecutor

    if client is not None:
        return DaskExecutor(client=client, threads=threads)
    kind, target = parse_cluster(cluster or "")
    if kind == "local" and threads is None:
        threads = max(1, (os.cpu_count() or 1) // int(target))
    return DaskExecutor(kind, target, threads=threads)
