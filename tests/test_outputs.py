"""The output registry of ``ircr segment`` (engine/outputs.py): the built-in formats, and a
new format added from one place reaches the tile path, the slide path and ``--outputs``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ircr.cli.main import main
from ircr.engine import outputs as registry
from ircr.engine.outputs import (
    OutputFormat,
    SlideFrame,
    SlideSink,
    TileNuclei,
    check_outputs,
    output_names,
    register_output,
)
from ircr.engine.result import SegmentResult
from ircr.errors import IrcrError
from ircr.io.atomic import atomic_write_text
from test_segment import make_slide
from test_segment_faults import dark_segmenter


class _CountSink(SlideSink):
    def __init__(self, path: Path, frame: SlideFrame) -> None:
        self.path, self.ids = path, []

    def add(self, nuclei: TileNuclei) -> None:
        self.ids += [int(i) + nuclei.id_offset for i in nuclei.table["id"]]

    def close(self) -> None:
        atomic_write_text(self.path, f"{len(self.ids)} {max(self.ids, default=0)}\n")


def _count_tile(path: Path, res: SegmentResult) -> None:
    atomic_write_text(path, f"{len(res)} {int(res.inst.max())}\n")


@pytest.fixture
def count_format() -> Iterator[OutputFormat]:
    fmt = register_output(OutputFormat("count", "_count.txt", "nucleus count", 50,
                                       write_tile=_count_tile, open_slide=_CountSink))
    yield fmt
    registry._FORMATS.pop("count")


def test_builtin_formats_in_writing_order() -> None:
    assert output_names() == ("labels", "geojson", "csv", "overlay", "summary")
    assert [f.suffix for f in check_outputs(["summary", "csv"])] == [".csv", "_summary.json"]
    with pytest.raises(IrcrError, match=r"--outputs: unknown output 'pdf' \(choose from "
                                        r"labels, geojson, csv, overlay, summary\)"):
        check_outputs(["csv", "pdf"])
    with pytest.raises(ValueError, match="write_tile and open_slide, or write_summary"):
        OutputFormat("x", ".x", "x", 1, write_tile=_count_tile)


def test_a_registered_format_reaches_tiles_slides_and_the_cli(count_format: OutputFormat,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys) -> None:
    assert output_names()[-2:] == ("count", "summary")  # order 50: before the summary
    slide = tmp_path / "slide.tif"
    image, _ = make_slide(slide, 0.25, 3, shape=(256, 320), region=(16, 16, 224, 288))
    seg = dark_segmenter()
    tile = tmp_path / "tile.png"
    from PIL import Image

    Image.fromarray(image).save(tile)
    s = seg.process(tile, tmp_path / "a", outputs=["count", "summary"], mpp=0.25)
    n, top = (int(v) for v in (tmp_path / "a" / "tile_count.txt").read_text().split())
    assert s["n_nuclei"] == n > 0 and s["outputs"]["count"].endswith("tile_count.txt")
    s = seg.process(slide, tmp_path / "b", outputs=["count", "csv"], tissue=False)
    n, top = (int(v) for v in (tmp_path / "b" / "slide_count.txt").read_text().split())
    rows = (tmp_path / "b" / "slide.csv").read_text().splitlines()[1:]
    assert s["n_nuclei"] == n == len(rows) == top > 0  # slide-wide ids 1..n
    monkeypatch.setattr("ircr.engine.segmenter.load_model", lambda *a, **k: seg)
    assert main(["segment", "MODEL", str(tile), "-o", str(tmp_path / "c"),
                 "--outputs", "count", "--mpp", "0.25", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tile_count.txt"]
    assert main(["segment", "MODEL", str(tile), "-o", str(tmp_path / "d"),
                 "--outputs", "count,bogus"]) == 2
    assert "choose from labels, geojson, csv, overlay, count, summary" in capsys.readouterr().err
    monkeypatch.undo()
    assert not np.any([p.name.startswith(".") for p in (tmp_path / "b").iterdir()])
