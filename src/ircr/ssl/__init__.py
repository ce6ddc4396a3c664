"""Instance-level semi-supervised machinery of IRCR-Net.

* :mod:`ircr.ssl.ema`: EMA teacher (weights and BN buffers).
* :mod:`ircr.ssl.matching`: MIAC (centroids, Hungarian matching, boundary bands, loss).
* :mod:`ircr.ssl.prior`: five-feature KDE morphological prior (build, save, load, score).
* :mod:`ircr.ssl.piac`: PIAC U mask and loss.

Submodules are imported explicitly (``from ircr.ssl.prior import MorphPrior``) so that the
numpy-only parts do not import torch.
"""
