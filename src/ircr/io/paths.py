"""Output paths: file names derived from data, and output folders.

Names that come from data (image names in ``dataset.json``, input file names, reader
metadata) can hold ``/``, ``..``, drive letters or control characters. :func:`safe_name` turns
any such string into one plain file-name component and :func:`child_path` joins it to a folder,
checking that the result stays inside that folder, so no write escapes its output folder.
:func:`ensure_dir` creates an output folder with a one-line error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ircr.errors import IrcrError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"(?:_?\.{2,}_?)+")  # ".." runs (and the separators around them)
MAX_NAME = 120


def safe_name(name: str, default: str = "image") -> str:
    """One file-name component made of ``[A-Za-z0-9._-]`` (other runs, and ``..``, become ``_``).

    Leading/trailing dots and underscores are stripped (no ``..``, no hidden files), the
    result is at most 120 characters, and an empty result becomes ``default``.
    """
    stem = _DOTS.sub("_", _UNSAFE.sub("_", str(name))).strip("._")[:MAX_NAME].strip("._")
    return stem or default


def unique_name(name: str, taken: set[str], default: str = "image") -> str:
    """:func:`safe_name` made unique (case-insensitively) against ``taken``, which it updates."""
    stem = safe_name(name, default)
    base, k = stem, 2
    while stem.lower() in taken:
        stem, k = f"{base}_{k}", k + 1
    taken.add(stem.lower())
    return stem


def child_path(folder: str | Path, name: str) -> Path:
    """``folder / name``, refused unless it is a direct child of ``folder``.

    Raises:
        IrcrError: ``name`` is empty, absolute, or contains a path separator or ``..``.
    """
    d = Path(folder)
    candidate = d / name
    bad = (not name or name in (".", "..") or any(c in name for c in "/\\\0")
           or Path(name).is_absolute() or candidate.parent != d)
    if bad:
        raise IrcrError(f"{candidate}: file name '{name}' would leave the output folder {d}")
    return candidate


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) or raise a one-line error naming it.

    Raises:
        IrcrError: ``path`` is a file, lies under a file, or cannot be created or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise IrcrError(f"{p}: {what} is an existing file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise IrcrError(f"{p}: cannot create the {what} (a parent is a file)") from None
    except OSError as exc:
        raise IrcrError(f"{p}: cannot create the {what} ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise IrcrError(f"{p}: {what} is not writable")
    return p
