"""Robust reading of RGB images and integer label maps.

:func:`read_image` always returns an (H, W, 3) uint8 RGB array and :func:`read_label_map`
an (H, W) int32 map; anything they cannot convert without guessing is refused with a
one-line :class:`~ircr.errors.IrcrError` ``"<path>: <problem>"``.

Conversion rules of :func:`read_image` (applied in this order):

* TIFF files (``.tif``/``.tiff``) are read with tifffile (imagecodecs decodes LZW and the
  other compressions); the first page / full-resolution level is used. If tifffile cannot
  decode the file, Pillow is tried. All other formats (PNG, JPEG, BMP, ...) use Pillow.
* Planar TIFF data (samples stored separately, tifffile axes ``SYX``) is moved to
  channels-last.
* TIFF colour spaces: MINISWHITE is inverted, PALETTE indices are expanded through the colour
  map, CMYK (SEPARATED) becomes RGB as ``R = 255 (1 - C)(1 - K)`` (G from M, B from Y);
  CIELAB and other colour spaces are refused (a label map keeps its raw samples).
* Sample type:
  - uint8: used as is; bool: False -> 0, True -> 255.
  - uint16 (and other integers up to 65535): a *true* 16-bit image, i.e. one with a value
    above 255, is scaled to 8 bits with ``>> 8`` (keeps the top byte). A 16-bit container
    whose values all lie in 0..255 holds 8-bit data and is cast unchanged (shifting it
    would turn it black).
  - float: values in [0, 1] are scaled by 255 and rounded; integer-valued floats in
    [0, 255] are cast; anything else (negative, > 255, NaN, fractional > 1) is refused
    because its intensity range cannot be known.
  - other integer types with negative values or values above 65535 are refused.
* Size: an image above :func:`max_image_pixels` pixels (by default Pillow's own
  decompression-bomb limit, 2 x ``PIL.Image.MAX_IMAGE_PIXELS`` = 178,956,970 px) is refused
  from its header, before decoding, for TIFF (tifffile) and Pillow formats (PNG, JPEG, ...)
  alike; the environment variable ``IRCR_MAX_IMAGE_PIXELS`` sets another limit. Whole-slide
  images are read region by region (:mod:`ircr.io.wsi`) and are not limited.
* Channels: grayscale (H, W) or (H, W, 1) is replicated to 3 channels; gray+alpha and RGBA
  drop the alpha channel, compositing onto white where alpha < 255
  (``out = rgb * a/255 + 255 * (1 - a/255)``, rounded); a fully opaque alpha is simply
  dropped. Palette images are expanded through their palette. Any other shape is refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ircr.errors import IrcrError, file_error

# The one table of file suffixes of plain images (tiles, dataset images) and label maps; whole
# slides are io.wsi's (SLIDE_SUFFIXES, TIFF_SUFFIXES with BigTIFF names).
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", *TIFF_SUFFIXES, ".jpg", ".jpeg", ".bmp")  # what read_image reads
LABEL_SUFFIXES = (".png", *TIFF_SUFFIXES, ".npy")  # what read_label_map reads
_INT32_MAX = np.iinfo(np.int32).max
ENV_MAX_PIXELS = "IRCR_MAX_IMAGE_PIXELS"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise file_error(path, "file not found")
    if path.is_dir():
        raise file_error(path, "is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise file_error(path, "file is empty (0 bytes)")


def max_image_pixels() -> int:
    """Largest image (pixels) decoded into memory: ``IRCR_MAX_IMAGE_PIXELS`` or Pillow's limit.

    Raises:
        IrcrError: the environment variable is not a positive integer.
    """
    raw = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if not raw:
        from PIL import Image

        return 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise IrcrError(f"{ENV_MAX_PIXELS}: must be a positive number of pixels, got {raw!r}")
    return value


def check_pixels(path: str | Path, width: int, height: int) -> None:
    """Refuse (before decoding) an image larger than :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if int(width) * int(height) > limit:
        raise file_error(path, f"image of {width}x{height} px ({width * height / 1e6:.0f} Mpx) "
                               f"is over the {limit / 1e6:.0f} Mpx limit for decoding into memory "
                               f"(decompression-bomb guard; set {ENV_MAX_PIXELS} to raise it)")


_TIFF_PLAIN = {1, 2, 6}  # MINISBLACK, RGB, YCBCR (tifffile decodes YCbCr to RGB)
_TIFF_NAMES = {4: "transparency mask", 8: "CIELAB", 9: "ICCLAB", 10: "ITULAB",
               32803: "CFA (raw sensor)", 32844: "LogL", 32845: "LogLuv", 34892: "LinearRaw"}


def _full_scale(arr: np.ndarray) -> float:
    """Largest value of the sample type (1 for bool/float data in [0, 1])."""
    if np.issubdtype(arr.dtype, np.integer):
        return float(np.iinfo(arr.dtype).max)
    return 1.0


def _tiff_colour(arr: np.ndarray, page: object, path: Path) -> np.ndarray:
    """Apply a TIFF page's colour space to its raw samples (images, not label maps).

    MINISWHITE is inverted; PALETTE indices go through the colour map (16-bit entries keep
    their top byte); SEPARATED with the CMYK ink set becomes RGB as
    ``R = 255 (1 - C)(1 - K)`` (likewise G from M, B from Y; samples as fractions of full
    scale) and a fifth sample is kept as alpha. Other colour spaces are refused.
    """
    photometric = int(getattr(page, "photometric", 1))
    if photometric in _TIFF_PLAIN:
        return arr
    if photometric == 0:  # MINISWHITE: 0 is white
        if arr.dtype == np.bool_:
            return ~arr
        return (_full_scale(arr) - arr).astype(arr.dtype) if arr.ndim == 2 else arr
    if photometric == 3 and arr.ndim == 2 and getattr(page, "colormap", None) is not None:
        cmap = np.asarray(page.colormap)  # type: ignore[attr-defined]  # (3, 2**bits)
        lut = (cmap >> 8) if cmap.max() > 255 else cmap
        idx = np.clip(arr.astype(np.int64), 0, lut.shape[1] - 1)
        return np.ascontiguousarray(lut.T[idx].astype(np.uint8))
    inkset = getattr(page, "tags", {}).get("InkSet")
    if (photometric == 5 and arr.ndim == 3 and arr.shape[2] in (4, 5)
            and (inkset is None or int(inkset.value) == 1)):
        frac = arr.astype(np.float64) / _full_scale(arr)
        k = 1.0 - frac[..., 3:4]
        rgb = np.rint(255.0 * (1.0 - frac[..., :3]) * k).astype(np.uint8)
        if arr.shape[2] == 5:  # CMYK + alpha
            return np.concatenate([rgb, np.rint(255.0 * frac[..., 4:5]).astype(np.uint8)], 2)
        return rgb
    name = _TIFF_NAMES.get(photometric, "separated (not CMYK)" if photometric == 5 else
                           f"photometric {photometric}")
    raise file_error(path, f"TIFF colour space {name} with {arr.shape[2] if arr.ndim == 3 else 1}"
                           " sample(s) per pixel is not supported; save the image as RGB")


def _read_with_tifffile(path: Path, for_labels: bool = False) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if not tif.pages:
            raise ValueError("TIFF has no pages")
        page = tif.pages[0]
        check_pixels(path, page.imagewidth, page.imagelength)  # type: ignore[union-attr]
        arr = np.asarray(page.asarray())  # type: ignore[union-attr]
        axes = str(getattr(page, "axes", ""))
        if arr.ndim == 3 and axes.startswith("S"):
            arr = np.moveaxis(arr, 0, -1)  # planar (separate) samples -> channels last
        photometric = int(getattr(page, "photometric", 1))
        if for_labels:
            if photometric in (5, *_TIFF_NAMES):
                raise file_error(path, "label image is a colour image "
                                       f"(TIFF photometric {photometric}); expected one channel")
            return arr
        return _tiff_colour(arr, page, path)


def _pil_to_array(path: Path, for_labels: bool) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS  # our limit (checked below) replaces Pillow's
        Image.MAX_IMAGE_PIXELS = max(old or 0, max_image_pixels()) or None
        try:
            im: Image.Image = Image.open(str(path))
        finally:
            Image.MAX_IMAGE_PIXELS = old
    with im:
        check_pixels(path, *im.size)
        im.load()
        mode = im.mode
        if mode == "1":
            im = im.convert("L")
        elif mode == "P" and not for_labels:
            im = im.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV") and not for_labels:
            im = im.convert("RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise file_error(path, f"label image has colour mode {mode}; expected one channel")
        arr = np.asarray(im)
        if mode == "1":
            arr = (arr > 0).astype(np.uint8) * (255 if not for_labels else 1)
        return arr


def _load_raw(path: Path, for_labels: bool = False) -> np.ndarray:
    """Decode ``path`` to a raw numpy array (no dtype/channel conversion)."""
    _check_file(path)
    errors: list[str] = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            return _read_with_tifffile(path, for_labels)
        except IrcrError:  # too large: do not let Pillow try
            raise
        except Exception as exc:  # tifffile raises many types; fall back to Pillow
            errors.append(f"tifffile: {exc}")
    try:
        return _pil_to_array(path, for_labels)
    except IrcrError:
        raise
    except Exception as exc:  # Pillow: UnidentifiedImageError, OSError (truncated), ...
        if type(exc).__name__ == "UnidentifiedImageError":
            raise file_error(path, "cannot read image: not an image file (its content is not "
                                   "PNG, JPEG, TIFF or BMP data)") from None
        errors.append(str(exc) or type(exc).__name__)
    detail = "; ".join(e.splitlines()[0] if e else e for e in errors)
    raise file_error(path, f"cannot read image ({detail})")


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels.

    A quick check before any heavy work (``ircr segment`` probes every input before loading
    the model); errors are :func:`read_image`'s one-line messages.

    Raises:
        IrcrError: a missing, empty, unidentifiable or over-limit file.
    """
    p = Path(path)
    _check_file(p)
    if p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(str(p)) as tif:
                page = tif.pages[0]
                w, h = int(page.imagewidth), int(page.imagelength)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - Pillow may still read it (as read_image does)
            pass
        else:
            check_pixels(p, w, h)
            return w, h
    from PIL import Image, UnidentifiedImageError

    old = Image.MAX_IMAGE_PIXELS  # only the header is read; check_pixels is the limit
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(str(p)) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise file_error(p, "cannot read image: not an image file (its content is not PNG, "
                            "JPEG, TIFF or BMP data)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder error is one line
        raise file_error(p, f"cannot read image ({str(exc) or type(exc).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    check_pixels(p, w, h)
    return w, h


def to_uint8(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Convert an image array's sample type to uint8 by the module rules (``path`` for errors)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise file_error(path, f"floating-point image ({arr.dtype}) contains NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and np.all(arr == np.round(arr)):
            return arr.astype(np.uint8)
        raise file_error(
            path,
            f"floating-point image ({arr.dtype}) with values in [{lo:g}, {hi:g}]: intensity "
            "range unknown (expected [0, 1] or integer values in [0, 255])",
        )
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise file_error(
                path, f"integer image ({arr.dtype}) with values in [{lo}, {hi}] is not 8- or 16-bit"
            )
        if hi <= 255:
            return arr.astype(np.uint8)  # 8-bit data stored in a wider container
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)  # true 16-bit: keep the top byte
    raise file_error(path, f"unsupported image sample type {arr.dtype}")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 colour + (H, W) uint8 alpha -> composited on white, uint8."""
    if np.all(alpha == 255):
        return rgb
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """Any supported (H, W[, C]) uint8 layout -> (H, W, 3) uint8 RGB."""
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 2:
        gray = _composite_on_white(arr[:, :, :1], arr[:, :, 1])
        return np.repeat(gray, 3, axis=2)
    if channels == 3:
        return arr
    if channels == 4:
        return _composite_on_white(arr[:, :, :3], arr[:, :, 3])
    raise file_error(path, f"image has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see the module docstring for the rules).

    Raises:
        IrcrError: ``"<path>: <problem>"`` for a missing, empty, truncated or undecodable
            file, an unsupported shape or sample type, or an empty image.
    """
    p = Path(path)
    arr = _load_raw(p)
    if arr.ndim not in (2, 3):
        raise file_error(p, f"image has shape {arr.shape}; expected (H, W) or (H, W, C)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise file_error(p, f"image is empty (shape {arr.shape})")
    rgb = _to_rgb(to_uint8(arr, p), p)
    return np.ascontiguousarray(rgb)


def as_label_map(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Validate an integer-valued, non-negative (H, W[, 1]) array; return it as int32.

    ``path`` only names the origin in errors. Raises IrcrError for colour, negative,
    non-integer or out-of-range maps.
    """
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        raise file_error(
            path,
            f"label map is a colour image with {arr.shape[2]} channels; expected a single-channel "
            "integer instance map (0 = background)",
        )
    if arr.ndim != 2:
        raise file_error(path, f"label map has shape {arr.shape}; expected (H, W)")
    if arr.size == 0:
        raise file_error(path, f"label map is empty (shape {arr.shape})")
    if arr.dtype == np.bool_:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise file_error(path, f"label map ({arr.dtype}) has non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise file_error(path, f"label map has unsupported type {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise file_error(path, f"label map has negative values (min {lo})")
    if hi > _INT32_MAX:
        raise file_error(path, f"label map has ids above the int32 range (max {hi})")
    return arr.astype(np.int32)


def read_label_map(path: str | Path) -> np.ndarray:
    """Read an instance label map (PNG/TIFF/NPY; 8-, 16- or 32-bit) as (H, W) int32.

    0 is background and every other value an instance id. 16-bit PNGs (Pillow mode
    ``I;16``) keep their values. Colour (RGB/RGBA) label images, negative values and
    non-integer floats are refused.

    Raises:
        IrcrError: ``"<path>: <problem>"``.
    """
    p = Path(path)
    if p.suffix.lower() == ".npy":
        _check_file(p)
        try:
            arr = np.load(str(p), allow_pickle=False)
        except Exception as exc:
            msg = f"cannot read .npy label map ({type(exc).__name__}: {exc})"
            raise file_error(p, msg) from None
    else:
        arr = _load_raw(p, for_labels=True)
    return as_label_map(np.asarray(arr), p)


def check_same_size(
    image: np.ndarray, labels: np.ndarray, image_path: str | Path, label_path: str | Path
) -> None:
    """Raise an IrcrError naming both files when image (H, W, 3) and labels (H, W) differ."""
    if image.shape[:2] != labels.shape[:2]:
        ih, iw = image.shape[:2]
        lh, lw = labels.shape[:2]
        raise IrcrError(
            f"{label_path}: label map is {lw}x{lh} (WxH) but image {image_path} is {iw}x{ih}"
        )

