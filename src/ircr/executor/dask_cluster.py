"""The Dask distributed executor: a ``LocalCluster`` of N worker processes, or an existing
scheduler (``dask scheduler`` / ``dask worker`` by hand, dask-jobqueue's ``SLURMCluster``, ...).

Every item is one Dask task (:func:`ircr.executor.base.run_task`). The per-worker state (the
model) is built by a worker plugin (:class:`WorkerInit`) on every worker that joins, from the
recipe only: the state itself never goes through the scheduler. When a worker dies, the
scheduler runs its task again on another worker (Dask's ``allowed-failures``, 3 by default);
a task whose workers keep dying is reported as failed (``KilledWorker``). A local cluster gets
one GPU per worker (``CUDA_VISIBLE_DEVICES``) when there are GPUs.

Needs ``dask[distributed]`` (``pip install "ircr[cluster]"``); imported only when asked for.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

from ircr.errors import IrcrError
from ircr.executor.base import (
    Executor,
    Outcome,
    TaskFn,
    WorkerSetup,
    one_line,
    run_task,
    worker_state,
)

try:
    from distributed import Client, LocalCluster, Nanny, as_completed
    from distributed.diagnostics.plugin import WorkerPlugin
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover - the extra is not installed
    Client = LocalCluster = Nanny = as_completed = None  # type: ignore[assignment,misc]
    WorkerPlugin = object  # type: ignore[assignment,misc]
    KilledWorker = RuntimeError  # type: ignore[assignment,misc]

RESUBMITS = 3  # a result lost with its worker is computed again at most this often

INSTALL_HINT = ('needs Dask distributed: pip install "dask[distributed]" '
                '(or the ircr[cluster] extra)')


class WorkerInit(WorkerPlugin):  # type: ignore[misc,valid-type]
    """Runs on every worker when it joins: torch and OpenCV threads, then ``setup``'s state.

    A failing setup is not raised here (it would only reach the worker's log): each task
    then builds the state again and reports the reason as its error. Idempotent: the name
    holds the recipe's key, so registering the same recipe again keeps the built state.
    """

    idempotent = True

    def __init__(self, setup: WorkerSetup | None, threads: int | None) -> None:
        self.recipe, self.threads = setup, threads

    def setup(self, worker: Any) -> None:
        """Set the threads and build the state (the model) once in this worker.

        OpenCV (WBIS) keeps its own pool of one thread per core; capped too, so N workers of
        ``threads`` each use N x ``threads`` cores, not more.
        """
        if self.threads:
            import cv2
            import torch

            torch.set_num_threads(self.threads)
            cv2.setNumThreads(self.threads)
        try:
            worker_state(self.recipe)
        except Exception:  # noqa: BLE001 - reported per task by run_task
            logging.getLogger(__name__).exception("ircr worker setup failed")


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA
        return 0


def worker_specs(n_workers: int, gpus: int, options: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """``SpecCluster`` worker specs: Nanny ``i`` with ``options``, seeing only GPU ``i % gpus``
    (``CUDA_VISIBLE_DEVICES``, set before the worker process starts) when ``gpus``."""
    specs = {}
    for i in range(n_workers):
        env = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus \
            else dict(options.get("env", {}))
        specs[i] = {"cls": Nanny, "options": {**options, "env": env}}
    return specs


def local_cluster(n_workers: int, gpus: int | None = None) -> Any:
    """A ``LocalCluster`` of ``n_workers`` single-task worker processes (Nanny-restarted).

    With ``gpus`` (default: the visible CUDA devices) worker ``i`` sees only GPU
    ``i % gpus`` (:func:`worker_specs`).
    """
    gpus = gpu_count() if gpus is None else gpus
    # one malloc arena in each worker process (set before it starts: glibc reads it once), so
    # tasks, which run in a worker thread, reuse the main heap (compat.keep_freed_memory)
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": "1"})
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    cluster.worker_spec.update(worker_specs(n_workers, gpus,
                                            dict(cluster.new_spec["options"])))
    cluster.scale(n_workers)
    return cluster


class DaskExecutor(Executor):
    """Tasks on a Dask cluster.

    Args:
        kind, target: from :func:`ircr.executor.factory.parse_cluster`: ``("local", N)``,
            ``("address", "tcp://HOST:PORT")`` or ``("file", scheduler.json)``; ignored with
            ``client``.
        client: an existing ``distributed.Client`` (its cluster stays open on ``close``).
        threads: torch threads per worker (None: leave the worker's setting).
    """

    name = "dask"

    def __init__(self, kind: str = "local", target: Any = 2, client: Any = None,
                 threads: int | None = None, timeout: float = 120.0) -> None:
        if Client is None:
            raise IrcrError(f"--cluster: {INSTALL_HINT}")
        self.threads, self._own_client = threads, client is None
        self.cluster: Any = None
        self.client: Any = None
        self.where = "a given client"
        if client is None:
            client = self._connect(kind, target, timeout)
        self.client = client

    def _connect(self, kind: str, target: Any, timeout: float) -> Any:
        self.where = f"a local cluster of {target} workers" if kind == "local" \
            else f"scheduler {target}"
        try:
            if kind == "local":
                self.cluster = local_cluster(int(target))
                self.client = Client(self.cluster)
                self.client.wait_for_workers(int(target), timeout=timeout)
                self.where = f"local cluster ({self.cluster.dashboard_link})"
                return self.client
            wait = min(timeout, 30.0)  # a scheduler that is up answers at once
            if kind == "file":
                return Client(scheduler_file=str(target), timeout=wait)
            return Client(str(target), timeout=wait)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise IrcrError(f"--cluster: cannot start or reach {self.where}: "
                            f"{one_line(exc)}") from None

    @property
    def workers(self) -> int:
        """Workers connected to the scheduler now."""
        return len(self.client.scheduler_info().get("workers", {}))

    def describe(self) -> str:
        """One line for the log."""
        return f"dask, {self.workers} worker(s), {self.where}"

    def map(self, fn: TaskFn, items: Sequence[Any],
            setup: WorkerSetup | None = None) -> Iterator[Outcome]:
        """Submit every item, yield outcomes as they complete; cancel the rest on exit.

        A result lost with its worker before it was fetched (the worker died right after
        the task) is submitted again, up to :data:`RESUBMITS` times; ``KilledWorker`` (the
        scheduler gave up after workers kept dying while running it) is the item's error.
        """
        if setup is not None or self.threads:
            name = f"ircr-init-{setup.key if setup else 'threads'}-{self.threads or 0}"
            self.client.register_plugin(WorkerInit(setup, self.threads), name=name)
        token = uuid.uuid4().hex[:8]
        done = as_completed()
        live: dict[str, tuple[Any, int, int]] = {}  # key -> (future, index, attempt)

        def submit(i: int, attempt: int) -> None:
            fut = self.client.submit(run_task, fn, setup, i, items[i], pure=False,
                                     key=f"ircr-{token}-{i}-{attempt}")
            live[fut.key] = (fut, i, attempt)
            done.add(fut)

        for i in range(len(items)):
            submit(i, 0)
        try:
            for fut in done:
                _, i, attempt = live.pop(fut.key)
                try:
                    out = fut.result()
                except KilledWorker as exc:
                    out = Outcome(i, error=one_line(exc))
                except (Exception, CancelledError) as exc:  # noqa: BLE001 - result lost
                    if attempt < RESUBMITS:
                        submit(i, attempt + 1)
                        fut.release()
                        continue
                    out = Outcome(i, error=one_line(exc))
                fut.release()
                yield out
        finally:
            if live:
                self.client.cancel([f for f, _, _ in live.values()])

    def close(self) -> None:
        """Close the client and the local cluster this executor started."""
        if self.client is not None and self._own_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
