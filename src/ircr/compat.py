"""Every use of a third party's private API or private behaviour, in one place.

Each entry has a public fallback, and the choice between them is made by a probe on first use
(cached), never by a version string: a new release that moves or changes the private piece
makes the package take the public path, slower but identical. ``tests/test_compat.py`` pins
the installed versions (the private paths must be taken there and must equal the fallbacks on
real data) and runs every fallback.

* :func:`skimage_raw_watershed`: ``skimage.segmentation._watershed_cy.watershed_raveled``, the
  heap flood behind ``skimage.segmentation.watershed`` on raveled, zero-bordered arrays
  (WBIS builds them in place: about 5 ms saved per 1000x1000 map). Fallback: None, and the
  caller uses the public ``watershed``.
* :func:`watershed_seeds_by_value`: whether ``watershed`` pops seeds by image value (what
  WBIS's per-component flood relies on; skimage 0.2x does). Fallback: False, and WBIS uses
  the plain ``watershed`` call for every map.
* :data:`PERIMETER_WEIGHTS` + :func:`perimeter_weights_match`: the border-pixel code ->
  length table of ``skimage.measure.perimeter`` (4-connectivity; Benkrid & Crookes), an
  implementation detail of skimage copied to compute every nucleus' perimeter at once.
  Fallback: :func:`perimeters_public`, ``skimage.measure.perimeter`` per nucleus.
* :func:`is_batchnorm`: ``torch.nn.modules.batchnorm._BatchNorm``, the private base class of
  every BatchNorm layer. Fallback: the public BatchNorm classes.
* :func:`allow_huge_page_tensors` / :func:`huge_page_tensors`: PyTorch's
  ``THP_MEM_ALLOC_ENABLE`` environment variable (read once, at the first CPU allocation: its
  CPU allocator then asks the kernel for transparent huge pages, ``madvise(MADV_HUGEPAGE)``,
  for every block of 2 MB or more; PyTorch's CPU tuning guide documents it). Fallback: none
  needed, an unknown variable is ignored; the probe reads the tensor's mapping in
  ``/proc/self/smaps``.
* :func:`torchvision_problem`: not a private API but a probe of the same kind: torchvision is
  needed only by the Mask R-CNN (BASS) models and imported there, never at package import;
  this checks once, by importing it and running one empty ``nms``, that the installed
  torch/torchvision pair works, else returns one line naming both versions (the models
  package raises it as the user's error).

This module sits at the bottom of the layers (imports nothing of ircr); third-party modules
are imported where used, so importing it costs nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

# skimage.measure.perimeter: code = 1*centre + 2*(4-nbrs on the border) + 10*(diagonal nbrs
# on the border), over border pixels; even codes are never border pixels.
PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0
PERIMETER_WEIGHTS.setflags(write=False)


@functools.cache
def skimage_raw_watershed() -> Callable[..., None] | None:
    """skimage's raveled heap flood, if it exists and reproduces the public ``watershed``.

    Signature (skimage 0.2x): ``raw(image (P,) float64, seeds (S,) intp, offsets (4,) intp,
    mask (P,) int8, strides (2,) intp, compactness, output (P,) int32, wsl)`` on arrays with
    a one-pixel zero border, raveled. Probed on a small map with ties and several labels.
    """
    try:
        from skimage.segmentation._watershed_cy import watershed_raveled as raw
    except ImportError:
        return None
    from skimage.segmentation import watershed

    rng = np.random.default_rng(0)
    img = np.round(rng.random((9, 13)) * 4)
    mk = np.zeros(img.shape, np.int32)
    mk[rng.random(img.shape) < 0.15] = rng.integers(1, 4, size=1)[0]
    mk[0, 0], mk[8, 12], mk[4, 6] = 1, 2, 3
    mask = rng.random(img.shape) < 0.9
    mask[mk > 0] = True
    want = watershed(img, markers=mk, mask=mask)
    wp = img.shape[1] + 2
    dpad = np.pad(img, 1)
    out = np.pad(mk, 1)
    free = np.pad(mask & (mk == 0), 1)
    try:
        raw(dpad.ravel(), np.flatnonzero(out), np.array([-wp, -1, 1, wp], np.intp),
            free.view(np.int8).ravel(), np.array([wp, 1], np.intp), 0.0, out.ravel(), False)
    except Exception:  # another signature
        return None
    got = np.where(mask, out[1:-1, 1:-1], 0)
    return raw if np.array_equal(got, want) else None  # type: ignore[no-any-return]


@functools.cache
def watershed_seeds_by_value() -> bool:
    """True if the installed ``watershed`` pops seeds by image value (skimage 0.2x does)."""
    from skimage.segmentation import watershed

    img = np.array([[10.0, 5.0, 0.0]])
    got = watershed(img, markers=np.array([[1, 0, 2]], np.int32))
    return bool(got[0, 1] == 2)


def _perimeter_with_table(mask: np.ndarray) -> float:
    """skimage's 4-connected perimeter of one binary mask, computed with the copied table."""
    from scipy import ndimage as ndi

    m = mask.astype(np.uint8)
    border = m - ndi.binary_erosion(m, ndi.generate_binary_structure(2, 1), border_value=0)
    kernel = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]])
    code = ndi.convolve(border.astype(np.int64), kernel, mode="constant", cval=0)
    return float(PERIMETER_WEIGHTS[code[border > 0]].sum())


@functools.cache
def perimeter_weights_match() -> bool:
    """True if :data:`PERIMETER_WEIGHTS` reproduce ``skimage.measure.perimeter`` on probes."""
    from skimage.measure import perimeter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    probes = [(yy - 11.5) ** 2 / 60 + (xx - 11.5) ** 2 / 20 <= 1,  # ellipse: all codes
              rng.random((24, 24)) < 0.6, np.ones((5, 7), bool)]  # ragged; touching the edge
    return all(math.isclose(_perimeter_with_table(p), float(perimeter(p, neighborhood=4)),
                            rel_tol=1e-12, abs_tol=1e-12) for p in probes)


def perimeters_public(lab: np.ndarray, n: int) -> np.ndarray:
    """Perimeter of labels 1..n of ``lab`` with the public ``skimage.measure.perimeter``."""
    from scipy import ndimage as ndi
    from skimage.measure import perimeter

    out = np.zeros(n, np.float64)
    for k, sl in enumerate(ndi.find_objects(lab, max_label=n)):
        if sl is None:
            continue
        # one pixel of context so the erosion sees the same neighbourhood as on the full map
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        out[k] = perimeter(lab[sl] == k + 1, neighborhood=4)
    return out


def _public_batchnorm_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@functools.cache
def batchnorm_base() -> tuple[type, ...]:
    """``(torch.nn.modules.batchnorm._BatchNorm,)`` if it exists, else the public classes."""
    try:
        from torch.nn.modules.batchnorm import _BatchNorm
    except ImportError:
        return _public_batchnorm_types()
    return (_BatchNorm,)


def is_batchnorm(module: Any) -> bool:
    """Whether ``module`` is a BatchNorm layer (any dimension, sync, lazy)."""
    return isinstance(module, batchnorm_base())


_TORCH_INSTALL = "https://download.pytorch.org/whl/cpu"


def _version_of(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def torchvision_problem() -> str | None:
    """Why torchvision cannot be used with the installed torch (one line), or None if it can.

    Imports torchvision and runs ``torchvision.ops.nms`` on zero boxes: a torchvision built
    for another torch (e.g. ``+cu130`` next to a ``+cpu`` torch) fails one or the other.
    """
    try:
        import torch
        import torchvision.ops

        torchvision.ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    except Exception as exc:  # ImportError, RuntimeError (operator does not exist), OSError
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        return (f"torchvision {_version_of('torchvision')} does not work with torch "
                f"{_version_of('torch')} ({type(exc).__name__}: {reason}); install a matching "
                f"pair, e.g. pip install --force-reinstall torch torchvision --index-url "
                f"{_TORCH_INSTALL} (CPU)")
    return None



# glibc mallopt parameters (malloc.h) and glibc's own defaults for them
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
M_ARENA_MAX = -8
_KEEP = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20, _M_TOP_PAD: 256 << 20}
# and, where the calling thread allocates from the main heap: no mmap for large blocks
_KEEP_HEAP = {_M_MMAP_MAX: 0, M_ARENA_MAX: 1}
_GLIBC_DEFAULT = {_M_MMAP_THRESHOLD: 128 << 10, _M_TRIM_THRESHOLD: 128 << 10,
                  _M_TOP_PAD: 128 << 10, _M_MMAP_MAX: 65536}


def keep_freed_memory(keep: bool = True) -> bool:
    """Let glibc keep freed heap memory for reuse instead of returning it to the kernel.

    CPU inference allocates and frees window-sized tensors at every window; with glibc's
    defaults they come back from the kernel as fresh zeroed pages, and system time rivals the
    network's own (docs/benchmarks.md). ``keep=True``, for tiles and images: freed memory
    kept up to 256 MB (trim threshold and top pad) and, when called from the main thread or
    in a process started with ``MALLOC_ARENA_MAX=1`` (the Dask workers of
    :func:`ircr.executor.dask_cluster.local_cluster`), no ``mmap`` for large blocks
    (``M_MMAP_MAX`` 0: a 1064 px window's activations are hundreds of MB, above any mmap
    threshold glibc allows, so they were unmapped at every free) and one arena. Measured:
    about 2x faster per tile with 2 threads, 4-10x less system time; peak RSS 3.1-3.6 GB
    instead of 2.3 GB for a 1000² tile (the heap keeps its fragments). A thread with its own
    arena (created before this call) gets no gain from it and ran slower, hence the condition.
    ``keep=False``: glibc's default values again (the arena cap is left as set), for the
    streamed slide path, whose peak RSS must stay bounded. No-op (False) where the C library
    is not glibc.
    """
    import os
    import threading

    values = dict(_KEEP if keep else _GLIBC_DEFAULT)
    if keep and (threading.current_thread() is threading.main_thread()
                 or os.environ.get("MALLOC_ARENA_MAX") == "1"):
        values.update(_KEEP_HEAP)
    return mallopt(values)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library (ctypes), looked up once: ``find_library`` runs ``ldconfig``."""
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def mallopt(values: dict[int, int]) -> bool:
    """glibc ``mallopt(param, value)`` for each item; False where one fails or the C library
    is not glibc."""
    try:
        libc = _libc()
        return all(bool(libc.mallopt(opt, val)) for opt, val in values.items())
    except (OSError, AttributeError):
        return False


THP_ENV = "THP_MEM_ALLOC_ENABLE"


def allow_huge_page_tensors() -> bool:
    """Ask PyTorch to back large CPU tensors with transparent huge pages, unless the user
    chose (``THP_MEM_ALLOC_ENABLE`` already set, e.g. to 0). Called where inference loads a
    model folder (the engine's ``load_model``, ``ircr evaluate``, ``ircr tune-postproc``),
    not by training: a CPU training step of the packaged lite
    model (batch 8 of 128 px) ran 0.8x as fast with it.

    PyTorch reads the variable once, at its first CPU allocation, so this acts only if no
    tensor was made before; :func:`huge_page_tensors` tells whether it did. Why: CPU
    inference allocates window-sized activations (100s of MB) at every layer; glibc maps each
    with ``mmap`` and unmaps it on free, and the kernel faults it in 4 KB page by page; with
    huge pages 2 MB at a time: the packaged model's 768 px window (a slide tile) ran
    1.8-3.0x faster at the same peak RSS (docs/benchmarks.md). The process's environment, and
    so its children's, keeps the setting. Returns whether the variable now asks for it.
    """
    import os

    os.environ.setdefault(THP_ENV, "1")
    return os.environ[THP_ENV].strip() not in ("", "0")


@functools.cache
def huge_page_tensors() -> bool:
    """Whether this process's large CPU tensors are advised into transparent huge pages.

    Probed once: a 64 MB tensor's mapping in ``/proc/self/smaps`` must be ``THPeligible``.
    True whenever the kernel's THP mode is ``always``; with ``madvise`` (the common default)
    only if PyTorch read ``THP_MEM_ALLOC_ENABLE=1``; False with ``never`` and on other
    systems.
    """
    import torch

    t = torch.empty(64 << 20, dtype=torch.uint8)
    addr = t.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head == "THPeligible:":
                    return line.split()[1] == "1"
    except OSError:
        pass
    return False
