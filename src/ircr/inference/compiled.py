"""``torch.compile`` for inference, falling back to the eager network with one message.

A compiled network is kept per model (:mod:`ircr.inference.module_cache`: freed with the
model) and reused by every later call. Compilation happens at the first forward; when it
fails (no C++ compiler, an unsupported operator, an old GPU for Triton), the error is
reported once as one line and the eager network runs from then on: outputs are the same
either way up to floating-point rounding (checked in tests/test_inference_speed.py within
bf16 tolerance). channels_last and compile are options of
:func:`ircr.inference.predict.predict_maps`.

On CPU the inductor graph is built with *freezing* (``options={"freezing": True}``: the
weights become constants of the graph, so convolutions get oneDNN's pre-packed weights and
batch-norm folding) and one static graph per window shape (``dynamic=False``; the dynamic-shape
graph fails to build with freezing in torch 2.14). Measured on the packaged lite model, one
1088 px window on 2 threads: 1.9x faster than eager (docs/benchmarks.md). Frozen weights are
read at the first call, so the model's weights must not change after it: true of every
compiled use in ircr (a loaded model folder in the segmentation engine; training never
compiles through this module).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError
from ircr.inference.module_cache import cached

DEFAULT_BACKEND = "inductor"


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
            self._compiled = torch.compile(model, backend=backend, **compile_options(model,
                                                                                     backend))
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


def compile_options(model: nn.Module, backend: str) -> dict[str, Any]:
    """Extra ``torch.compile`` arguments: freezing and static shapes for inductor on CPU."""
    first = next(iter(model.parameters()), None)
    if backend == "inductor" and (first is None or first.device.type == "cpu"):
        return {"options": {"freezing": True}, "dynamic": False}
    return {}


def compiled(model: nn.Module, backend: str | None = None) -> CompiledOrEager:
    """The (cached) compiled-or-eager runner of ``model`` (backend: DEFAULT_BACKEND)."""
    chosen = backend or DEFAULT_BACKEND
    return cached(model, ("compiled", chosen), lambda: CompiledOrEager(model, chosen))
