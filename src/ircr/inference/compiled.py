"""``torch.compile`` for inference, falling back to the eager network with one message.

A compiled network is kept per model (weakly, so it goes when the model goes) and reused by
every later call. Compilation happens at the first forward; when it fails (no C++ compiler, an
unsupported operator, an old GPU for Triton), the error is reported once as one line and the
eager network runs from then on: outputs are the same either way up to floating-point
rounding (checked in tests/test_inference_speed.py within bf16 tolerance). channels_last and
compile are options of :func:`ircr.inference.predict.predict_maps`.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError

DEFAULT_BACKEND = "inductor"
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, CompiledOrEager]] = \
    weakref.WeakKeyDictionary()


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"


class CompiledOrEager:
    """Calls the compiled network; after a compile error, the eager one (reported once)."""

    def __init__(self, model: nn.Module, backend: str = "inductor",
                 warn: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.backend = backend
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.failed: str | None = None
        self._compiled: Any = None
        try:
            self._compiled = torch.compile(model, backend=backend)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.failed = _one_line(exc)
        self.warn(f"ircr: torch.compile (backend {self.backend}) failed, running the network "
                  f"eagerly: {self.failed}")

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        if self.failed is None:
            try:
                out: dict[str, Tensor] = self._compiled(x)
                return out
            except (IrcrError, torch.cuda.OutOfMemoryError):
                raise  # the input's or the device's problem, not the compiler's
            except Exception as exc:  # noqa: BLE001 - compile errors surface at the first call
                self._fail(exc)
        return self.model(x)


def compiled(model: nn.Module, backend: str | None = None) -> CompiledOrEager:
    """The (cached) compiled-or-eager runner of ``model`` (backend: DEFAULT_BACKEND)."""
    backend = backend or DEFAULT_BACKEND
    per_model = _CACHE.setdefault(model, {})
    if backend not in per_model:
        per_model[backend] = CompiledOrEager(model, backend)
    return per_model[backend]
