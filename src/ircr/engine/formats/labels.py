"""``labels``: the instance map as a label TIFF (tiles) or tiled pyramidal BigTIFF (slides)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ircr.engine.outputs import OutputFormat, SlideFrame, SlideSink, register_output
from ircr.engine.result import SegmentResult
from ircr.io.writers import LabelPyramidWriter, write_label_tiff


def _write_tile(path: Path, res: SegmentResult) -> None:
    write_label_tiff(path, res.inst, res.mpp)


class _LabelSink(SlideSink):
    wants_bands = True

    def __init__(self, path: Path, frame: SlideFrame) -> None:
        self.writer = LabelPyramidWriter(path, frame.height, frame.width, frame.mpp)

    def write_bands(self, bands: Iterable[np.ndarray]) -> None:
        self.writer.write(iter(bands))


register_output(OutputFormat("labels", "_labels.tif", "label image (TIFF)", 10,
                             write_tile=_write_tile, open_slide=_LabelSink))
