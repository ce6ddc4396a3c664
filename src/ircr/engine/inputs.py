"""Input files of ``ircr segment``: supported types, checks, output stems, in-memory reading.

:func:`load_input` turns what a user passes to ``segment()`` (an (H, W, 3) uint8 array, an
image file, or a whole-slide file small enough for memory) into an :class:`InputImage` with
its pixel size (:func:`ircr.engine.resolution.resolve_mpp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ircr.engine.plausibility import check_brightfield, dark_reason
from ircr.engine.resolution import resolve_mpp
from ircr.errors import IrcrError, file_error
from ircr.io.image import IMAGE_SUFFIXES, probe_image, read_image
from ircr.io.wsi import (
    DICOM_SUFFIX,
    DICOM_UNSUPPORTED,
    TIFF_SUFFIXES,
    image_mpp,
    is_slide,
    non_rgb_reason,
    open_slide,
    slide_suffixes,
)

MAX_INMEMORY_PIXELS = 64_000_000  # segment() reads a slide whole only below this size


@dataclass
class InputImage:
    """An input read into memory: pixels, µm/px (None = unknown), its source, a name."""

    image: np.ndarray
    mpp: float | None
    mpp_source: str
    source: str


def supported_suffixes() -> set[str]:
    """Every file suffix ``ircr segment`` accepts (images, TIFFs, whole-slide formats;
    ``.dcm`` only where OpenSlide 4 or newer can read DICOM-WSI)."""
    return set(IMAGE_SUFFIXES) | slide_suffixes() | TIFF_SUFFIXES


def output_stem(path: Path) -> str:
    """File name without its extension(s) (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_input_file(path: Path) -> None:
    """One-line errors for a missing, empty or unsupported input file."""
    if not path.exists():
        raise file_error(path, "file not found")
    if path.is_dir():
        raise file_error(path, "is a folder (pass the folder to `ircr segment` or use files)")
    suffix = path.suffix.lower()
    if suffix == DICOM_SUFFIX and suffix not in supported_suffixes():
        raise file_error(path, DICOM_UNSUPPORTED)
    if suffix not in supported_suffixes():
        raise file_error(path, f"unsupported file type '{suffix or path.name}' (expected PNG, "
                               "JPEG, TIFF/OME-TIFF, SVS, NDPI or another whole-slide format)")
    if path.stat().st_size == 0:
        raise file_error(path, "file is empty (0 bytes)")


def preflight(path: Path, mpp: float | None = None, force: bool = False,
              need_mpp: bool = True) -> None:
    """Cheap checks of one input file before any model is loaded (``ircr segment``).

    A slide is opened (its pixel size is required unless ``mpp`` or not ``need_mpp``); an
    image's header is read; the metadata of either must describe RGB brightfield (unless
    ``force``; :func:`ircr.io.wsi.non_rgb_reason`). Pixels are not decoded, so a file broken
    further in is still found later, by the run itself.

    Raises:
        IrcrError: one line naming the file.
    """
    check_input_file(path)
    whole_slide = is_slide(path)
    if not whole_slide:
        probe_image(path)
    if not force:  # forced: the run warns once
        check_brightfield(str(path), non_rgb_reason(path, slide=whole_slide), False)
    if not whole_slide:
        return
    with open_slide(path, mpp=mpp) as slide:
        if slide.mpp is None and need_mpp:
            raise file_error(path, "no microns-per-pixel in the slide metadata; pass --mpp "
                                   "(mpp= in Python)")


def load_input(image_or_path: Any, mpp: float | None, model_mpp: float | None,
               force: bool = False) -> InputImage:
    """Read an array, image file or small slide for in-memory segmentation.

    Raises:
        IrcrError: a bad array, a missing/unsupported/empty file, a slide too large for
            memory (use ``process()`` / ``ircr segment``, which stream it), or an input that
            is not brightfield H&E (unless ``force``; :mod:`ircr.engine.plausibility`).
    """
    if isinstance(image_or_path, np.ndarray):
        img = image_or_path
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise IrcrError(f"image: expected (H, W, 3) uint8 RGB, got {img.dtype} array "
                            f"of shape {img.shape}")
        m, src = resolve_mpp("image", None, mpp, model_mpp, array=True)
        check_brightfield("image", dark_reason(img), force)
        return InputImage(img, m, "argument" if mpp is not None else src, "image")
    path = Path(image_or_path)
    check_input_file(path)
    if is_slide(path):
        return _read_small_slide(path, mpp, model_mpp, force)
    check_brightfield(str(path), non_rgb_reason(path), force)
    img = read_image(path)
    check_brightfield(str(path), dark_reason(img), force)
    m, src = resolve_mpp(str(path), image_mpp(path), mpp, model_mpp)
    return InputImage(img, m, src, str(path))


def _read_small_slide(path: Path, mpp: float | None, model_mpp: float | None,
                      force: bool) -> InputImage:
    check_brightfield(str(path), non_rgb_reason(path, slide=True), force)
    with open_slide(path, mpp=mpp) as slide:
        w, h = slide.dimensions
        if w * h > MAX_INMEMORY_PIXELS:
            raise file_error(path, f"whole-slide image of {w}x{h} px is too large to "
                                   "segment in memory; use process()/`ircr segment`")
        m, src = resolve_mpp(str(path), slide.mpp, mpp, model_mpp, slide=True)
        img = slide.read_region(0, 0, 0, w, h)
        check_brightfield(str(path), dark_reason(img), force)
        return InputImage(img, m, src, str(path))
