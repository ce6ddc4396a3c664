"""What in-memory segmentation returns: :class:`SegmentResult` (instance map + table)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentResult:
    """Result of :meth:`NucleusSegmenter.segment` for one image.

    Attributes:
        inst: (H, W) int32 instance map at the input image's resolution, ids 1..K.
        table: per-nucleus columns :data:`ircr.io.writers.TABLE_COLUMNS`, each (K,) array,
            row i describing instance ``table["id"][i]``.
        prob: (H, W) float32 NP foreground probability.
        mpp: microns per pixel of the input (None if unknown); mpp_source: "file", "--mpp",
            "argument" or "assumed" (the model's); processing_mpp: resolution the network ran at.
        timings: seconds per stage; stats: stitching counters; image: the (H, W, 3) input.
    """

    inst: np.ndarray
    table: dict[str, np.ndarray]
    prob: np.ndarray
    mpp: float | None
    mpp_source: str
    processing_mpp: float | None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    image: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.table["id"]))

    def __repr__(self) -> str:
        h, w = self.inst.shape
        mpp = f"{self.mpp:g} µm/px ({self.mpp_source})" if self.mpp else "unknown mpp"
        total = sum(self.timings.values())
        return (f"SegmentResult({len(self)} nuclei, {w}x{h} px, {mpp}, "
                f"{total:.1f} s; fields inst, table, prob, image, timings, stats)")
