"""``geojson``: nucleus outlines with measurements as QuPath detections (FeatureCollection)."""

from __future__ import annotations

from pathlib import Path

from ircr.engine.measure import geojson_features
from ircr.engine.outputs import (
    OutputFormat,
    SlideFrame,
    SlideSink,
    TileNuclei,
    register_output,
)
from ircr.engine.result import SegmentResult
from ircr.io.writers import GeoJSONWriter


def _write_tile(path: Path, res: SegmentResult) -> None:
    with GeoJSONWriter(path) as gj:
        gj.add(geojson_features(res.inst, res.table))


class _GeoJSONSink(SlideSink):
    def __init__(self, path: Path, frame: SlideFrame) -> None:
        self.writer = GeoJSONWriter(path)

    def add(self, nuclei: TileNuclei) -> None:
        self.writer.add(nuclei.features())

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


register_output(OutputFormat("geojson", ".geojson", "QuPath GeoJSON", 20,
                             write_tile=_write_tile, open_slide=_GeoJSONSink))
