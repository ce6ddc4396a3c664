"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), written with :func:`ircr.io.torchfile.save_torch` (temp file + fsync +
:func:`os.replace`; the one helper model folders use too), so a crash never leaves a
half-written ``last.pt``. A state holding a non-finite floating-point tensor is never written
(:func:`ircr.io.torchfile.first_nonfinite`): a checkpoint on disk is always a good one.
RNG states (python, numpy, torch CPU and CUDA) are converted to tensors/lists so they survive
``weights_only``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ircr.errors import IrcrError
from ircr.io.paths import ensure_dir
from ircr.io.torchfile import first_nonfinite, save_torch

FORMAT_VERSION = 1


class NonFiniteState(IrcrError):
    """A state to be saved holds NaN/inf (nothing was written); ``key`` names the tensor."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace).

    Raises:
        NonFiniteState: a tensor of ``state`` holds NaN/inf; nothing is written.
        IrcrError: the folder cannot be created or written (names the file).
    """
    p = Path(path)
    bad = first_nonfinite(state)
    if bad is not None:
        raise NonFiniteState(f"{p}: not written, tensor '{bad}' holds NaN or inf", key=bad)
    ensure_dir(p.parent, "checkpoint folder")
    save_torch(p, {"format_version": FORMAT_VERSION, **state})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise IrcrError(f"{p}: checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle, ...
        raise IrcrError(f"{p}: cannot read checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise IrcrError(f"{p}: not an ircr training checkpoint (format {FORMAT_VERSION})")
    return state


def capture_rng() -> dict[str, Any]:
    """RNG states of python ``random``, numpy's global generator and torch, as tensors."""
    version, py_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python_version": int(version),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_name": str(name),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    py = tuple(int(v) for v in state["python"].tolist())
    random.setstate((int(state["python_version"]), py, state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_name"],
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
