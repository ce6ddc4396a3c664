"""The executor contract: run ``fn(state, item)`` over independent items, results as they finish.

A task is a module-level function ``fn(state, item)`` and a small picklable ``item``. The
``state`` is built once per worker process from a :class:`WorkerSetup` recipe (for
``ircr segment``: the loaded model); only the recipe travels to the workers, never what it
builds. :func:`run_task` is what a worker runs: it times the call and turns an exception into
:attr:`Outcome.error` (one line), so one failing item never stops the others.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ircr.errors import IrcrError

TaskFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class WorkerSetup:
    """Recipe for a worker's state: ``build(**kwargs)``, built once per process under ``key``.

    ``build`` must be a module-level function and ``kwargs`` plain values (they are pickled to
    every worker).
    """

    key: str
    build: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


_STATES: dict[str, Any] = {}
_LOCK = threading.Lock()


def worker_state(setup: WorkerSetup | None) -> Any:
    """This process's state for ``setup`` (built on first use; None without a setup)."""
    if setup is None:
        return None
    with _LOCK:
        if setup.key not in _STATES:
            _STATES[setup.key] = setup.build(**setup.kwargs)
        return _STATES[setup.key]


def forget_state(key: str) -> None:
    """Drop this process's state ``key`` (the serial executor after its run)."""
    with _LOCK:
        _STATES.pop(key, None)


@dataclass
class Outcome:
    """The result of one item: ``value`` or a one-line ``error``; seconds spent; where.

    Attributes:
        index: the item's position in the list given to :meth:`Executor.map`.
        worker: ``host:pid`` of the process that ran it ("" when it never ran).
    """

    index: int
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        """True when the task returned a value."""
        return self.error is None


def one_line(exc: BaseException) -> str:
    """The first line of an error message (with the type for non-ircr errors)."""
    msg = str(exc) if isinstance(exc, IrcrError) else f"{type(exc).__name__}: {exc}"
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return first or type(exc).__name__


def this_worker() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_task(fn: TaskFn, setup: WorkerSetup | None, index: int, item: Any) -> Outcome:
    """Run ``fn(state, item)`` here; an ``Exception`` becomes :attr:`Outcome.error`."""
    t0 = time.perf_counter()
    try:
        value = fn(worker_state(setup), item)
    except Exception as exc:  # noqa: BLE001 - recorded per item, the others go on
        return Outcome(index, error=one_line(exc), seconds=time.perf_counter() - t0,
                       worker=this_worker())
    return Outcome(index, value, seconds=time.perf_counter() - t0, worker=this_worker())


class Executor(ABC):
    """Runs tasks; a context manager (``close`` releases workers it started)."""

    name = "executor"

    @property
    @abstractmethod
    def workers(self) -> int:
        """Worker processes available now."""

    @abstractmethod
    def map(self, fn: TaskFn, items: Sequence[Any],
            setup: WorkerSetup | None = None) -> Iterator[Outcome]:
        """Run ``fn(state, item)`` for every item; yield each :class:`Outcome` as it finishes.

        A worker that dies has its item run again elsewhere (where the executor can); an item
        that cannot finish is yielded with its error. Leaving the loop early (an exception,
        Ctrl-C) cancels the items not started.
        """

    def describe(self) -> str:
        """One line for the log."""
        return f"{self.name}, {self.workers} worker(s)"

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
