"""Rescaling between an image's pixel size and the model's (µm/px), shared by every path.

The network runs at the model's training resolution (``mpp`` in model.yaml). An input whose
pixel size differs by more than :data:`MPP_TOLERANCE` is resized to it (area averaging when
shrinking, bilinear when enlarging) and the instance map is brought back with nearest
neighbour, so results (and metrics) are at the input's own resolution. ``ircr segment``, slides,
``ircr evaluate`` and ``ircr tune-postproc`` all use these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

MPP_TOLERANCE = 0.05  # input/model pixel sizes within 5 % are not rescaled


def rescale_factor(input_mpp: float | None, model_mpp: float | None) -> float:
    """Processing pixels per input pixel (1.0 when either is unknown or within 5 %)."""
    if not input_mpp or not model_mpp:
        return 1.0
    f = input_mpp / model_mpp
    return 1.0 if abs(f - 1.0) <= MPP_TOLERANCE else f


def common_mpp(values: Iterable[float | None]) -> float | None:
    """The one pixel size of a set of images (e.g. a model's training data), else None.

    None (no rescaling at inference) when none is known or the known ones disagree by more
    than :data:`MPP_TOLERANCE` (CPM-15 mixes 20x and 40x tiles, trained at their own size).
    """
    mpps = [float(v) for v in values if v]
    if not mpps or rescale_factor(max(mpps), min(mpps)) != 1.0:
        return None
    return mpps[0]


def processing_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) of an input of that size at ``factor`` processing px per input px."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 with area averaging when shrinking, bilinear when enlarging."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(inst: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to (height, width) (pixel centres)."""
    if inst.shape == (height, width):
        return inst
    ys = np.minimum(((np.arange(height) + 0.5) * inst.shape[0] / height).astype(np.int64),
                    inst.shape[0] - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * inst.shape[1] / width).astype(np.int64),
                    inst.shape[1] - 1)
    return np.ascontiguousarray(inst[ys[:, None], xs[None, :]])
