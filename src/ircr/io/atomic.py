"""Atomic file writes: a file either holds its complete new content or does not change.

Every writer of the package goes through :func:`atomic_write` (or :class:`AtomicPath` for
streaming writers): the content goes to a temporary file in the destination folder named
``.<name>.ircr-tmp-<pid>-<token>``, is flushed and fsynced, gets the permissions a plain
``open()`` would give (``0o666 & ~umask``, not mkstemp's 0600) and is moved over the
destination with :func:`os.replace`; the folder is fsynced too, so the rename survives a power
cut. Any error (or interrupt) removes the temporary file; a ``kill -9`` leaves it behind, and
:func:`clean_stale_temps` removes such leftovers of dead processes on the next start (also
the temporary names of older ircr versions: ``.last.pt.tmp-<pid>``, ``.weights.pt.<x>.tmp``);
:func:`clean_stale_temp_dirs` does the same for folders written under a temporary name.

Write errors (folder not writable, disk full, a file where a folder should be) become one-line
:class:`~ircr.errors.IrcrError` naming the destination.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ircr.errors import IrcrError

TMP_MARK = ".ircr-tmp-"
# new-style temp names, and the two patterns of earlier versions (checkpoint, model folder)
_STALE = (
    re.compile(r"^\..+\.ircr-tmp-(?P<pid>\d+)-[0-9a-f]+$"),
    re.compile(r"^\..+\.tmp-(?P<pid>\d+)$"),
    re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$"),
)


def write_error(path: str | Path, exc: OSError, what: str = "cannot write") -> IrcrError:
    """One-line error ``"<path>: cannot write (<reason>)"`` for an OSError."""
    reason = exc.strerror or type(exc).__name__
    return IrcrError(f"{path}: {what} ({reason})")


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask(x) is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a newly created file under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name next to ``path`` (recognised by :func:`clean_stale_temps`)."""
    p = Path(path)
    return p.with_name(f".{p.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the umask permissions and move it onto ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it onto ``path`` atomically.

    Raises:
        IrcrError: the folder is missing or not writable, the disk is full, ... (names ``path``).
    """
    p = Path(path)
    with AtomicPath(p) as tmp:
        write(tmp)
    return p


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda t: t.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class AtomicPath:
    """``with AtomicPath(dest) as tmp:`` write ``tmp``; on success it replaces ``dest``.

    For streaming writers use :meth:`open` / :meth:`commit` / :meth:`abort` directly. An
    exception (or interrupt) inside the block removes the temporary file and leaves ``dest``
    as it was. OSErrors become :class:`IrcrError` naming ``dest``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)

    def __enter__(self) -> Path:
        return self.tmp

    def commit(self) -> None:
        """Move the finished temporary file onto the destination."""
        try:
            commit(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        except BaseException:  # interrupted while committing
            self.abort()
            raise

    def abort(self) -> None:
        """Remove the temporary file (the destination is untouched)."""
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.commit()
            return
        self.abort()
        if isinstance(e, OSError) and not isinstance(e, IrcrError):
            raise write_error(self.path, e) from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files of interrupted atomic writes in ``folder`` (not recursive).

    A temp whose name holds a process id is removed when that process is gone; the model
    folder temps of older versions (``.weights.pt.<x>.tmp``, no owner) are always removed, and
    so is a folder lock (``.ircr.lock``, :mod:`ircr.io.lock`) that no live process holds.
    Returns the removed paths.
    """
    from ircr.io.lock import LOCK_NAME, clear_stale_lock

    d = Path(folder)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    if clear_stale_lock(d):
        removed.append(d / LOCK_NAME)
    for entry in d.iterdir():
        name = entry.name
        if not name.startswith(".") or not entry.is_file():
            continue
        for pattern in _STALE:
            m = pattern.match(name)
            if m is None:
                continue
            pid = m.groupdict().get("pid")
            if pid is not None and _pid_alive(int(pid)):
                break
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
            break
    return removed


def clean_stale_temp_dirs(path: str | Path) -> list[Path]:
    """Remove temporary folders ``.<name>.ircr-tmp-<pid>-<token>`` of ``path`` whose
    process is gone (a folder written under a temporary name and renamed once, killed
    before the rename). Returns the removed paths."""
    import shutil

    p = Path(path)
    removed: list[Path] = []
    if not p.parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(p.name)}{re.escape(TMP_MARK)}(?P<pid>\d+)-[0-9a-f]+$")
    for entry in p.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir() or entry.is_symlink() or _pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed
