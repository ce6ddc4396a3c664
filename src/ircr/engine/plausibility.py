"""What the engine accepts as brightfield H&E, and which objects it accepts as nuclei.

The models are trained on brightfield H&E (RGB, bright glass). A fluorescence or multiplex
image (channel planes, dark background) read as RGB gives nonsense: a whole DAPI background
cut into "nuclei", one 78,000 µm² "nucleus". So an input is refused, with one line, when

* its file holds channel planes instead of RGB (:func:`ircr.io.wsi.non_rgb_reason`: axes such
  as ``CYX``, PerkinElmer/Hamamatsu fluorescence metadata), or
* it is mostly dark: the median brightness of the image (tiles) or of the slide thumbnail is
  below :data:`DARK_MEDIAN` (brightfield glass and H&E tissue are light; fluorescence and
  dark-field backgrounds are black);

``--force`` (``force=True``) segments it anyway with a warning. Objects far above any nucleus
size (:data:`MAX_NUCLEUS_UM2`) are dropped and counted (``dropped_oversized`` in the summary)
instead of written.
"""

from __future__ import annotations

import warnings

import numpy as np

from ircr.errors import IrcrError

DARK_MEDIAN = 40  # of 255: the darkest of the 30 MoNuSeg and 15 CPM-15 tiles has a median of 82
MAX_NUCLEUS_UM2 = 3000.0  # a 62 µm wide disc; the largest (giant-cell) nuclei are far below


def dark_reason(rgb: np.ndarray) -> str | None:
    """Why an (h, w, 3) uint8 image is not brightfield (mostly dark), or None."""
    if rgb.size == 0:
        return None
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))  # <= ~1 Mpx sampled
    median = float(np.median(rgb[::step, ::step].mean(axis=2)))
    if median >= DARK_MEDIAN:
        return None
    return (f"mostly dark (median brightness {median:.0f}/255): a fluorescence or dark-field "
            "image, not brightfield H&E")


def check_brightfield(source: str, reason: str | None, force: bool) -> None:
    """Refuse a non-brightfield input (``reason`` not None) unless ``force`` (then warn).

    Raises:
        IrcrError: ``"<source>: <reason>; ..."`` naming ``--force``.
    """
    if reason is None:
        return
    if force:
        warnings.warn(f"{source}: {reason}; segmenting it anyway (--force)", stacklevel=3)
        return
    raise IrcrError(f"{source}: {reason}; the models segment brightfield H&E (pass --force "
                    "to segment it anyway)")


def max_object_px(mpp: float | None) -> float:
    """Largest plausible nucleus in pixels at ``mpp`` µm/px (unknown: 0.25 µm/px assumed)."""
    return MAX_NUCLEUS_UM2 / (mpp or 0.25) ** 2


def drop_oversized(local: np.ndarray, max_px: float,
                   core: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, int]:
    """Remove objects larger than ``max_px`` pixels from an instance map.

    Args:
        local: (h, w) int32 instance map of one read window (not modified).
        max_px: largest plausible object in pixels.
        core: (y0, x0, y1, x1) in ``local``'s pixels: only dropped objects whose first pixel
            in raster order lies in it are counted (the tile that reports a nucleus; so an
            object seen by several overlapping windows is counted once). None: all.

    Returns:
        (the map without those objects, how many of them were counted).
    """
    areas = np.bincount(local.ravel())
    big = np.nonzero(areas > max_px)[0]
    big = big[big > 0]
    if big.size == 0:
        return local, 0
    out = np.where(np.isin(local, big), 0, local).astype(local.dtype)
    if core is None:
        return out, int(big.size)
    ids, first = np.unique(local.ravel(), return_index=True)
    rows, cols = np.divmod(first[np.isin(ids, big)], local.shape[1])
    y0, x0, y1, x1 = core
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return out, int(inside.sum())
