"""Versions recorded in every segmentation summary (what shaped the results)."""

from __future__ import annotations


def versions() -> dict[str, str]:
    """Versions of ircr, Python and the libraries that shape the results."""
    import platform
    from importlib import metadata

    from ircr._version import __version__

    out = {"ircr": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "scipy", "scikit-image", "opencv-python-headless",
                 "tifffile", "tiffslide", "openslide-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
