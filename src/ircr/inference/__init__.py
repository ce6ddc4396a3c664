"""Inference layer: what every use of a trained network shares, below training.

* :mod:`ircr.inference.device`: the one device + autocast policy.
* :mod:`ircr.inference.predict`: tiled (sliding-window) HoVer-Net prediction.
* :mod:`ircr.inference.families`: model-family registry (HoVer-Net built in; plug-ins).
* :mod:`ircr.inference.model_folder`: the self-describing model folder.
* :mod:`ircr.inference.evaluate`: whole-image evaluation and its :class:`EvalConfig`.

``train/`` imports this package; ``engine/`` (segment, slide, tune, packaged) sits on top.
This package imports nothing at import time so that ``import ircr.inference.x`` stays light.
"""
