"""WBIS on many maps at once, optionally with a persistent worker pool.

OpenCV, scipy.ndimage and skimage's watershed release the GIL for most of their work, so a
thread pool gives real parallelism without copying arrays between processes; a process pool
is offered too (``backend="process"``). Pools are created once per (backend, workers) and
reused, because training calls this every iteration.
"""

from __future__ import annotations

import atexit
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams, wbis

_POOLS: dict[tuple[str, int], Executor] = {}


def _pool(backend: str, workers: int) -> Executor:
    key = (backend, workers)
    if key not in _POOLS:
        if backend == "thread":
            _POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wbis")
        elif backend == "process":
            _POOLS[key] = ProcessPoolExecutor(max_workers=workers)
        else:
            raise IrcrError(f"postproc.backend: must be 'thread' or 'process', got {backend!r}")
    return _POOLS[key]


@atexit.register
def shutdown_pools() -> None:
    """Stop every pool created by :func:`wbis_batch` (also run at interpreter exit)."""
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def wbis_batch(probs: np.ndarray, hvs: np.ndarray, params: WBISParams | None = None,
               workers: int = 0, backend: str = "thread") -> list[np.ndarray]:
    """Run :func:`wbis` on each of N maps.

    probs (N, H, W) float32 and hvs (N, 2, H, W) float32 (lists of per-map arrays work too)
    -> list of N (H, W) int32 instance maps. ``workers=0`` runs in the calling thread;
    ``workers>0`` uses a persistent pool of that many threads (or processes).
    """
    if len(probs) != len(hvs):
        raise IrcrError(f"wbis_batch: {len(probs)} probability maps but {len(hvs)} HV maps")
    if workers < 0:
        raise IrcrError(f"postproc.workers: must be >= 0, got {workers}")
    if workers == 0 or len(probs) <= 1:
        return [wbis(p, h, params) for p, h in zip(probs, hvs)]
    pool = _pool(backend, workers)
    params = params or WBISParams()
    return list(pool.map(wbis, list(probs), list(hvs), [params] * len(probs)))
