"""``overlay``: outlines drawn on the image (tiles) or on the slide thumbnail (slides), PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ircr.engine.outputs import (
    OutputFormat,
    SlideFrame,
    SlideSink,
    TileNuclei,
    register_output,
)
from ircr.engine.result import SegmentResult
from ircr.io.outlines import geometry_rings
from ircr.io.writers import draw_polygons, overlay_image, write_png


def _write_tile(path: Path, res: SegmentResult) -> None:
    image = res.image if res.image is not None else np.zeros((*res.inst.shape, 3), np.uint8)
    write_png(path, overlay_image(image, res.inst))


class _OverlaySink(SlideSink):
    def __init__(self, path: Path, frame: SlideFrame) -> None:
        self.path = path
        self.canvas = frame.thumbnail.copy()
        self.scale = frame.thumb_scale

    def add(self, nuclei: TileNuclei) -> None:
        rings = [r for f in nuclei.features() for r in geometry_rings(f["geometry"])]
        draw_polygons(self.canvas, rings, self.scale)

    def close(self) -> None:
        write_png(self.path, self.canvas)


register_output(OutputFormat("overlay", "_overlay.png", "overlay PNG", 40,
                             write_tile=_write_tile, open_slide=_OverlaySink))
