"""``csv``: one row per nucleus (:data:`ircr.io.writers.TABLE_COLUMNS`)."""

from __future__ import annotations

from pathlib import Path

from ircr.engine.outputs import (
    OutputFormat,
    SlideFrame,
    SlideSink,
    TileNuclei,
    register_output,
)
from ircr.engine.result import SegmentResult
from ircr.io.writers import CSVWriter


def _write_tile(path: Path, res: SegmentResult) -> None:
    with CSVWriter(path) as cw:
        cw.add(res.table)


class _CSVSink(SlideSink):
    def __init__(self, path: Path, frame: SlideFrame) -> None:
        self.writer = CSVWriter(path)

    def add(self, nuclei: TileNuclei) -> None:
        self.writer.add(dict(nuclei.table, id=nuclei.table["id"] + nuclei.id_offset))

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


register_output(OutputFormat("csv", ".csv", "per-nucleus table (CSV)", 30,
                             write_tile=_write_tile, open_slide=_CSVSink))
