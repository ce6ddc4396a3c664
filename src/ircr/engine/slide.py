"""Streaming whole-slide segmentation (called by :meth:`NucleusSegmenter.process`).

Pipeline per tile (raster order, background tiles skipped by the thumbnail tissue mask):
read the read window from the best pyramid level and resize it to the model's resolution
(a background thread reads the next tile while the network runs) -> network
(:func:`launch_maps`: queued on the device; the main thread goes on with the next tile while
a worker waits for the maps' copy back, timed as ``network_wait``) -> WBIS (a small thread
pool, so post-processing overlaps the network)
-> stitch (:class:`ircr.engine.tiling.Stitcher`, in order) -> per-nucleus table, handed to the
slide sink of every selected output (:mod:`ircr.engine.outputs`: CSV/GeoJSON appended, outlines
drawn on the thumbnail overlay); finished label rows go to the output that wants bands (the
tiled pyramidal label TIFF).

The segmenter is any object with the :class:`TileSegmenter` attributes (no import of the
segmenter module: it imports this one). The summary fields come back as a typed
:class:`SlideRun`; the caller writes the summary (last).

Memory: one band of ``tile + margin`` label rows (full width), a few tiles in flight, the
thumbnail, and the label sub-resolution levels as compressed tiles; nothing grows with the
slide's height. Coordinates in GeoJSON/CSV are level-0 slide pixels (clipped to the slide);
the label TIFF is at the processing resolution (its pixel size is in the resolution tags and
the summary).

Density: every nucleus of a processed tile is written, but ``nuclei_per_mm2`` counts only the
nuclei whose centroid lies in the tissue mask (``n_nuclei_in_tissue``) and divides them by the
tissue area, so numerator and denominator cover the same area (``density_basis``). A slide
that is not brightfield RGB (:mod:`ircr.engine.plausibility`) is refused unless forced, and
objects far above nucleus size are dropped and counted (``dropped_oversized``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ircr.compat import M_ARENA_MAX, keep_freed_memory, mallopt
from ircr.engine.inputs import MAX_INMEMORY_PIXELS, output_stem
from ircr.engine.measure import nucleus_table
from ircr.engine.outputs import OutputFormat, SlideFrame, SlideSink, TileNuclei
from ircr.engine.plausibility import check_brightfield, dark_reason, drop_oversized, max_object_px
from ircr.engine.resolution import check_processing_size, resolve_mpp
from ircr.engine.tiling import Stitcher, Tile, TileResult, tile_grid
from ircr.engine.timer import Timer
from ircr.engine.tissue import region_has_tissue, tissue_mask
from ircr.inference.family import Prediction
from ircr.inference.scale import rescale_factor, resize_image
from ircr.io.wsi import Slide, non_rgb_reason, open_slide

THUMB_SIZE = 2048
MALLOC_ARENAS = 2  # glibc: per-thread heaps held 0.9 GB of freed memory on a 20k slide


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX``) before the worker threads start.

    The reader and post-processing threads otherwise each get their own heap, and freed
    window-sized buffers stay mapped in them: the peak RSS of a 20,000 x 20,000 px slide
    region was 2.6 GB with the default arenas, 1.6 GB with 2 (docs/benchmarks.md). No-op
    (False) where the C library is not glibc.
    """
    return mallopt({M_ARENA_MAX: int(n)})


DENSITY_BASIS = "nuclei whose centroid is in the tissue mask / tissue area"


class TileSegmenter(Protocol):
    """What the slide pipeline uses of a segmenter (:class:`NucleusSegmenter` has it)."""

    slide_tile: int
    margin: int
    workers: int
    prior: Any
    model_mpp: float | None
    compile: bool  # the network is compiled: slide tiles then share one window shape

    def for_slide(self, megapixels: float) -> TileSegmenter:
        """The segmenter (self or a variant) for a slide of ``megapixels`` of tissue tiles."""
        ...

    def predict(self, window: np.ndarray) -> Prediction:
        """Network part for one (h, w, 3) uint8 window (main thread)."""
        ...

    def predict_later(self, window: np.ndarray) -> Callable[[], Prediction]:
        """:meth:`predict` queued (main thread); the call waits for it (worker threads)."""
        ...

    def postprocess(self, pred: Prediction) -> np.ndarray:
        """Instance map (h, w) int32 of one window (worker threads)."""
        ...


@dataclass
class SlideRun:
    """What one slide run measured (the slide-specific fields of its summary)."""

    size: tuple[int, int]
    in_mpp: float | None
    mpp_source: str
    level: int
    processing_size: tuple[int, int]
    processing_mpp: float | None
    tissue_mm2: float | None
    reader: str
    n_tiles: int
    n_processed: int
    processed_megapixels: float
    n_nuclei: int
    n_in_tissue: int
    dropped_oversized: int
    stitching: dict[str, int]
    timings: dict[str, float]
    total_s: float

    def summary_fields(self) -> dict[str, Any]:
        """The summary keys of a slide (besides the common ones and ``outputs``)."""
        w0, h0 = self.size
        mm2_per_px0 = (self.in_mpp**2 / 1e6) if self.in_mpp else None
        tissue = self.tissue_mm2
        # read and postprocess run in worker threads and overlap the network; the main
        # thread's remaining time is label-TIFF writing plus waiting for those workers
        main = sum(v for k, v in self.timings.items()
                   if k not in ("read", "postprocess", "network_wait"))
        timings = {**self.timings, "labels_and_wait": max(0.0, self.total_s - main)}
        timings = {k: round(v, 3) for k, v in timings.items()}
        timings["total"] = round(self.total_s, 3)
        n = self.n_in_tissue
        return dict(
            image_size_px=[w0, h0], level_used=self.level, slide_reader=self.reader,
            processing_size_px=list(self.processing_size),
            label_image_mpp=self.processing_mpp, n_nuclei=self.n_nuclei,
            n_nuclei_in_tissue=n, dropped_oversized=self.dropped_oversized,
            area_mm2=(w0 * h0 * mm2_per_px0) if mm2_per_px0 else None,
            tissue_area_mm2=tissue, nuclei_per_mm2=(n / tissue) if tissue else None,
            density_basis=DENSITY_BASIS,
            seconds_per_mm2_tissue=(self.total_s / tissue) if tissue else None,
            tiles={"total": self.n_tiles, "processed": self.n_processed,
                   "skipped_background": self.n_tiles - self.n_processed,
                   "processed_megapixels": self.processed_megapixels},
            timings_s=timings, stitching=self.stitching,
        )


class _Geometry:
    """Processing frame of a slide: scale to level 0, pyramid level used, sizes."""

    def __init__(self, slide: Slide, in_mpp: float | None, model_mpp: float | None) -> None:
        self.s = 1.0 / rescale_factor(in_mpp, model_mpp)  # level-0 px per processing px
        w0, h0 = slide.dimensions
        self.width, self.height = max(1, round(w0 / self.s)), max(1, round(h0 / self.s))
        self.proc_mpp = in_mpp * self.s if in_mpp else None
        self.level = slide.best_level(self.s)
        self.d = slide.level_downsamples[self.level]
        self.f = self.s / self.d  # level px per processing px
        self.level_size = slide.level_dimensions[self.level]
        self.bounds = (float(w0), float(h0))
        self.max_px = max_object_px(self.proc_mpp)

    def read(self, slide: Slide, t: Tile) -> np.ndarray:
        """(h, w, 3) uint8 network window of tile ``t`` at the processing resolution."""
        y0, x0, y1, x1 = t.net
        lw, lh = self.level_size
        lx0, ly0 = int(math.floor(x0 * self.f)), int(math.floor(y0 * self.f))
        lx1 = min(lw, max(lx0 + 1, int(math.ceil(x1 * self.f))))
        ly1 = min(lh, max(ly0 + 1, int(math.ceil(y1 * self.f))))
        region = slide.read_region(round(lx0 * self.d), round(ly0 * self.d), self.level,
                                   lx1 - lx0, ly1 - ly0)
        return resize_image(region, y1 - y0, x1 - x0)


def _tiles_in_flight(seg: TileSegmenter, slide: Slide, geo: _Geometry, todo: list[Tile],
                     times: dict[str, float]) -> Iterator[tuple[Tile, np.ndarray, np.ndarray,
                                                                np.ndarray]]:
    """Yield (tile, window image, prob, local instance map) in order, pipelined."""
    workers = seg.workers

    def read(t: Tile) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        return geo.read(slide, t), time.perf_counter() - t0

    def post(t: Tile, cut: tuple[slice, slice], later: Callable[[], Prediction]
             ) -> tuple[np.ndarray, np.ndarray, float, float, int]:
        t0 = time.perf_counter()
        pred = later()  # waits for the device (the main thread queues the next window)
        t1 = time.perf_counter()
        y0, x0 = t.read[:2]
        core = (t.core[0] - y0, t.core[1] - x0, t.core[2] - y0, t.core[3] - x0)
        local, dropped = drop_oversized(seg.postprocess(pred)[cut], geo.max_px, core)
        return pred.prob[cut], local, t1 - t0, time.perf_counter() - t1, dropped

    def collect(fut: Future[Any]) -> tuple[np.ndarray, np.ndarray]:
        prob, local, wait, dt, dropped = fut.result()
        times["network_wait"] += wait
        times["postprocess"] += dt
        times["dropped_oversized"] += dropped
        return prob, local

    pending: deque[tuple[Tile, np.ndarray, Future[Any]]] = deque()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(workers) as pool:
        nxt = reader.submit(read, todo[0]) if todo else None
        for i, t in enumerate(todo):
            assert nxt is not None
            window, dt = nxt.result()
            times["read"] += dt
            nxt = reader.submit(read, todo[i + 1]) if i + 1 < len(todo) else None
            t0 = time.perf_counter()
            later = seg.predict_later(window)
            times["network"] += time.perf_counter() - t0
            cut = _in_read(t)
            pending.append((t, window[cut], pool.submit(post, t, cut, later)))
            while pending and (len(pending) > workers or pending[0][2].done()):
                pt, pw, fut = pending.popleft()
                yield (pt, pw, *collect(fut))
        while pending:
            pt, pw, fut = pending.popleft()
            yield (pt, pw, *collect(fut))


def _in_read(t: Tile) -> tuple[slice, slice]:
    """The tile's read window inside its network window (both boxes in image pixels)."""
    ny, nx = t.net[:2]
    y0, x0, y1, x1 = t.read
    return slice(y0 - ny, y1 - ny), slice(x0 - nx, x1 - nx)


def _measure(seg: TileSegmenter, res: TileResult, t: Tile, window: np.ndarray,
             prob: np.ndarray, geo: _Geometry) -> TileNuclei:
    """The new instances of one tile with their table (ids made local: small arrays)."""
    base = int(res.ids[0]) - 1
    labels = np.where(res.labels > 0, res.labels - base, 0).astype(np.int32)
    oy = t.core[0] - t.read[0]
    table = nucleus_table(window[oy:], labels, prob[oy:], geo.proc_mpp, seg.prior,
                          coord_scale=geo.s, offset_xy=(res.origin_x, res.origin_y),
                          bounds_xy=geo.bounds)
    return TileNuclei(labels, table, base, (res.origin_x, res.origin_y), geo.s, geo.bounds)


def _in_mask(table: dict[str, np.ndarray], mask: np.ndarray, scale: float) -> int:
    """How many nuclei have their centroid (level-0 px) in ``mask`` (thumbnail, ``scale``)."""
    h, w = mask.shape
    cols = np.clip((table["centroid_x_px"] * scale).astype(np.int64), 0, w - 1)
    rows = np.clip((table["centroid_y_px"] * scale).astype(np.int64), 0, h - 1)
    return int(mask[rows, cols].sum())


class _Sinks:
    """The selected outputs' slide sinks, fed together; aborted together on failure."""

    def __init__(self, formats: Sequence[OutputFormat], files: dict[str, Path],
                 frame: SlideFrame) -> None:
        self.sinks: list[SlideSink] = []
        try:
            for f in formats:
                if f.open_slide is not None:
                    self.sinks.append(f.open_slide(files[f.name], frame))
        except BaseException:
            self.abort()
            raise
        banded = [s for s in self.sinks if s.wants_bands]
        if len(banded) > 1:
            raise ValueError("at most one slide output may consume label bands")
        self.bands = banded[0] if banded else None

    def add(self, nuclei: TileNuclei) -> None:
        for s in self.sinks:
            s.add(nuclei)

    def close(self) -> None:
        for s in self.sinks:
            s.close()

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()


def _megapixels(tiles: Sequence[Tile]) -> float:
    """Megapixels of the tiles' cores (at the model's resolution)."""
    return sum((t.core[2] - t.core[0]) * (t.core[3] - t.core[1]) for t in tiles) * 1e-6


def _um(value: float | None) -> str:
    """A pixel size for messages: 4 significant digits (0.24999999999999997 -> 0.25)."""
    return "unknown" if value is None else f"{value:.4g}"


def run_slide(seg: TileSegmenter, path: Path, formats: Sequence[OutputFormat],
              files: dict[str, Path], mpp: float | None, use_tissue: bool = True,
              progress: bool = False, log: Callable[[str], None] | None = None,
              force: bool = False) -> SlideRun:
    """Segment one whole-slide image, streaming every selected output except the summary.

    Args:
        formats: the selected outputs (:func:`ircr.engine.outputs.check_outputs`); those with
            a slide sink are written here. files: output name -> final path.
        force: segment a slide that does not look like brightfield H&E (with a warning).
    """
    check_brightfield(str(path), non_rgb_reason(path, slide=True), force)
    limit_malloc_arenas()
    keep_freed_memory(False)  # bounded RSS over speed for slides (docs/benchmarks.md)
    timer = Timer()
    t_start = time.perf_counter()
    with open_slide(path, mpp=mpp) as slide:
        in_mpp, src = resolve_mpp(str(path), slide.mpp, mpp, seg.model_mpp, slide=True)
        geo = _Geometry(slide, in_mpp, seg.model_mpp)
        w0, h0 = slide.dimensions
        check_processing_size(str(path), (w0, h0), (geo.width, geo.height),
                              max(MAX_INMEMORY_PIXELS, 16 * w0 * h0), in_mpp, seg.model_mpp)
        with timer("tissue"):
            thumb, tscale = slide.thumbnail(THUMB_SIZE)
            check_brightfield(str(path), dark_reason(thumb), force)
            mask = tissue_mask(thumb) if use_tissue else np.ones(thumb.shape[:2], bool)
        tiles = tile_grid(geo.height, geo.width, seg.slide_tile, seg.margin)
        keep = [i for i, t in enumerate(tiles)
                if region_has_tissue(mask, tscale * geo.s, *t.core)]
        seg = seg.for_slide(_megapixels([tiles[i] for i in keep]))
        compiled = seg.compile
        if compiled:  # one graph per window shape: the same tiles, one network window shape
            tiles = tile_grid(geo.height, geo.width, seg.slide_tile, seg.margin, uniform=True)
        todo = [tiles[i] for i in keep]
        if log:
            log(f"{path}: {w0}x{h0} px, {_um(in_mpp)} µm/px ({src}); read with "
                f"{slide.backend}; level {geo.level}, processing {geo.width}x{geo.height} px "
                f"at {_um(geo.proc_mpp)} µm/px; tissue {mask.mean():.0%} of the thumbnail; "
                f"{len(todo)}/{len(tiles)} tiles ({_megapixels(todo):.0f} MP)"
                + ("; compiled network" if compiled else ""))
        stitcher = Stitcher(geo.height, geo.width, seg.slide_tile, seg.margin,
                            streaming=True)
        sinks = _Sinks(formats, files, SlideFrame(geo.height, geo.width, geo.proc_mpp, thumb,
                                                  tscale))
        times = {"read": 0.0, "network": 0.0, "network_wait": 0.0, "postprocess": 0.0,
                 "dropped_oversized": 0.0}
        count = in_tissue = 0

        def bands() -> Iterator[np.ndarray]:
            nonlocal count, in_tissue
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="tile", disable=not progress,
                       desc=output_stem(path))
            for t, window, prob, local in _tiles_in_flight(seg, slide, geo, todo, times):
                yield from stitcher.pop_final(t.core[0])
                with timer("stitch"):
                    res = stitcher.add(t, local)
                if res.ids.size:
                    with timer("measure"):
                        nuclei = _measure(seg, res, t, window, prob, geo)
                    count += len(nuclei.table["id"])
                    in_tissue += _in_mask(nuclei.table, mask, tscale)
                    with timer("write"):
                        sinks.add(nuclei)
                bar.update(1)
                bar.set_postfix({k: f"{v:.0f}s" for k, v in {**times, **timer.totals}.items()
                                 if k != "dropped_oversized"}, refresh=False)
            bar.close()
            yield from stitcher.pop_final(geo.height)

        try:
            if sinks.bands is not None:
                sinks.bands.write_bands(bands())
            else:
                for _ in bands():
                    pass
            with timer("write"):
                sinks.close()
        except BaseException:
            sinks.abort()  # an interrupted slide leaves no complete-looking CSV/GeoJSON
            raise
    total = time.perf_counter() - t_start
    dropped = int(times.pop("dropped_oversized"))
    mm2_per_px0 = (in_mpp**2 / 1e6) if in_mpp else None
    return SlideRun(
        size=(w0, h0), in_mpp=in_mpp, mpp_source=src, level=geo.level,
        processing_size=(geo.width, geo.height), processing_mpp=geo.proc_mpp,
        tissue_mm2=(float(mask.sum()) / tscale**2 * mm2_per_px0) if mm2_per_px0 else None,
        reader=slide.backend, n_tiles=len(tiles), n_processed=len(todo),
        processed_megapixels=_megapixels(todo),
        n_nuclei=count, n_in_tissue=in_tissue, dropped_oversized=dropped,
        stitching=stitcher.stats.as_dict(),
        timings={**times, **timer.totals}, total_s=total)
