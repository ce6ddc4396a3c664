"""Fixed gradient ranges for WBIS (``gradient_range: fixed``): no per-call min-max.

HoVer-Net's step 4 min-max-normalises each HV channel's Sobel response over the whole map it
is given, so an instance depends on the extent of that map (slide tiles). The functions here
map the response with fixed constants instead: a pixel's value depends only on HV within
``ksize // 2`` px. Units: the Sobel response of ``(HV + 1) / 2`` (HV trained toward
[-1, 1]) divided by ``K``, the response to a unit step (:func:`sobel_step_response`), so
every value lies in [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np

from ircr.errors import IrcrError


def sobel_step_response(ksize: int) -> float:
    """Largest ``|cv2.Sobel|`` (first derivative, aperture ``ksize``) of a map in [0, 1].

    It is the response to a unit step across the derivative direction: the derivative
    kernel is a binomial row of order ``ksize - 2`` convolved with [-1, 1], whose running sum
    peaks at the middle binomial coefficient ``C(ksize - 2, (ksize - 3) // 2)``, times the
    sum of the smoothing binomial row of order ``ksize - 1``, ``2 ** (ksize - 1)``.
    ``ksize`` 1 is OpenCV's unsmoothed [-1, 0, 1] (response 1).
    """
    if ksize == 1:
        return 1.0
    return float(math.comb(ksize - 2, (ksize - 3) // 2) * 2 ** (ksize - 1))


def fixed_unit(sobel: np.ndarray, ksize: int, low: float = -0.5,
               high: float = 0.5) -> np.ndarray:
    """Sobel response of a raw HV channel -> [0, 1] float32, by fixed ranges (no min-max).

    HV is trained toward [-1, 1], i.e. ``(hv + 1) / 2`` in [0, 1], whose Sobel response is
    ``sobel / 2``; that is scaled so that plus/minus half the unit-step response
    ``K = sobel_step_response(ksize)`` spans [0, 1] (``0.5 + sobel / (2 K)``, clipped): with
    the packaged model the per-tile extremes that min-max used lie at 0.34-0.46 K on real
    MoNuSeg tiles (docs/benchmarks.md), so the fixed range keeps about the same marker
    threshold, and the 0.5 level is ``sobel == 0`` under both rules when the extremes are
    symmetric. ``low``/``high`` (units of ``K``) generalise the ``-0.5``/``0.5`` ends:
    ``clip((sobel / (2 K) - low) / (high - low), 0, 1)``. Input (H, W) float64, output
    (H, W) float32.
    """
    k = sobel_step_response(ksize)
    span = high - low
    out = np.multiply(sobel, 0.5 / k / span, dtype=np.float64)
    np.add(out, -low / span, out=out)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32)


def check_bounds(low: tuple[float, ...], high: tuple[float, ...]) -> None:
    """Raise :class:`IrcrError` unless low/high are 2 finite values in [-1, 1], low < high."""
    for key, val in (("gradient_low", low), ("gradient_high", high)):
        if len(val) != 2 or not all(-1.0 <= v <= 1.0 for v in val):  # NaN fails too
            raise IrcrError(f"postproc.{key}: must be two numbers (x, y) in [-1, 1], got "
                            f"{list(val)}")
    if not all(lo < hi for lo, hi in zip(low, high)):
        raise IrcrError(f"postproc.gradient_low: must be below gradient_high per channel, got "
                        f"{list(low)} and {list(high)}")
