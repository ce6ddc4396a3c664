"""The one compute-device and mixed-precision policy (training, evaluation, segmentation).

Devices: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
are accepted everywhere (``ircr train``'s ``train.device``, ``ircr evaluate``, ``ircr segment``,
``ircr tune-postproc``, ``ircr.load_model``); errors name the option or config key.

Autocast (:func:`amp_dtype`), one rule for every caller:

* ``off`` / ``False`` / ``None``: no autocast (float32).
* ``auto``: bf16 on a CUDA device that supports it, otherwise float32 (CPU and MPS never
  autocast unless asked). Training and ``ircr evaluate`` use this.
* ``on`` / ``True`` (an explicit request, e.g. ``ircr segment --amp``): bf16 where supported,
  fp16 on CUDA devices without bf16, bf16 on CPU/MPS.
* ``bf16`` / ``fp16``, or a ``torch.dtype``: that dtype.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ircr.errors import IrcrError

AMP_MODES = ("auto", "on", "off", "bf16", "fp16")
AmpSetting = bool | str | torch.dtype | None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(requested: str | torch.device | None = None,
                  key: str = "--device") -> torch.device:
    """Return the device to run on.

    Args:
        requested: ``None`` or ``"auto"`` picks CUDA, then MPS, then CPU; otherwise a torch
            device string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        key: the option or config key named in errors (``--device``, ``train.device``).

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
        raise IrcrError(f"{key}: unknown device '{requested}' "
                        "(use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IrcrError(f"{key}: '{requested}' requested but CUDA is not available "
                            "(install a CUDA build of torch or use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise IrcrError(f"{key}: '{requested}' requested but only "
                            f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps":
        if not _mps_available():
            raise IrcrError(f"{key}: '{requested}' requested but Apple MPS is not available")
    elif dev.type != "cpu":
        raise IrcrError(f"{key}: unsupported device type '{dev.type}' "
                        "(use auto, cpu, cuda or mps)")
    return dev


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def amp_dtype(mode: AmpSetting, device: torch.device) -> torch.dtype | None:
    """Autocast dtype on ``device`` for ``mode`` (the rule in the module docstring), or None.

    Raises:
        IrcrError: ``mode`` is a string other than those of :data:`AMP_MODES`.
    """
    if isinstance(mode, torch.dtype):
        return mode
    if mode is None or mode is False or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" and _bf16_supported(device) else None
    if mode is True or mode == "on":
        return torch.bfloat16 if _bf16_supported(device) else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    raise IrcrError(f"amp: unknown setting {mode!r} (use {', '.join(AMP_MODES)})")


def autocast(device: torch.device, dtype: torch.dtype | None
             ) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode under ``torch.inference_mode``; restore its mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def describe_device(device: torch.device) -> str:
    """One-line description, e.g. ``cuda:0 (NVIDIA H100, 79.1 GiB)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    return (f"cpu ({threads} thread{'s' * (threads != 1)}, "
            f"{cores} core{'s' * (cores != 1)})")
