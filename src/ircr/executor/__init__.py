"""Executors: run one function over many independent items, serially or on Dask distributed.

One abstraction (:class:`~ircr.executor.base.Executor`) used by ``ircr segment`` (one task
per input, :mod:`ircr.engine.cohort`) and ``ircr experiment`` (one task per run). Each
executor is a plug-in in its own module: :mod:`ircr.executor.serial` (this process) and
:mod:`ircr.executor.dask_cluster` (a Dask ``LocalCluster`` or an existing scheduler; imported
only when asked for, so Dask stays an optional dependency). :func:`open_executor` turns a
``--cluster`` value into one.
"""

from ircr.executor.base import Executor, Outcome, WorkerSetup, worker_state
from ircr.executor.factory import open_executor, parse_cluster

__all__ = ["Executor", "Outcome", "WorkerSetup", "open_executor", "parse_cluster",
           "worker_state"]
