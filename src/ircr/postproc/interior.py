"""Instances from a 3-class (background / interior / boundary) map: PG-FANet's post-processing.

Reference-algorithms.md §8.3 (the released ``driver/predict_utils.post_process``):

1. take the pixels whose most probable class is the interior (class 1);
2. remove the connected pieces of fewer than ``min_size`` pixels (MoNuSeg/TNBC: 20);
3. label the remaining connected components (8-connectivity, as ``skimage.measure.label``'s
   default in 2-D; the removal uses the same components);
4. dilate the labels with a disk of radius ``dilate_radius`` (2) to give back the boundary
   ring the interior class leaves out. Only background pixels are taken; where two instances
   reach the same background pixel the larger id wins (grey dilation, the released code's
   ``morphology.dilation`` on the label map); an instance never overwrites another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from ircr.config import bounded
from ircr.errors import IrcrError

INTERIOR = 1


@dataclass
class InteriorParams:
    """Post-processing of the ``pgfanet`` family (``postproc.yaml``).

    Attributes:
        min_size: interior pieces with fewer pixels are dropped (20 for nuclei, 100 glands).
        dilate_radius: radius of the disk the labels are dilated with (2; glands 4).
        connectivity: 8 (diagonal neighbours join pieces, skimage's 2-D default) or 4.
    """

    min_size: int = bounded(20, 0, 10**9)
    dilate_radius: int = bounded(2, 0, 1000)
    connectivity: Literal[4, 8] = 8


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk: offsets with dy² + dx² <= r² (skimage's ``disk``)."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r


def interior_instances(classes: np.ndarray, params: InteriorParams | None = None) -> np.ndarray:
    """Instance map of a per-pixel class map (0 background, 1 interior, 2 boundary).

    Args:
        classes: (H, W) integer class map (argmax of the 3-class probabilities).
        params: see :class:`InteriorParams` (None = defaults).

    Returns:
        (H, W) int32 instance map, 0 = background, ids 1..K in raster order of the components.
    """
    p = params or InteriorParams()
    if not isinstance(classes, np.ndarray) or classes.ndim != 2:
        raise IrcrError(f"post-processing: class map must be 2-D, got shape "
                        f"{getattr(classes, 'shape', None)}")
    structure = ndimage.generate_binary_structure(2, 2 if p.connectivity == 8 else 1)
    lab, n = ndimage.label(classes == INTERIOR, structure=structure)
    if n and p.min_size > 0:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= p.min_size
        keep[0] = False
        lab[~keep[lab]] = 0
        lab, n = ndimage.label(lab > 0, structure=structure)
    lab = lab.astype(np.int32, copy=False)
    if n and p.dilate_radius > 0:
        grown = ndimage.grey_dilation(lab, footprint=disk(p.dilate_radius), mode="constant",
                                      cval=0)
        lab = np.where(lab > 0, lab, grown).astype(np.int32, copy=False)
    return lab
