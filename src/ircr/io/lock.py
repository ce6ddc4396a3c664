"""One writer per folder: an exclusive lock on a run or output folder.

``with FolderLock(folder, "ircr train"):`` holds ``folder/.ircr.lock`` for the block. A second
process asking for the same folder gets a one-line :class:`~ircr.errors.IrcrError` naming the
holder's pid, command and start time. On POSIX the lock is an ``fcntl.lockf`` record lock on
that file: the kernel drops it when the holder exits in any way (``kill -9`` included), so a
lock file left by a dead process is simply taken over. ``lockf`` locks belong to a process and
are not inherited by its children (DataLoader workers, ``--jobs`` workers). Without ``fcntl``
(Windows) the file is created exclusively and a file naming a dead pid is taken over.

Within one process the lock is re-entrant (a count per folder): an experiment's in-process run
and its trainer, or two trainers of one test, never refuse each other.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ircr.errors import IrcrError
from ircr.io.paths import ensure_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".ircr.lock"
_HELD: dict[str, tuple[int, int]] = {}  # real folder path -> (fd, count) of this process


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (another user's included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def read_holder(folder: str | Path) -> dict[str, Any]:
    """What the lock file of ``folder`` says about its holder (``{}`` when unreadable).

    Not for a folder this process holds: closing any descriptor of the file drops a ``lockf``.
    """
    try:
        doc = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts[0] += f" on {holder['host']}"
    if holder.get("command"):
        parts.append(str(holder["command"])[:80])
    if isinstance(holder.get("since"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(holder["since"])))
    return ", ".join(parts)


def _busy(folder: Path, what: str) -> IrcrError:
    holder: dict[str, Any] = {}
    for _ in range(20):  # the holder writes its pid right after taking the lock
        holder = read_holder(folder)
        if holder.get("pid"):
            break
        time.sleep(0.05)
    return IrcrError(f"{folder}: {what} is in use by another ircr process ({_describe(holder)}); "
                     "wait for it to finish or use another folder")


def _record(command: str) -> bytes:
    return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                        "since": time.time()}) + "\n").encode()


def _acquire_fcntl(path: Path, folder: Path, what: str, command: str) -> int:
    assert fcntl is not None
    for _ in range(50):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _busy(folder, what) from None
        try:  # the file we locked must still be the one at `path` (a releaser unlinks it)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _record(command), 0)
            return fd
        os.close(fd)
    raise IrcrError(f"{path}: cannot take the folder lock (it keeps changing)")


def _acquire_exclusive(path: Path, folder: Path, what: str, command: str) -> int:
    for _ in range(50):  # pragma: no cover - platforms without fcntl
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = int(read_holder(folder).get("pid") or 0)
            if pid and pid_alive(pid):
                raise _busy(folder, what) from None
            path.unlink(missing_ok=True)  # a dead holder's lock: take it over
            continue
        os.write(fd, _record(command))
        return fd
    raise IrcrError(f"{path}: cannot take the folder lock (it keeps changing)")


class FolderLock:
    """``with FolderLock(folder, what="run folder", command="ircr train"):`` one writer.

    ``acquire()`` / ``release()`` for lifetimes that are not one block. The folder is created.
    ``enabled=False`` makes both no-ops (a torchrun rank other than 0: rank 0 holds the lock).

    Raises:
        IrcrError: another live process holds the folder (message names its pid), or the
            folder cannot be created.
    """

    def __init__(self, folder: str | Path, what: str = "folder",
                 command: str | None = None, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.what = what
        self.command = command or " ".join(Path(a).name if i == 0 else a
                                           for i, a in enumerate(sys.argv))
        self._key: str | None = None

    def acquire(self) -> FolderLock:
        """Take the lock (re-entrant within this process)."""
        if self._key is not None or not self.enabled:
            return self
        ensure_dir(self.folder, self.what)
        key = str(self.folder.resolve())
        if key in _HELD:
            fd, n = _HELD[key]
            _HELD[key] = (fd, n + 1)
        else:
            path = self.folder / LOCK_NAME
            try:
                fd = (_acquire_fcntl if fcntl is not None else _acquire_exclusive)(
                    path, self.folder, self.what, self.command)
            except OSError as exc:
                raise IrcrError(f"{path}: cannot take the folder lock "
                                f"({exc.strerror or type(exc).__name__})") from None
            _HELD[key] = (fd, 1)
        self._key = key
        return self

    def release(self) -> None:
        """Give the lock back; the last release of this process removes the lock file."""
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        fd, n = _HELD[key]
        if n > 1:
            _HELD[key] = (fd, n - 1)
            return
        del _HELD[key]
        try:
            (Path(key) / LOCK_NAME).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def clear_stale_lock(folder: str | Path) -> bool:
    """Remove the lock file a dead holder left (``kill -9``); False when absent or held.

    Taking the lock proves nobody holds it; releasing it removes the file. A lock this process
    holds is left alone (opening its file again would drop the ``lockf``).
    """
    d = Path(folder)
    if not (d / LOCK_NAME).is_file() or str(d.resolve()) in _HELD:
        return False
    try:
        with FolderLock(d, command="stale-lock cleanup"):
            pass
    except IrcrError:
        return False
    return True
