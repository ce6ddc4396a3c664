"""Whole-slide image reading: OpenSlide when importable, tiffslide (pure pip) otherwise.

Without either (a minimal environment), TIFF slides are read with tifffile alone
(:mod:`ircr.io.tiff_regions`: built-in codecs only, e.g. zlib but not JPEG).

Supports what the backends open: Aperio SVS, Hamamatsu NDPI, generic pyramidal TIFF and
OME-TIFF (tiffslide), plus MIRAX/SCN/... with OpenSlide. Microns per pixel come from the
backend's ``*.mpp-x`` property, falling back to OME-XML ``PhysicalSizeX`` and the TIFF
resolution tags (read with tifffile); implausible values (outside 0.05..50 µm, e.g. a 72-dpi
screen resolution) are treated as missing.

All coordinates are OpenSlide-style: ``(x, y)`` of the top-left corner in level-0 pixels; sizes
in pixels of the level read. Every error names the file in one line.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import traceback
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from ircr.errors import file_error
from ircr.io.fluorescence import fluorescence_reason

SLIDE_SUFFIXES = {".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide", ".qptiff"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}
DICOM_SUFFIX = ".dcm"  # DICOM-WSI: read by OpenSlide 4 or newer only
DICOM_UNSUPPORTED = ("DICOM-WSI is not supported here: it needs OpenSlide 4 or newer "
                     "(pip install openslide-python openslide-bin); or convert the slide to "
                     "OME-TIFF or SVS")
MPP_RANGE = (0.05, 50.0)
# A plain (single-level, untiled) TIFF above this many pixels is still read as a slide.
SLIDE_MIN_PIXELS = 8192 * 8192


class _ZarrTaskNoise(logging.Filter):
    """Drops asyncio's reports about zarr's read tasks (tiffslide reads through zarr).

    When one tile of a region fails to decode, zarr's ``asyncio.gather`` raises the first error
    (turned into one IrcrError by :meth:`Slide.read_region`) and leaves its sibling tasks to
    be reported one by one ("Task exception was never retrieved", "Task was destroyed but it
    is pending!"), hundreds of tracebacks for one bad slide. Other asyncio reports pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
            exc = record.exc_info[2] if record.exc_info else None
            if exc is not None:  # e.g. "_GatheringFuture exception was never retrieved"
                text += " ".join(f.filename for f in traceback.extract_tb(exc))
        except Exception:  # noqa: BLE001 - a broken record is not ours to judge
            return True
        return "zarr" not in text and "concurrent_map" not in text


def _quiet_zarr_tasks() -> None:
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _ZarrTaskNoise) for f in log.filters):
        log.addFilter(_ZarrTaskNoise())
    hook = sys.unraisablehook
    if not getattr(hook, "_ircr_zarr", False):  # "Exception ignored in: <coroutine
        def quiet(unraisable: Any, _next: Any = hook) -> None:  # concurrent_map...>" at exit
            if "concurrent_map" in repr(getattr(unraisable, "object", None)):
                return
            _next(unraisable)

        quiet._ircr_zarr = True  # type: ignore[attr-defined]
        sys.unraisablehook = quiet
    warnings.filterwarnings("ignore", message="coroutine 'concurrent_map", category=RuntimeWarning)


def _detail(exc: BaseException) -> str:
    """A reader's exception as words for a message: its text, not its Python class name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def check_mpp(value: float | str, key: str = "--mpp") -> float:
    """``value`` as float if it is a plausible pixel size (:data:`MPP_RANGE` µm), else an error.

    Raises:
        IrcrError: ``"<key>: ... expected 0.05 to 50 µm per pixel"``.
    """
    from ircr.errors import IrcrError

    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and MPP_RANGE[0] <= v <= MPP_RANGE[1]):
        raise IrcrError(f"{key}: {value!r} µm/px is not a plausible pixel size; expected "
                        f"{MPP_RANGE[0]:g} to {MPP_RANGE[1]:g} µm per pixel")
    return v


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return None
    return float(mpp)


_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def tiff_mpp(path: str | Path) -> float | None:
    """Microns per pixel of a TIFF from OME-XML, Aperio ``MPP =`` or resolution tags."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            ome = tif.ome_metadata
            if ome:
                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
                u = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
                if m:
                    factor = _OME_UNITS.get(u.group(1) if u else "µm")
                    if factor is not None:
                        return _plausible(float(m.group(1)) * factor)
            desc = getattr(page, "description", "") or ""
            m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
            if m:
                return _plausible(float(m.group(1)))
            tags = page.tags  # type: ignore[union-attr]
            if "XResolution" in tags and "ResolutionUnit" in tags:
                num, den = tags["XResolution"].value
                unit = int(tags["ResolutionUnit"].value)
                if num and den and unit in (2, 3):
                    per_unit = num / den
                    return _plausible((25400.0 if unit == 2 else 10000.0) / per_unit)
    except Exception:  # metadata is optional; unreadable metadata = no mpp
        return None
    return None


def image_mpp(path: str | Path) -> float | None:
    """Microns per pixel of an ordinary image file (TIFF tags, PNG/JPEG dpi), or None."""
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return tiff_mpp(p)
    try:
        from PIL import Image

        with Image.open(p) as im:
            dpi = im.info.get("dpi")
    except Exception:
        return None
    if dpi and dpi[0]:
        return _plausible(25400.0 / float(dpi[0]))
    return None


def non_rgb_reason(path: str | Path, slide: bool = False) -> str | None:
    """Why a TIFF-family file is not a brightfield RGB image, from its metadata, or None.

    PerkinElmer/Hamamatsu metadata naming fluorescence (:mod:`ircr.io.fluorescence`, even
    for RGB pixels); channel planes (tifffile axes with ``C`` > 1, e.g. a Vectra QPTIFF's
    ``CYX``) are fluorescence or multiplex data; a slide (``slide``) with one sample per pixel
    is not RGB either. Other files (PNG, JPEG, formats tifffile cannot parse) give None.
    """
    p = Path(path)
    if p.suffix.lower() not in TIFF_SUFFIXES | {".svs", ".ndpi", ".qptiff"}:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            vendor = fluorescence_reason(tif)
            if vendor is not None:
                return vendor
            series = tif.series[0]
            axes, shape = str(series.axes), tuple(series.shape)
            samples = int(getattr(tif.pages[0], "samplesperpixel", 3))
    except Exception:  # unreadable metadata: the reader reports the file itself
        return None
    if "C" in axes and shape[axes.index("C")] > 1:
        return (f"{shape[axes.index('C')]} channel planes (axes {axes}), not an RGB image: a "
                "fluorescence or multiplex image")
    if slide and "S" not in axes and samples == 1:
        return f"one sample per pixel (axes {axes}), not an RGB brightfield slide"
    return None


def openslide_reads_dicom() -> bool:
    """Whether OpenSlide is importable and new enough (4.0+) to read DICOM-WSI."""
    try:
        import openslide
    except Exception:  # noqa: BLE001 - not installed, or its library is missing
        return False
    version = str(getattr(openslide, "__library_version__", "0"))
    try:
        return int(version.split(".")[0]) >= 4
    except ValueError:
        return False


def slide_suffixes() -> set[str]:
    """Whole-slide file suffixes readable here (``.dcm`` only with OpenSlide 4+)."""
    return SLIDE_SUFFIXES | ({DICOM_SUFFIX} if openslide_reads_dicom() else set())


def is_slide(path: str | Path) -> bool:
    """Whether ``path`` should be processed as a whole-slide image (streamed, pyramid-aware).

    Vendor formats (SVS, NDPI, MRXS, ...) always are; a TIFF is a slide when it has a
    resolution pyramid, or is tiled and larger than ``SLIDE_MIN_PIXELS``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES or suffix == DICOM_SUFFIX:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            if len(series.levels) > 1:
                return True
            shape = series.shape
            pixels = int(np.prod([s for s, a in zip(shape, series.axes) if a in "YX"]))
            return bool(page.is_tiled and pixels > SLIDE_MIN_PIXELS)  # type: ignore[union-attr]
    except Exception as exc:
        raise file_error(p, f"cannot read TIFF ({_detail(exc)})") from exc


class Slide:
    """An open whole-slide image.

    Attributes:
        path: the file.
        backend: ``"openslide"``, ``"tiffslide"`` or ``"tifffile"`` (neither installed).
        dimensions: level-0 (width, height).
        level_dimensions: (width, height) per level; level_downsamples: per level.
        mpp: microns per pixel at level 0 (None when unknown); mpp_source: where it came from.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise file_error(self.path, "file not found")
        self._handle: Any = None
        self.backend = ""
        try:
            import openslide

            self._handle = openslide.OpenSlide(str(self.path))
            self.backend = "openslide"
        except Exception:
            self._handle = None
        if self._handle is None and self.path.suffix.lower() == DICOM_SUFFIX:
            if not openslide_reads_dicom():
                raise file_error(self.path, DICOM_UNSUPPORTED)
            raise file_error(self.path, "cannot open as a DICOM-WSI with OpenSlide")
        if self._handle is None:
            try:
                self._handle, self.backend = _open_tiff(self.path)
            except Exception as exc:
                raise file_error(self.path, f"cannot open as a whole-slide image "
                                            f"({_detail(exc)})") from exc
        h = self._handle
        self.dimensions: tuple[int, int] = tuple(int(v) for v in h.dimensions)  # type: ignore
        self.level_dimensions = [tuple(int(v) for v in d) for d in h.level_dimensions]
        self.level_downsamples = [float(d) for d in h.level_downsamples]
        self.mpp, self.mpp_source = self._find_mpp(mpp)

    def _find_mpp(self, override: float | None) -> tuple[float | None, str]:
        if override is not None:
            return float(override), "--mpp"
        props = self._handle.properties
        for key in (f"{self.backend}.mpp-x", "openslide.mpp-x", "tiffslide.mpp-x"):
            value = props.get(key)
            if value not in (None, ""):
                try:
                    mpp = _plausible(float(value))
                except (TypeError, ValueError):
                    mpp = None
                if mpp is not None:
                    return mpp, "file"
        if self.path.suffix.lower() in TIFF_SUFFIXES | {".svs", ".ndpi", ".qptiff"}:
            mpp = tiff_mpp(self.path)
            if mpp is not None:
                return mpp, "file"
        return None, "missing"

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def best_level(self, downsample: float) -> int:
        """Level with the largest downsample not above ``downsample`` (1e-3 tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-3) and d >= self.level_downsamples[best]:
                best = i
        return best

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Read (height, width, 3) uint8 RGB at ``level``; (x, y) is the level-0 top-left.

        Transparent (unscanned) pixels are composited onto white.
        """
        try:
            if self.backend in ("tiffslide", "tifffile"):
                arr = np.asarray(self._handle.read_region((x, y), level, (width, height),
                                                          as_array=True))
            else:
                arr = np.asarray(self._handle.read_region((x, y), level, (width, height)))
        except Exception as exc:
            raise file_error(self.path, f"cannot read region x={x} y={y} level={level} "
                                        f"({_detail(exc)})") from exc
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.shape[2] == 4:
            a = arr[..., 3:4].astype(np.float32) / 255.0
            rgb = arr[..., :3].astype(np.float32) * a + 255.0 * (1 - a)
            arr = np.round(rgb).astype(np.uint8)
        if arr.dtype != np.uint8:
            if arr.dtype == np.uint16:
                arr = (arr >> 8).astype(np.uint8)
            else:
                raise file_error(self.path, f"unsupported slide sample type {arr.dtype}")
        return np.ascontiguousarray(arr[..., :3])

    def thumbnail(self, max_size: int = 2048, block: int = 4096) -> tuple[np.ndarray, float]:
        """Downsampled RGB overview with longest side <= ``max_size``.

        Reads the best pyramid level block by block, so memory stays bounded even for a
        slide without a pyramid.

        Returns:
            (h, w, 3) uint8 thumbnail and its scale (thumbnail pixels per level-0 pixel).
        """
        w0, h0 = self.dimensions
        scale = min(1.0, max_size / max(w0, h0))
        level = self.best_level(1.0 / scale)
        d = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        f = scale * d  # thumbnail pixels per level pixel
        out = np.full((th, tw, 3), 255, np.uint8)
        for by in range(0, lh, block):
            for bx in range(0, lw, block):
                bw, bh = min(block, lw - bx), min(block, lh - by)
                ty0, tx0 = round(by * f), round(bx * f)
                ty1, tx1 = min(th, round((by + bh) * f)), min(tw, round((bx + bw) * f))
                if ty1 <= ty0 or tx1 <= tx0:
                    continue
                region = self.read_region(round(bx * d), round(by * d), level, bw, bh)
                out[ty0:ty1, tx0:tx1] = cv2.resize(region, (tx1 - tx0, ty1 - ty0),
                                                   interpolation=cv2.INTER_AREA)
        return out, scale

    def close(self) -> None:
        """Release the file handle."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _open_tiff(path: Path) -> tuple[Any, str]:
    """tiffslide's handle, or tifffile's region reader when tiffslide is not installed."""
    try:
        import tiffslide
    except ImportError:
        from ircr.io.tiff_regions import TiffRegionReader

        return TiffRegionReader(path), "tifffile"
    _quiet_zarr_tasks()
    return tiffslide.TiffSlide(str(path)), "tiffslide"


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image; ``mpp`` overrides the file's microns per pixel."""
    return Slide(path, mpp=mpp)
