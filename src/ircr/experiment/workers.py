"""``--jobs N``: experiment runs in worker processes, with signals, checkpoints and lost workers.

Each run gets its own ``spawn`` process (at most ``N`` at a time); its result is what it leaves
on disk (``runs/<id>/metrics.json``), so nothing has to come back through a pipe and a dead
worker can break nothing but its own run.

* **Signals.** A SIGINT or SIGTERM to the experiment is forwarded to every worker as one
  SIGTERM; a worker's trainer then checkpoints at the next iteration and the worker exits
  (status :data:`EXIT_STOPPED`). No new run starts; the experiment waits for the workers and
  raises ``KeyboardInterrupt`` (the runner writes the report of what finished). A second
  signal kills the workers at once (their last checkpoints stay). Workers are started with
  SIGINT and SIGTERM ignored (a disposition that survives ``exec``; a blocked mask does not)
  and install their own handlers once running, so a Ctrl-C while they import torch is a clean
  stop, not a traceback; a signal it missed while starting is found in a stop file the
  parent writes before forwarding. (A signal sent to a process may land on any of its
  threads, e.g. a BLAS pool's; Python then runs the handler when the main thread next runs
  Python code: a trainer does so every iteration.)
* **No orphans.** A worker watches its parent; when the parent dies (even ``kill -9``) the
  worker sends itself SIGTERM: checkpoint and exit.
* **Lost workers.** A worker that dies without writing ``metrics.json`` (killed, out of
  memory) is started again once (its run resumes from its last checkpoint); lost a second
  time, its run is recorded as ``failed`` and the other runs go on.

:func:`run_in_processes` is one executor of the runner (:func:`run_in_this_process` the other):
``executor(tasks, jobs, run, log) -> results``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.experiment.status import run_status, write_json_atomic

EXIT_STOPPED = 130  # a worker stopped by a signal (after its trainer's checkpoint)
EXIT_ERROR = 2  # a worker whose run could not even start (one-line error in error.txt)
RETRIES = 1  # a lost worker is started again this many times
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

RunFn = Callable[[dict[str, Any], Path, Any], dict[str, Any]]


@dataclass
class Task:
    """One run to do: its plan entry, its folder and its context (picklable)."""

    entry: dict[str, Any]
    run_dir: Path
    ctx: Any
    attempts: int = 0


def run_in_this_process(tasks: list[Task], jobs: int, run: RunFn,
                        log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run the tasks one after the other here (``--jobs 1``); SIGTERM acts like Ctrl-C."""
    with sigterm_as_interrupt():
        return [run(t.entry, t.run_dir, t.ctx) for t in tasks]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupt_once(signum: int, frame: Any) -> None:
    """A worker's stop: later signals (the terminal's Ctrl-C and our forward) are ignored."""
    for s in _SIGNALS:  # a Python no-op, not SIG_IGN: a signal already pending would raise
        signal.signal(s, _ignore)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignore(signum: int, frame: Any) -> None:
    return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` on SIGTERM in the main thread (a trainer still checkpoints)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _watch_parent() -> None:
    """In a worker: SIGTERM ourselves when the parent process goes away."""
    parent = mp.parent_process()
    if parent is None:
        return

    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # (born blocked already)
        wait([parent.sentinel])
        signal.pthread_kill(main, signal.SIGTERM)  # to the main thread: wakes a blocking call

    threading.Thread(target=watch, daemon=True, name="ircr-parent-watch").start()


def _child(run: RunFn, entry: dict[str, Any], run_dir: str, ctx: Any, stop_file: str) -> None:
    """Worker body: signal set-up, the run, and an exit status the parent understands."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # the watch thread inherits the mask
    for s in _SIGNALS:  # ignored since birth; the trainer's StopRequest replaces these later
        signal.signal(s, _interrupt_once)
    _watch_parent()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if Path(stop_file).exists():  # the stop came while signals were still ignored
            raise KeyboardInterrupt("stopped while starting")
        run(entry, Path(run_dir), ctx)
    except KeyboardInterrupt:
        sys.stdout.flush()
        os._exit(EXIT_STOPPED)
    except Exception as exc:  # noqa: BLE001 - the run could not start: one line, not a traceback
        msg = str(exc) if isinstance(exc, IrcrError) else f"{type(exc).__name__}: {exc}"
        print(f"ircr: error: {msg}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            (Path(run_dir) / "error.txt").write_text(msg + "\n")
        os._exit(EXIT_ERROR)
    sys.stdout.flush()


class _Signals:
    """Parent-side handlers: the first signal stops politely, the second kills the workers."""

    def __init__(self, running: dict[Any, Task], log: Callable[[str], None],
                 stop_file: Path) -> None:
        self.running, self.log, self.stop_file = running, log, stop_file
        self.name: str | None = None
        self.count = 0
        self.said = False
        self._old: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.name = self.name or signal.Signals(signum).name
        hard = self.count > 1
        with contextlib.suppress(OSError):
            self.stop_file.touch()  # before the forward: a worker still starting reads it
        for proc in list(self.running):
            with contextlib.suppress(OSError):
                if proc.pid:
                    os.kill(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)

    def report(self) -> None:
        """Say once (outside the handler: printing there can re-enter stdout) what happens."""
        if self.count and not self.said:
            self.said = True
            self.log(f"{self.name}: asking {len(self.running)} running worker(s) to checkpoint "
                     "and stop (again to kill them at once)")

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _start(task: Task, run: RunFn, stop_file: Path) -> Any:
    """Start a worker with SIGINT/SIGTERM ignored until its handlers are set (docstring)."""
    proc = mp.get_context("spawn").Process(
        target=_child, args=(run, task.entry, str(task.run_dir), task.ctx, str(stop_file)),
        name=f"ircr-run-{task.entry['run_id']}")
    if threading.current_thread() is not threading.main_thread():
        proc.start()
        return proc
    old = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
    try:  # a few ms in which a signal to this process is lost (the fork + exec)
        proc.start()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return proc


def _lost(task: Task, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _finished(task: Task, proc: Any, stopping: bool, queue: deque[Task],
              log: Callable[[str], None]) -> dict[str, Any] | None:
    """The result of an ended worker, or None (stopped, or queued again)."""
    status = run_status(task.run_dir)
    if status.get("status") in ("done", "failed"):
        return status
    code = proc.exitcode
    rid = task.entry["run_id"]
    if code == EXIT_STOPPED or stopping:
        return None
    if code == EXIT_ERROR:
        err = (task.run_dir / "error.txt")
        msg = err.read_text().strip().splitlines()[-1] if err.is_file() else "could not start"
        return _record_failed(task, msg)
    task.attempts += 1
    if task.attempts <= RETRIES:
        log(f"{task.ctx.index} {rid}: worker lost ({_lost(task, code)}); starting it again "
            "(it resumes from its last checkpoint)")
        queue.appendleft(task)
        return None
    log(f"{task.ctx.index} {rid}: worker lost again ({_lost(task, code)}); run marked failed")
    return _record_failed(task, f"worker process lost {task.attempts} times "
                                f"({_lost(task, code)})")


def _record_failed(task: Task, msg: str) -> dict[str, Any]:
    e = task.entry
    doc = {k: e[k] for k in ("run_id", "method", "ratio", "split_seed", "train_seed")}
    doc.update(status="failed", error=msg, iterations=run_status(task.run_dir).get("iterations", 0),
               wall_s=0.0)
    write_json_atomic(task.run_dir / "metrics.json", doc)
    return doc


def run_in_processes(tasks: list[Task], jobs: int, run: RunFn,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run the tasks in at most ``jobs`` worker processes (module docstring).

    Raises:
        KeyboardInterrupt: after a SIGINT/SIGTERM, once every worker has stopped.
    """
    queue: deque[Task] = deque(tasks)
    running: dict[Any, Task] = {}
    results: list[dict[str, Any]] = []
    stop_dir = Path(tempfile.mkdtemp(prefix="ircr-experiment-"))
    try:
        with _Signals(running, log, stop_dir / "stop") as sig:
            _loop(queue, running, results, jobs, run, log, sig)
    finally:
        shutil.rmtree(stop_dir, ignore_errors=True)
    if sig.name is not None:
        raise KeyboardInterrupt(sig.name)
    return results


def _loop(queue: deque[Task], running: dict[Any, Task], results: list[dict[str, Any]],
          jobs: int, run: RunFn, log: Callable[[str], None], sig: _Signals) -> None:
    """Start workers while there is room and no stop, collect them as they end."""
    while (queue and sig.name is None) or running:
        while queue and sig.name is None and len(running) < jobs:
            task = queue.popleft()
            running[_start(task, run, sig.stop_file)] = task
        ready = wait([p.sentinel for p in running], timeout=0.5)
        sig.report()
        for proc in [p for p in running if p.sentinel in ready]:
            proc.join()
            task = running.pop(proc)
            doc = _finished(task, proc, sig.name is not None, queue, log)
            if doc is not None:
                results.append(doc)
