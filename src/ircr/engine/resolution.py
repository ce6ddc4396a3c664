"""Pixel size handling: which µm/px an input has (rescaling itself: :mod:`ircr.inference.scale`).

:func:`resolve_mpp` decides the input's pixel size: an explicit ``--mpp`` /
``mpp=`` wins, then the file's metadata, then (tiles only, with a warning) the model's.
"""

from __future__ import annotations

import warnings

from ircr.errors import IrcrError
from ircr.io.wsi import check_mpp


def check_processing_size(source: str, size: tuple[int, int], proc: tuple[int, int],
                          limit: int, mpp: float | None, model_mpp: float | None) -> None:
    """Refuse (before allocating) an input that rescaling would blow up beyond ``limit`` px."""
    if proc[0] * proc[1] <= limit:
        return
    raise IrcrError(
        f"{source}: at {mpp:g} µm/px the {size[0]}x{size[1]} px input would be enlarged to "
        f"{proc[0]}x{proc[1]} px for the model's {model_mpp:g} µm/px "
        f"({proc[0] * proc[1] / 1e6:.0f} Mpx, limit {limit / 1e6:.0f} Mpx); check --mpp")


def resolve_mpp(source: str, file_mpp: float | None, mpp: float | None,
                model_mpp: float | None, slide: bool = False,
                array: bool = False) -> tuple[float | None, str]:
    """(µm/px of the input, where it came from: "--mpp", "file", "assumed" or "unknown").

    A slide without a pixel size is an error (a wrong guess would mis-scale everything); a
    tile or array without one gets the model's pixel size with a warning (the warning points
    at the caller of the caller, i.e. the user's ``segment()`` call).
    """
    if mpp is not None:
        return check_mpp(mpp, "mpp" if array else "--mpp (mpp= in Python)"), "--mpp"
    if file_mpp is not None:
        return file_mpp, "file"
    if model_mpp is None:
        return None, "unknown"
    if slide:
        raise IrcrError(f"{source}: no microns-per-pixel in the slide metadata; pass --mpp "
                        f"(mpp= in Python; the model expects {model_mpp:g} µm/px)")
    if array:
        warnings.warn(f"image array: no pixel size given; assuming the model's "
                      f"{model_mpp:g} µm/px (pass segment(image, mpp=...) to set it)",
                      stacklevel=4)
    else:
        warnings.warn(f"{source}: no microns-per-pixel in the file; assuming the model's "
                      f"{model_mpp:g} µm/px (set it with --mpp, or mpp= in Python)",
                      stacklevel=4)
    return model_mpp, "assumed"
