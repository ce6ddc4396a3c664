"""Torch state files written atomically, with write errors as one-line errors.

The one way the package writes a ``torch.save`` file (training checkpoints, model-folder
weights): :func:`save_torch` goes through :func:`ircr.io.atomic.atomic_write` (temp file +
fsync + :func:`os.replace` + folder fsync), and a full disk surfaces as an ``OSError`` that
``atomic_write`` turns into ``"<file>: cannot write (No space left on device)"``.
:func:`first_nonfinite` finds NaN/inf tensors so that callers refuse to save a broken state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ircr.io.atomic import atomic_write

__all__ = ["first_nonfinite", "save_torch", "torch_save"]


def first_nonfinite(obj: Any, prefix: str = "") -> str | None:
    """Dotted key of the first floating-point tensor in ``obj`` holding NaN/inf, else None.

    ``obj`` is a tensor, a module (its parameters *and* buffers) or nested dicts/lists of them.
    """
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return prefix or "tensor"
        return None
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


class _RecordingFile:
    """File wrapper that keeps the OSError of a failed write (torch reports a bare
    RuntimeError), so a full disk becomes "<file>: cannot write (No space left on device)"."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.fh.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = exc
            raise


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` whose write errors are OSErrors (see :class:`_RecordingFile`)."""
    with open(path, "wb") as fh:
        rec = _RecordingFile(fh)
        try:
            torch.save(obj, rec)  # type: ignore[arg-type]
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            raise


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp + fsync + rename); returns the path."""
    return atomic_write(path, lambda tmp: torch_save(obj, tmp))
