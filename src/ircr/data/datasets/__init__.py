"""Dataset readers and their registry.

Every reader is a function ``iter_<name>(root, **options) -> Iterator[Sample]`` that checks
the folder and options eagerly (errors surface at :func:`open_dataset`, not at the first
``next()``) and then reads one sample at a time. Samples follow
:class:`ircr.data.sample.Sample`: image (H, W, 3) uint8 RGB, inst (H, W) int32 (0 =
background) or None, meta with name/source/mpp/path (+ dataset-specific keys).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ircr.data.datasets.consep import iter_consep
from ircr.data.datasets.cpm15 import iter_cpm15
from ircr.data.datasets.folder import iter_folder
from ircr.data.datasets.lizard import iter_lizard
from ircr.data.datasets.monusac import iter_monusac
from ircr.data.datasets.monuseg import iter_monuseg
from ircr.data.datasets.pannuke import iter_pannuke
from ircr.data.sample import Sample
from ircr.errors import IrcrError


def _synthetic_reader() -> Callable[..., Iterator[Sample]]:
    try:
        from ircr.data.synthetic import iter_synthetic
    except ImportError as exc:
        raise IrcrError(f"dataset 'synthetic': generator unavailable ({exc})") from None
    return iter_synthetic  # type: ignore[no-any-return]


def iter_synthetic(root: str | Path | None = None, **options: Any) -> Iterator[Sample]:
    """Lazy entry for ``ircr.data.synthetic.iter_synthetic`` (imported on first use)."""
    return _synthetic_reader()(root, **options)


DATASETS: dict[str, Callable[..., Iterator[Sample]]] = {
    "monuseg": iter_monuseg,
    "cpm15": iter_cpm15,
    "consep": iter_consep,
    "pannuke": iter_pannuke,
    "monusac": iter_monusac,
    "lizard": iter_lizard,
    "folder": iter_folder,
    "synthetic": iter_synthetic,
}


def _check_options(name: str, fn: Callable[..., Any], root: Any, options: dict[str, Any]) -> None:
    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [p for p in list(sig.parameters)[1:]]
    for key in options:
        if key not in valid:
            raise IrcrError(f"dataset '{name}': unknown option '{key}' "
                            f"(valid options: {', '.join(valid) or 'none'})")


def open_dataset(name: str, root: str | Path | None, **options: Any) -> Iterator[Sample]:
    """Open dataset ``name`` at ``root`` and return an iterator of :class:`Sample`.

    Raises:
        IrcrError: unknown dataset name (listing valid names), unknown option, or any
            reader error (missing/empty folder, bad files).
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise IrcrError(f"unknown dataset '{name}' (valid: {', '.join(sorted(DATASETS))})")
    fn = _synthetic_reader() if key == "synthetic" else DATASETS[key]
    _check_options(key, fn, root, options)
    return fn(root, **options)


__all__ = ["DATASETS", "open_dataset"]
