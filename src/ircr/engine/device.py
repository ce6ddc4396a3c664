"""Compute-device selection (CUDA, Apple MPS, CPU) with a one-line report for the log."""

from __future__ import annotations

import os

import torch

from ircr.errors import IrcrError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """Return the device to run on.

    Args:
        requested: ``None`` or ``"auto"`` picks CUDA, then MPS, then CPU; otherwise a torch
            device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.

    Raises:
        IrcrError: the requested device is unknown or not available on this machine.
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    name = (requested or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise IrcrError(f"--device: unknown device '{requested}' "
                        "(use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IrcrError(f"--device: '{requested}' requested but CUDA is not available "
                            "(install a CUDA build of torch or use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise IrcrError(f"--device: '{requested}' requested but only "
                            f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps":
        if not _mps_available():
            raise IrcrError(f"--device: '{requested}' requested but Apple MPS is not available")
    elif dev.type != "cpu":
        raise IrcrError(f"--device: unsupported device type '{dev.type}' "
                        "(use auto, cpu, cuda or mps)")
    return dev


def amp_supported(device: torch.device) -> bool:
    """Whether mixed precision is used on ``device`` (CUDA only; CPU/MPS run float32)."""
    return device.type == "cuda"


def describe_device(device: torch.device) -> str:
    """One-line description, e.g. ``cuda:0 (NVIDIA H100, 79.1 GiB)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    cores = os.cpu_count() or 1
    return f"cpu ({torch.get_num_threads()} threads, {cores} cores)"
