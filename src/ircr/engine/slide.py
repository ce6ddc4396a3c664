"""Streaming whole-slide segmentation (called by :meth:`NucleusSegmenter.process`).

Pipeline per tile (raster order, background tiles skipped by the thumbnail tissue mask):
read the read window from the best pyramid level and resize it to the model's resolution
(a background thread reads the next tile while the network runs) -> network
(:func:`predict_maps`) -> WBIS (a small thread pool, so post-processing overlaps the network)
-> stitch (:class:`ircr.engine.tiling.Stitcher`, in order) -> per-nucleus table and polygons,
appended to the CSV/GeoJSON files and drawn on the thumbnail overlay; finished label rows go
straight into the tiled pyramidal TIFF.

Memory: one band of ``tile + margin`` label rows (full width), a few tiles in flight, the
thumbnail, and the label sub-resolution levels as compressed tiles; nothing grows with the
slide's height. Coordinates in GeoJSON/CSV are level-0 slide pixels; the label TIFF is at the
processing resolution (its pixel size is in the resolution tags and the summary).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ircr.engine.segment import (
    MAX_INMEMORY_PIXELS,
    Timer,
    check_processing_size,
    geojson_features,
    nucleus_table,
    rescale_factor,
    resize_image,
)
from ircr.engine.tiling import Stitcher, Tile, tile_grid
from ircr.engine.tissue import region_has_tissue, tissue_mask
from ircr.io import writers as wr
from ircr.io.outlines import geometry_rings
from ircr.io.wsi import Slide, open_slide

if TYPE_CHECKING:  # pragma: no cover
    from ircr.engine.segment import NucleusSegmenter

THUMB_SIZE = 2048


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

    def read(self, slide: Slide, t: Tile) -> np.ndarray:
        """(h, w, 3) uint8 read window of tile ``t`` at the processing resolution."""
        y0, x0, y1, x1 = t.read
        lw, lh = self.level_size
        lx0, ly0 = int(math.floor(x0 * self.f)), int(math.floor(y0 * self.f))
        lx1 = min(lw, max(lx0 + 1, int(math.ceil(x1 * self.f))))
        ly1 = min(lh, max(ly0 + 1, int(math.ceil(y1 * self.f))))
        region = slide.read_region(round(lx0 * self.d), round(ly0 * self.d), self.level,
                                   lx1 - lx0, ly1 - ly0)
        return resize_image(region, y1 - y0, x1 - x0)


def _tiles_in_flight(seg: NucleusSegmenter, slide: Slide, geo: _Geometry, todo: list[Tile],
                     times: dict[str, float]) -> Iterator[tuple[Tile, np.ndarray, np.ndarray,
                                                                np.ndarray]]:
    """Yield (tile, window image, prob, local instance map) in order, pipelined."""
    workers = seg.workers

    def read(t: Tile) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        return geo.read(slide, t), time.perf_counter() - t0

    def post(prob: np.ndarray, hv: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        return seg.postprocess(prob, hv), time.perf_counter() - t0

    pending: deque[tuple[Tile, np.ndarray, np.ndarray, Future[Any]]] = deque()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(workers) as pool:
        nxt = reader.submit(read, todo[0]) if todo else None
        for i, t in enumerate(todo):
            assert nxt is not None
            window, dt = nxt.result()
            times["read"] += dt
            nxt = reader.submit(read, todo[i + 1]) if i + 1 < len(todo) else None
            t0 = time.perf_counter()
            prob, hv = seg.predict(window)
            times["network"] += time.perf_counter() - t0
            pending.append((t, window, prob, pool.submit(post, prob, hv)))
            while pending and (len(pending) > workers or pending[0][3].done()):
                pt, pw, pp, fut = pending.popleft()
                local, dt = fut.result()
                times["postprocess"] += dt
                yield pt, pw, pp, local
        while pending:
            pt, pw, pp, fut = pending.popleft()
            local, dt = fut.result()
            times["postprocess"] += dt
            yield pt, pw, pp, local


class _Sinks:
    """The per-nucleus outputs of one slide (CSV, GeoJSON, thumbnail overlay)."""

    def __init__(self, out: Path, stem: str, outputs: Sequence[str], thumb: np.ndarray,
                 tscale: float) -> None:
        self.csv = wr.CSVWriter(out / f"{stem}.csv") if "csv" in outputs else None
        self.geo = wr.GeoJSONWriter(out / f"{stem}.geojson") if "geojson" in outputs else None
        self.canvas = thumb.copy() if "overlay" in outputs else None
        self.tscale = tscale
        self.count = 0

    def add(self, labels: np.ndarray, table: dict[str, np.ndarray], id_offset: int,
            origin: tuple[int, int], s: float) -> None:
        self.count += len(table["id"])
        if self.geo is not None or self.canvas is not None:
            feats = geojson_features(labels, table, offset_xy=origin, scale=s, id_offset=id_offset)
            if self.geo is not None:
                self.geo.add(feats)
            if self.canvas is not None:
                rings = [r for f in feats for r in geometry_rings(f["geometry"])]
                wr.draw_polygons(self.canvas, rings, self.tscale)
        if self.csv is not None:
            self.csv.add(dict(table, id=table["id"] + id_offset))

    def close(self) -> None:
        for w in (self.csv, self.geo):
            if w is not None:
                w.close()

    def abort(self) -> None:
        """Drop the unfinished files (interrupted or failed slide)."""
        for w in (self.csv, self.geo):
            if w is not None:
                w.abort()


def _measure(seg: NucleusSegmenter, res: Any, t: Tile, window: np.ndarray, prob: np.ndarray,
             geo: _Geometry) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Table of one tile's new instances (ids made local to keep arrays small)."""
    base = int(res.ids[0]) - 1
    labels = np.where(res.labels > 0, res.labels - base, 0).astype(np.int32)
    oy = t.core[0] - t.read[0]
    table = nucleus_table(window[oy:], labels, prob[oy:], geo.proc_mpp, seg.prior,
                          coord_scale=geo.s, offset_xy=(res.origin_x, res.origin_y))
    return labels, table, base


def run_slide(seg: NucleusSegmenter, path: Path, out: Path, stem: str, outputs: Sequence[str],
              mpp: float | None, use_tissue: bool = True, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Segment one whole-slide image, streaming every output; returns the summary."""
    timer = Timer()
    t_start = time.perf_counter()
    with open_slide(path, mpp=mpp) as slide:
        in_mpp, src = seg._resolve_mpp(str(path), slide.mpp, mpp, slide=True)
        geo = _Geometry(slide, in_mpp, seg.model_mpp)
        w0, h0 = slide.dimensions
        check_processing_size(str(path), (w0, h0), (geo.width, geo.height),
                              max(MAX_INMEMORY_PIXELS, 16 * w0 * h0), in_mpp, seg.model_mpp)
        with timer("tissue"):
            thumb, tscale = slide.thumbnail(THUMB_SIZE)
            mask = tissue_mask(thumb) if use_tissue else np.ones(thumb.shape[:2], bool)
        tiles = tile_grid(geo.height, geo.width, seg.tile, seg.margin)
        todo = [t for t in tiles if region_has_tissue(mask, tscale * geo.s, *t.core)]
        if log:
            log(f"{path}: {w0}x{h0} px, {in_mpp} µm/px ({src}); level {geo.level}, processing "
                f"{geo.width}x{geo.height} px at {geo.proc_mpp} µm/px; tissue "
                f"{mask.mean():.0%} of the thumbnail; {len(todo)}/{len(tiles)} tiles")
        stitcher = Stitcher(geo.height, geo.width, seg.tile, seg.margin, streaming=True)
        sinks = _Sinks(out, stem, outputs, thumb, tscale)
        times = {"read": 0.0, "network": 0.0, "postprocess": 0.0}

        def bands() -> Iterator[np.ndarray]:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="tile", disable=not progress, desc=stem)
            for t, window, prob, local in _tiles_in_flight(seg, slide, geo, todo, times):
                yield from stitcher.pop_final(t.core[0])
                with timer("stitch"):
                    res = stitcher.add(t, local)
                if res.ids.size:
                    with timer("measure"):
                        labels, table, base = _measure(seg, res, t, window, prob, geo)
                    with timer("write"):
                        sinks.add(labels, table, base, (res.origin_x, res.origin_y), geo.s)
                bar.update(1)
                bar.set_postfix({k: f"{v:.0f}s" for k, v in {**times, **timer.totals}.items()},
                                refresh=False)
            bar.close()
            yield from stitcher.pop_final(geo.height)

        try:
            if "labels" in outputs:
                wr.LabelPyramidWriter(out / f"{stem}_labels.tif", geo.height, geo.width,
                                      geo.proc_mpp).write(bands())
            else:
                for _ in bands():
                    pass
        except BaseException:
            sinks.abort()  # an interrupted slide leaves no complete-looking CSV/GeoJSON
            raise
        sinks.close()
        t0 = time.perf_counter()
        if sinks.canvas is not None:
            wr.write_png(out / f"{stem}_overlay.png", sinks.canvas)
        timer.totals["write"] = timer.totals.get("write", 0.0) + time.perf_counter() - t0
    total = time.perf_counter() - t_start
    state = {"slide": slide, "geo": geo, "src": src, "in_mpp": in_mpp, "mask": mask,
             "tscale": tscale, "tiles": tiles, "todo": todo, "stitcher": stitcher,
             "sinks": sinks, "times": times, "timer": timer, "total": total}
    return _slide_summary(seg, path, out, stem, outputs, state)


def _slide_summary(seg: NucleusSegmenter, path: Path, out: Path, stem: str,
                   outputs: Sequence[str], st: dict[str, Any]) -> dict[str, Any]:
    geo, mask, in_mpp = st["geo"], st["mask"], st["in_mpp"]
    w0, h0 = st["slide"].dimensions
    mm2_per_px0 = (in_mpp**2 / 1e6) if in_mpp else None
    tissue_mm2 = (float(mask.sum()) / st["tscale"] ** 2 * mm2_per_px0) if mm2_per_px0 else None
    # read and postprocess run in worker threads and overlap the network; the main thread's
    # remaining time is label-TIFF writing plus waiting for those workers
    timings = {**st["times"], **st["timer"].totals}
    main = sum(v for k, v in timings.items() if k not in ("read", "postprocess"))
    timings["labels_and_wait"] = max(0.0, st["total"] - main)
    timings = {k: round(v, 3) for k, v in timings.items()}
    timings["total"] = round(st["total"], 3)
    n = st["sinks"].count
    files = {k: str(out / name) for k, name in (
        ("labels", f"{stem}_labels.tif"), ("geojson", f"{stem}.geojson"),
        ("csv", f"{stem}.csv"), ("overlay", f"{stem}_overlay.png"),
        ("summary", f"{stem}_summary.json")) if k in outputs}
    summary = seg.summary_base(path, "slide", in_mpp, st["src"], geo.proc_mpp)
    summary.update(
        image_size_px=[w0, h0], level_used=geo.level, processing_size_px=[geo.width, geo.height],
        label_image_mpp=geo.proc_mpp, n_nuclei=n, area_mm2=(w0 * h0 * mm2_per_px0)
        if mm2_per_px0 else None, tissue_area_mm2=tissue_mm2,
        nuclei_per_mm2=(n / tissue_mm2) if tissue_mm2 else None,
        seconds_per_mm2_tissue=(st["total"] / tissue_mm2) if tissue_mm2 else None,
        tiles={"total": len(st["tiles"]), "processed": len(st["todo"]),
               "skipped_background": len(st["tiles"]) - len(st["todo"]),
               "processed_megapixels": sum((t.core[2] - t.core[0]) * (t.core[3] - t.core[1])
                                           for t in st["todo"]) * 1e-6},
        timings_s=timings, stitching=st["stitcher"].stats.as_dict(), outputs=files,
        warnings=[],
    )
    if "summary" in outputs:
        wr.write_summary_json(files["summary"], summary)
    return summary
