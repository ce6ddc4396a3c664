"""Object confidence: drop instances whose mean foreground probability is low.

WBIS keeps every watershed region of ``prob >= threshold``, however weakly the network
believed in it. On tissue unlike the training set (CPM-15's brain and 20x tiles for a model
trained on MoNuSeg) most false positives are such regions: measured with the packaged model,
objects matching no true nucleus (best IoU < 0.1) had a median mean probability of 0.78
against 0.93 for matched ones (docs/models.md, "False positives"). StarDist (``prob_thresh``
per object) and Cellpose (``cellprob_threshold``) filter on the same kind of score.

``min_prob`` 0 keeps everything (HoVer-Net's post-processing); a value is chosen on
validation images by ``ircr tune-postproc``. An object's mean is over its own pixels only,
so it does not depend on the extent of the map it is cut from (slide tiles).
"""

from __future__ import annotations

import numpy as np

__all__ = ["drop_unconfident", "mean_prob"]


def mean_prob(inst: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Mean ``prob`` (H, W) float over each id of ``inst`` (H, W) int: (max id + 1,) float64
    (index 0 and absent ids: 0)."""
    n = int(inst.max()) + 1 if inst.size else 1
    area = np.bincount(inst.ravel(), minlength=n)
    total = np.bincount(inst.ravel(), weights=prob.ravel().astype(np.float64), minlength=n)
    return np.divide(total, area, out=np.zeros(n), where=area > 0)


def drop_unconfident(inst: np.ndarray, prob: np.ndarray, min_prob: float) -> np.ndarray:
    """Zero the instances whose mean probability is below ``min_prob``; the others keep their
    order and are renumbered 1..K. (H, W) int32; ``inst`` itself when ``min_prob <= 0``."""
    if min_prob <= 0 or not inst.any():
        return inst
    keep = mean_prob(inst, prob) >= min_prob
    keep[0] = False
    lut = np.zeros(keep.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[inst]
