"""``--jobs N``: experiment runs in worker processes, with signals, checkpoints and lost workers.

Each run gets its own ``spawn`` process (at most ``N`` at a time); its result is what it leaves
on disk (``runs/<id>/metrics.json``), so nothing has to come back through a pipe and a dead
worker can break nothing but its own run.

* **Signals.** A SIGINT or SIGTERM to the experiment stops every worker: the parent closes
  the write end of a *stop pipe* whose read end every worker holds, and a thread in each
  worker, started once the worker's own handlers are set, waits on that pipe and then sends
  SIGTERM to its worker's main thread. A closed pipe stays closed, so a stop cannot be missed,
  whenever it comes (before a worker started, while it imports torch, while it trains). The
  worker's trainer then checkpoints at the next iteration and the worker exits (status
  :data:`EXIT_STOPPED`). No new run starts; the experiment waits for the workers and raises
  ``KeyboardInterrupt`` (the runner writes the report of what finished). A worker still
  running ``grace_s`` (:data:`STOP_GRACE_S`) after the stop is killed (its last checkpoint
  stays; the report shows the run incomplete); a second signal kills the workers at once.
* **Start.** The parent blocks SIGINT and SIGTERM in its main thread while it starts a worker
  (a blocked signal stays pending, nothing is lost); the worker inherits that mask through
  ``exec``, so a terminal's Ctrl-C that reaches it while it starts Python and imports torch
  waits, and runs its handler once the handlers are set: a clean stop, not a traceback.
  (Python's resource tracker, started by the first ``Process.start``, unblocks both signals
  after its own start; it is started before the mask is set. The earlier design ignored the
  signals in the parent across the start instead: a signal in those milliseconds was lost,
  and the experiment ran on.)
* **No orphans.** A worker's thread also watches its parent; when the parent dies (even
  ``kill -9``, which also closes the stop pipe) the worker stops the same way: checkpoint and
  exit.
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
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.experiment.status import run_status, write_json_atomic

EXIT_STOPPED = 130  # a worker stopped by a signal (after its trainer's checkpoint)
EXIT_ERROR = 2  # a worker whose run could not even start (one-line error in error.txt)
RETRIES = 1  # a lost worker is started again this many times
STOP_GRACE_S = 300.0  # after a stop, a worker still running this long is killed
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
    """A worker's stop: later signals (the terminal's Ctrl-C and the pipe's) are ignored."""
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


def _watch(stop: Any) -> None:
    """In a worker: SIGTERM our main thread once the stop pipe closes or the parent goes away.

    ``stop`` is the read end of the parent's stop pipe; it becomes readable (a byte, then end
    of file) when the parent stops or dies, and stays so: the thread cannot miss it.
    """
    parent = mp.parent_process()
    main = threading.main_thread().ident
    assert main is not None
    objects = [stop] + ([parent.sentinel] if parent is not None else [])

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # (born blocked already)
        wait(objects)
        signal.pthread_kill(main, signal.SIGTERM)  # to the main thread: wakes a blocking call

    threading.Thread(target=watch, daemon=True, name="ircr-stop-watch").start()


def _quiet() -> None:
    """Turn our handlers into Python no-ops (not SIG_IGN: a pending signal would raise)."""
    for s in _SIGNALS:
        signal.signal(s, _ignore)


def _child(run: RunFn, entry: dict[str, Any], run_dir: str, ctx: Any, stop: Any) -> None:
    """Worker body: signal set-up, the run, and an exit status the parent understands.

    SIGINT and SIGTERM are blocked since the worker's birth (:func:`_start`); a signal that
    came while it started is pending and runs :func:`_interrupt_once` at the unblock.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # the watch thread inherits the mask
    for s in _SIGNALS:  # the trainer's StopRequest replaces these while it trains
        signal.signal(s, _interrupt_once)
    _watch(stop)  # after the handlers: its SIGTERM always finds one
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        run(entry, Path(run_dir), ctx)
        _quiet()  # the run is over: a late stop changes nothing
    except KeyboardInterrupt:
        sys.stdout.flush()
        os._exit(EXIT_STOPPED)
    except Exception as exc:  # noqa: BLE001 - the run could not start: one line, not a traceback
        _quiet()
        msg = str(exc) if isinstance(exc, IrcrError) else f"{type(exc).__name__}: {exc}"
        print(f"ircr: error: {msg}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            (Path(run_dir) / "error.txt").write_text(msg + "\n")
        os._exit(EXIT_ERROR)
    sys.stdout.flush()


class _Signals:
    """Parent-side handlers: the first signal closes the stop pipe, the second kills workers."""

    def __init__(self, running: dict[Any, Task], log: Callable[[str], None], stop_w: Any,
                 grace_s: float) -> None:
        self.running, self.log, self.stop_w, self.grace_s = running, log, stop_w, grace_s
        self.name: str | None = None
        self.count = 0
        self.at = 0.0  # time.monotonic() of the first signal
        self.said = False
        self.killed = False
        self._old: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.name is None:
            self.name, self.at = signal.Signals(signum).name, time.monotonic()
            with contextlib.suppress(OSError):  # readable even if a stray copy of the write
                self.stop_w.send_bytes(b"stop")  # end (a fork) keeps the pipe from its EOF
            self.stop_w.close()  # every worker, started or starting, sees it (module docstring)
        else:
            self.kill()

    def kill(self) -> None:
        """SIGKILL every running worker (their last checkpoints stay)."""
        self.killed = True
        for proc in list(self.running):
            with contextlib.suppress(OSError):
                if proc.pid:
                    os.kill(proc.pid, signal.SIGKILL)

    def tick(self) -> None:
        """Outside the handler: say once what happens; kill workers past the grace time."""
        if self.count and not self.said:
            self.said = True
            self.log(f"{self.name}: asking {len(self.running)} running worker(s) to checkpoint "
                     f"and stop (again to kill them at once; killed after {self.grace_s:g} s)")
        if self.name and self.running and not self.killed \
                and time.monotonic() - self.at > self.grace_s:
            for task in self.running.values():
                self.log(f"{task.ctx.index} {task.entry['run_id']}: did not stop within "
                         f"{self.grace_s:g} s of the {self.name}; killed (its last checkpoint "
                         "stays: the run is reported incomplete)")
            self.kill()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _start(task: Task, run: RunFn, stop: Any) -> Any:
    """Start a worker with SIGINT/SIGTERM blocked until its handlers are set (docstring)."""
    proc = mp.get_context("spawn").Process(
        target=_child, args=(run, task.entry, str(task.run_dir), task.ctx, stop),
        name=f"ircr-run-{task.entry['run_id']}")
    if threading.current_thread() is not threading.main_thread():
        proc.start()
        return proc
    resource_tracker.ensure_running()  # its start (first time) unblocks SIGINT/SIGTERM
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:  # a signal to us now is pending, not lost; our handler runs at the unblock
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
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


def run_in_processes(tasks: list[Task], jobs: int, run: RunFn, log: Callable[[str], None],
                     grace_s: float = STOP_GRACE_S) -> list[dict[str, Any]]:
    """Run the tasks in at most ``jobs`` worker processes (module docstring).

    ``grace_s``: after a stop, seconds a worker may take to checkpoint before it is killed.

    Raises:
        KeyboardInterrupt: after a SIGINT/SIGTERM, once every worker has ended.
    """
    queue: deque[Task] = deque(tasks)
    running: dict[Any, Task] = {}
    results: list[dict[str, Any]] = []
    stop_r, stop_w = mp.get_context("spawn").Pipe(duplex=False)
    try:
        with _Signals(running, log, stop_w, grace_s) as sig:
            _loop(queue, running, results, jobs, run, log, sig, stop_r)
    finally:
        stop_r.close()
        stop_w.close()
    if sig.name is not None:
        raise KeyboardInterrupt(sig.name)
    return results


def _loop(queue: deque[Task], running: dict[Any, Task], results: list[dict[str, Any]],
          jobs: int, run: RunFn, log: Callable[[str], None], sig: _Signals, stop: Any) -> None:
    """Start workers while there is room and no stop, collect them as they end."""
    while (queue and sig.name is None) or running:
        while queue and sig.name is None and len(running) < jobs:
            task = queue.popleft()
            running[_start(task, run, stop)] = task
        ready = wait([p.sentinel for p in running], timeout=0.5)
        sig.tick()
        for proc in [p for p in running if p.sentinel in ready]:
            proc.join()
            task = running.pop(proc)
            doc = _finished(task, proc, sig.name is not None, queue, log)
            if doc is not None:
                results.append(doc)
