"""The unit every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One image with its instance labels.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        inst: (H, W) int32 instance map, 0 = background, ids need not be contiguous;
            ``None`` for unlabelled images.
        meta: at least ``name`` (str, unique within a dataset), ``source`` (dataset name),
            ``mpp`` (microns per pixel, float or None), ``path`` (str of the image file).
    """

    image: np.ndarray
    inst: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The sample's name (unique within its dataset)."""
        return str(self.meta.get("name", ""))
