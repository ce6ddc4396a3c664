"""The output registry of ``ircr segment``: name -> file suffix, tile writer, slide sink.

Every output format is one module in :mod:`ircr.engine.formats` that calls
:func:`register_output` with an :class:`OutputFormat` (the package is scanned on first use,
so adding a format edits no other file). The tile path (:meth:`NucleusSegmenter.process` on an
image), the streaming slide path (:mod:`ircr.engine.slide`) and the CLI's ``--outputs``
validation all read this registry.

A format provides either

* ``write_tile(path, result)`` (the whole :class:`~ircr.engine.result.SegmentResult` of an
  image) and ``open_slide(path, frame) -> SlideSink`` (a streaming sink for whole slides), or
* ``write_summary(path, summary)``: formats written last, from the run's summary dict (the
  summary JSON marks an input done, so it is always written after every other output).

Every file must be written atomically (:mod:`ircr.io.atomic`): renamed into place only when
complete, so an output that exists is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ircr.engine.measure import geojson_features
from ircr.engine.result import SegmentResult
from ircr.errors import IrcrError
from ircr.io.paths import child_path
from ircr.plugins import import_plugins


@dataclass
class TileNuclei:
    """The nuclei a slide tile adds (each nucleus is reported by exactly one tile).

    Attributes:
        labels: (h, w) int32 instance map of the tile's new nuclei, ids 1..K local to it.
        table: per-nucleus columns (:func:`ircr.engine.measure.nucleus_table`), positions
            already in level-0 slide pixels, ids local.
        id_offset: add to local ids for the slide-wide ids (label image, CSV, GeoJSON).
        origin: (x, y) of ``labels``' top-left corner in processing pixels.
        scale: level-0 pixels per processing pixel.
        bounds: (width, height) of the slide in level-0 pixels (outlines are clipped to it).
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    id_offset: int
    origin: tuple[float, float]
    scale: float
    bounds: tuple[float, float] | None = None
    _features: list[dict[str, Any]] | None = field(default=None, repr=False)

    def features(self) -> list[dict[str, Any]]:
        """QuPath GeoJSON features of these nuclei in level-0 pixels (computed once)."""
        if self._features is None:
            self._features = geojson_features(self.labels, self.table, offset_xy=self.origin,
                                              scale=self.scale, id_offset=self.id_offset,
                                              bounds_xy=self.bounds)
        return self._features


@dataclass
class SlideFrame:
    """What a slide sink may need to know when it opens.

    Attributes:
        height, width: processing frame in pixels (the label image's size).
        mpp: µm per processing pixel (None = unknown).
        thumbnail: (h, w, 3) uint8 RGB slide thumbnail; thumb_scale: thumbnail px per level-0 px.
    """

    height: int
    width: int
    mpp: float | None
    thumbnail: np.ndarray
    thumb_scale: float


class SlideSink:
    """A streaming output of one slide. ``add`` per tile (raster order), then ``close``;
    ``abort`` drops unfinished files (interrupt or error). A sink with ``wants_bands`` gets
    the finished label rows instead, via ``write_bands`` (at most one such sink per run)."""

    wants_bands: ClassVar[bool] = False

    def add(self, nuclei: TileNuclei) -> None:
        """Append one tile's nuclei."""

    def write_bands(self, bands: Iterable[np.ndarray]) -> None:
        """Consume every (rows, width) int32 band of the stitched label image, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish: the file is renamed into place complete."""

    def abort(self) -> None:
        """Drop unfinished files."""


@dataclass(frozen=True)
class OutputFormat:
    """One output of ``ircr segment`` (see the module docstring).

    Attributes:
        name: the ``--outputs`` name; suffix: appended to the input's stem for the file name.
        help: a few words for messages; order: writing order (summary-like formats last).
    """

    name: str
    suffix: str
    help: str
    order: int
    write_tile: Callable[[Path, SegmentResult], None] | None = None
    open_slide: Callable[[Path, SlideFrame], SlideSink] | None = None
    write_summary: Callable[[Path, dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        streaming = self.write_tile is not None and self.open_slide is not None
        if streaming == (self.write_summary is not None):
            raise ValueError(f"output '{self.name}': give write_tile and open_slide, or "
                             "write_summary")


_FORMATS: dict[str, OutputFormat] = {}
_loaded = False


def register_output(fmt: OutputFormat) -> OutputFormat:
    """Add ``fmt`` to the registry (its module calls this at import)."""
    if fmt.name in _FORMATS and _FORMATS[fmt.name] != fmt:
        raise ValueError(f"output format '{fmt.name}' is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def _load() -> None:
    global _loaded
    if _loaded:
        return
    import_plugins("ircr.engine.formats")
    _loaded = True


def output_formats() -> list[OutputFormat]:
    """Every registered format in writing order."""
    _load()
    return sorted(_FORMATS.values(), key=lambda f: (f.order, f.name))


def output_names() -> tuple[str, ...]:
    """Every output name in writing order (the default of ``--outputs``)."""
    return tuple(f.name for f in output_formats())


def check_outputs(outputs: Sequence[str], key: str = "--outputs",
                  raw: str | None = None) -> list[OutputFormat]:
    """The formats named in ``outputs`` (writing order); ``raw``: the text the user typed.

    Raises:
        IrcrError: an unknown name, or none at all.
    """
    names = output_names()
    bad = [o for o in outputs if o not in names]
    if bad or not outputs:
        shown = bad[0] if bad else (raw if raw is not None else ",".join(outputs))
        raise IrcrError(f"{key}: unknown output '{shown}' "
                        f"(choose from {', '.join(names)})")
    return [f for f in output_formats() if f.name in outputs]


def output_files(out: Path, stem: str, outputs: Sequence[str]) -> dict[str, Path]:
    """Final path of each selected output of input ``stem`` (checked to stay in ``out``)."""
    return {f.name: child_path(out, stem + f.suffix) for f in output_formats()
            if f.name in outputs}


def finished_summary(files: dict[str, Path]) -> dict[str, Any] | None:
    """The summary of a finished earlier run with these outputs, or None when not done.

    Done means: every selected output exists (each is renamed into place only when complete)
    and, when a summary is selected, it is readable JSON (it is written last).
    """
    if not files or not all(f.is_file() for f in files.values()):
        return None
    if "summary" not in files:
        return {"n_nuclei": None, "outputs": {k: str(v) for k, v in files.items()}}
    try:
        doc = json.loads(files["summary"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
