"""Graceful stops and time-based checkpoints for the trainer.

On SIGINT (Ctrl-C) or SIGTERM (``kill``, batch schedulers) during :meth:`Trainer.run` the
trainer finishes the iteration in progress, writes ``checkpoints/last.pt`` and raises
:class:`TrainingStopped` (a ``KeyboardInterrupt``: ``ircr`` prints how to resume and exits
130). A second Ctrl-C aborts at once, without a checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; the message says how to resume."""


class StopRequest:
    """Context manager catching SIGINT/SIGTERM; ``requested`` names the first signal caught.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("aborted without a checkpoint (second Ctrl-C)")
            return  # a SIGTERM after the first request (an experiment's stop): said already
        self.requested = name
        print(f"\nircr train: {name} received; saving a checkpoint after the current iteration "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}


class CheckpointClock:
    """Says when ``minutes`` of wall time have passed since the last checkpoint (0 = never)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = float(minutes) * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        """True when a time-based checkpoint is due."""
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        """A checkpoint was just written."""
        self.last = time.monotonic()
