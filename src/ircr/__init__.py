"""ircr: semi-supervised nuclei instance segmentation in H&E histopathology.

The public entry points are the ``ircr`` command and :func:`load_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ircr._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ircr.engine.segmenter import NucleusSegmenter

__all__ = ["__version__", "load_model"]


def load_model(path: Any = None, **kwargs: Any) -> NucleusSegmenter:
    """Load a trained model and return a segmenter with ``.segment(image_or_path)``.

    ``path`` is a model folder or a packaged model name; ``"default"`` (or None) is the
    HoVer-Net lite model shipped with the package (MoNuSeg-trained, CC BY-NC-SA 4.0 weights).
    """
    from ircr.engine.segmenter import load_model as _load

    return _load(path, **kwargs)
