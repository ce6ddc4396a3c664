"""Instance-level semi-supervised machinery of IRCR-Net.

* :mod:`ircr.ssl.ema`: EMA teacher (weights and BN buffers).
* :mod:`ircr.ssl.matching`: MIAC (centroids, Hungarian matching, boundary bands, loss).
* :mod:`ircr.ssl.prior`: five-feature KDE morphological prior (build, save, load, score).
* :mod:`ircr.ssl.piac`: PIAC U mask and loss.
* :mod:`ircr.ssl.mask_cache`: IRCR's per-patch mask cache (``mask_source: previous``).
* :mod:`ircr.ssl.progressive`: progressive self-training (schedule, selection, targets).

Submodules are imported explicitly (``from ircr.ssl.prior import MorphPrior``) so that the
numpy-only parts do not import torch.
"""
