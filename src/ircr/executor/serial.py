"""The serial executor: every item in this process, in order (no dependency, no workers)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ircr.executor.base import (
    Executor,
    Outcome,
    TaskFn,
    WorkerSetup,
    forget_state,
    run_task,
    worker_state,
)


class SerialExecutor(Executor):
    """Runs ``fn(state, item)`` here, one item after the other; the state is built once."""

    name = "serial"

    @property
    def workers(self) -> int:
        """Always one: this process."""
        return 1

    def describe(self) -> str:
        """One line for the log."""
        return "serial, this process"

    def map(self, fn: TaskFn, items: Sequence[Any],
            setup: WorkerSetup | None = None) -> Iterator[Outcome]:
        """Yield the outcome of each item in order (the state is dropped afterwards)."""
        worker_state(setup)  # a model that cannot load stops the run here, once
        try:
            for i, item in enumerate(items):
                yield run_task(fn, setup, i, item)
        finally:
            if setup is not None:
                forget_state(setup.key)
