"""Pieces shared by training stages that run outside the trainer's loop (the BASS stages).

* :func:`stage_seed`: a stage's random draws come from its own seed, not from whatever the
  global generators hold when it starts. A stage resumed after an interruption elsewhere (a
  stopped stage 2 skips stage 1's training, which would have advanced the global torch
  generator) then builds and trains exactly what an uninterrupted run does.
* :func:`stage_bar`: a progress bar with ETA (tqdm, stderr), or nothing with ``--no-progress``.
* :class:`StageStop`: Ctrl-C / SIGTERM in a stage without checkpoints (pseudo-labels, the
  threshold step): stop at the next item with a one-line message saying how to resume.
* :func:`cpu_threads`: torch threads for a CPU run from the machine's cores and load.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import zlib
from collections.abc import Iterator
from types import FrameType
from typing import Any

import numpy as np
import torch

from ircr.train.stop import StopRequest, TrainingStopped

__all__ = ["stage_seed", "stage_bar", "StageStop", "cpu_threads"]


def _stage_int(seed: int, stage: str) -> int:
    """A 63-bit seed from the run's ``seed`` and the stage name (independent streams)."""
    words = np.random.SeedSequence([int(seed) % 2**64, zlib.crc32(stage.encode("utf-8"))]
                                   ).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1])) & (2**63 - 1)


@contextlib.contextmanager
def stage_seed(seed: int, stage: str, device: torch.device) -> Iterator[int]:
    """Seed torch (CPU and ``device``), numpy and python from ``(seed, stage)`` for the
    block, and give the global generators back their previous state afterwards.

    Yields the stage's integer seed. A checkpoint restored inside the block (its RNG
    state) continues that stage's own stream.
    """
    s = _stage_int(seed, stage)
    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)
        try:
            yield s
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def stage_bar(enabled: bool, total: int, desc: str, initial: int = 0,
              unit: str = "it") -> Any:
    """A tqdm bar on stderr (elapsed, ETA, rate), or ``None`` when ``enabled`` is False."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                leave=True)


class StageStop(StopRequest):
    """:class:`~ircr.train.stop.StopRequest` for a stage that keeps no checkpoint: after a
    caught SIGINT/SIGTERM, :meth:`check` raises :class:`TrainingStopped` with ``hint``
    (how to resume; the stage then starts again from its beginning)."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__()
        self.what, self.hint = what, hint

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            super()._handle(signum, frame)  # a second Ctrl-C aborts at once
            return
        self.requested = signal.Signals(signum).name
        print(f"\nircr train: {self.requested} received; {self.what} stops after the current "
              "item (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    def __enter__(self) -> StageStop:
        super().__enter__()
        return self

    def check(self, done: int, total: int) -> None:
        """Raise TrainingStopped when a stop was requested (call between items)."""
        if self.requested is not None:
            raise TrainingStopped(f"{self.what}: stopped after {done}/{total} ({self.requested})"
                                  f"; this stage starts again from the beginning; {self.hint}")


def cpu_threads() -> tuple[int, str]:
    """Torch threads for a CPU run and why: ``OMP_NUM_THREADS`` when set; else 1 when the
    machine's cores are busy (1-minute load >= cores - 0.5); else one per core.

    Why 1 on a busy machine: torch's OpenMP pool splits every operator across its threads,
    and a thread that finishes first spins (busy-waits) for the others. When other processes
    share the cores, one thread is nearly always waiting for a core while its partner spins:
    a BASS training iteration on the 2-core machine at load ~9.5 took 22.8 s wall / 6.2 s CPU
    with 2 threads, 3.1 s / 0.9 s with 1, and 3.1 s / 1.0 s with 2 threads and
    ``OMP_WAIT_POLICY=PASSIVE`` (no spinning; docs/bass.md "Threads").
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), f"OMP_NUM_THREADS={env}: {env} thread{'s' if int(env) > 1 else ''}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores - 0.5:
        return 1, (f"load {load:.1f} on {cores} cores: 1 thread (busy cores; set "
                   "OMP_NUM_THREADS to choose)")
    return cores, f"load {load:.1f} on {cores} cores: {cores} thread{'s' if cores > 1 else ''}"
