"""Output writers of the segmentation engine.

* Instance label image: compressed (deflate) int32 TIFF with the pixel size in the resolution
  tags; for slides a tiled, pyramidal BigTIFF written as bands arrive
  (:class:`LabelPyramidWriter`).
* GeoJSON FeatureCollection of nucleus polygons that QuPath (0.4+) imports as detections
  (``File > Import objects from file``): each feature has a UUID ``id``, a closed ``Polygon``
  in full-resolution pixel coordinates (x right, y down, origin at the top-left corner of the
  top-left pixel) and ``properties`` ``objectType: "detection"``, ``classification``
  ``{"name": "Nucleus", "color": [r, g, b]}`` and a ``measurements`` mapping. Written
  incrementally (:class:`GeoJSONWriter`).
* CSV, one row per nucleus, columns :data:`TABLE_COLUMNS` (:class:`CSVWriter`).
* Overlay PNG: instance outlines drawn on the image (or on a slide thumbnail).
* JSON summary.

Every file is written under a temporary name and renamed when complete
(:mod:`ircr.io.atomic`): a file with its final name is always complete. The streaming writers
commit on :meth:`close` and remove their temporary file on :meth:`abort` (or when their
``with`` block ends with an exception). Write errors are one-line IrcrErrors naming the file.

Shapes: the exact pixel-edge outline of each nucleus (:mod:`ircr.io.outlines`): its area is
the nucleus' pixel count, concavities and holes are kept, and a nucleus whose parts touch only
at a corner is written as a ``MultiPolygon`` (QuPath reads both).
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import cv2
import numpy as np
import tifffile

from ircr.errors import file_error
from ircr.io.atomic import AtomicPath, atomic_write, atomic_write_bytes, atomic_write_text
from ircr.io.outlines import Polygon, geojson_geometry, mask_outline, transform_outline

TABLE_COLUMNS = (
    "id", "centroid_x_px", "centroid_y_px", "centroid_x_um", "centroid_y_um",
    "bbox_x0_px", "bbox_y0_px", "bbox_x1_px", "bbox_y1_px", "area_px", "area_um2",
    "perimeter_px", "perimeter_um", "solidity", "circularity", "eccentricity",
    "haematoxylin", "prior_score", "np_prob_mean",
)
# CSV column -> QuPath measurement name written into GeoJSON properties.
MEASUREMENTS = {
    "area_um2": "Area µm^2", "perimeter_um": "Perimeter µm", "solidity": "Solidity",
    "circularity": "Circularity", "eccentricity": "Eccentricity",
    "haematoxylin": "Hematoxylin OD mean", "prior_score": "Prior score",
    "np_prob_mean": "NP probability mean",
}
NUCLEUS_COLOR = (0, 200, 0)


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """Exterior ring of the largest 4-connected part of a binary mask (pixel-edge outline).

    Use :func:`ircr.io.outlines.mask_outline` for the exact outline (all parts, holes); this
    single ring is what overlays draw.

    Args:
        mask: (h, w) bool, at least one pixel.

    Returns:
        (n + 1, 2) float64 closed ring of (x, y) in the mask's corner-origin pixel frame.
    """
    polys = mask_outline(mask)
    if not polys:
        raise ValueError("mask_polygon: empty mask")
    return polys[0][0]


def instance_outlines(labels: np.ndarray, ids: Iterable[int]) -> dict[int, list[Polygon]]:
    """Exact outline (:func:`ircr.io.outlines.mask_outline`) of each id, in the map's frame.

    Args:
        labels: (h, w) integer instance map.
        ids: instance ids to outline (ids absent from the map are skipped).
    """
    from scipy import ndimage as ndi

    wanted = {int(i) for i in ids}
    out: dict[int, list[Polygon]] = {}
    if not wanted:
        return out
    lab = np.asarray(labels)
    lo = min(wanted)
    shifted = np.where(lab >= lo, lab - lo + 1, 0).astype(np.int64)
    for k, sl in enumerate(ndi.find_objects(shifted), start=lo):
        if sl is None or k not in wanted:
            continue
        out[k] = transform_outline(mask_outline(lab[sl] == k), (sl[1].start, sl[0].start))
    return out


def instance_polygons(labels: np.ndarray, ids: Iterable[int]) -> dict[int, np.ndarray]:
    """Exterior ring of the largest part of each id (see :func:`mask_polygon`)."""
    return {k: polys[0][0] for k, polys in instance_outlines(labels, ids).items()}


def detection_feature(shape: np.ndarray | list[Polygon], measurements: Mapping[str, float],
                      name: str = "Nucleus") -> dict[str, Any]:
    """QuPath detection GeoJSON feature with measurements.

    Args:
        shape: an outline (list of ``[exterior, *holes]``, a ``MultiPolygon`` when it has
            several parts) or a single closed ring (x, y).
        measurements: QuPath measurement name -> value; NaN/inf are left out (JSON has no NaN).
    """
    polys = [[shape]] if isinstance(shape, np.ndarray) else shape
    meas = {k: round(float(v), 4) for k, v in measurements.items() if math.isfinite(float(v))}
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geojson_geometry(polys),
        "properties": {
            "objectType": "detection",
            "classification": {"name": name, "color": list(NUCLEUS_COLOR)},
            "isLocked": False,
            "measurements": meas,
        },
    }


class _StreamFile:
    """A text file written under a temporary name, renamed onto ``path`` by :meth:`close`."""

    def __init__(self, path: str | Path, newline: str | None = None) -> None:
        self.path = Path(path)
        self.count = 0
        self._atomic = AtomicPath(self.path)
        try:
            self._fh: TextIO | None = self._atomic.tmp.open("w", encoding="utf-8",
                                                             newline=newline)
        except OSError as exc:
            raise file_error(self.path, f"cannot write ({exc.strerror or exc})") from None

    def _write(self, text: str) -> None:
        assert self._fh is not None, "writer is closed"
        try:
            self._fh.write(text)
        except OSError as exc:
            self.abort()
            raise file_error(self.path, f"cannot write ({exc.strerror or exc})") from None

    def _footer(self) -> str:
        return ""

    def close(self) -> None:
        """Finish the file and give it its final name."""
        if self._fh is None:
            return
        try:
            self._fh.write(self._footer())
            self._fh.close()
        except OSError as exc:
            self.abort()
            raise file_error(self.path, f"cannot write ({exc.strerror or exc})") from None
        self._fh = None
        self._atomic.commit()

    def abort(self) -> None:
        """Drop the unfinished file (an existing file at ``path`` is left as it was)."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        self._atomic.abort()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


class GeoJSONWriter(_StreamFile):
    """Streams a GeoJSON FeatureCollection to disk, one feature at a time."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._write('{"type": "FeatureCollection", "features": [\n')

    def add(self, features: Iterable[Mapping[str, Any]]) -> None:
        """Append features (GeoJSON dicts)."""
        for feat in features:
            sep = ",\n" if self.count else ""
            self._write(sep + json.dumps(feat, separators=(",", ":"), ensure_ascii=False))
            self.count += 1

    def _footer(self) -> str:
        return "\n]}\n"

    def __enter__(self) -> GeoJSONWriter:
        return self


def _fmt(v: Any) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if not math.isfinite(f):
        return ""
    return f"{f:.6g}" if abs(f) < 1e5 else f"{f:.2f}"


class CSVWriter(_StreamFile):
    """Streams the per-nucleus table (columns :data:`TABLE_COLUMNS`) to a CSV file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, newline="")
        self._write(_csv_rows([TABLE_COLUMNS]))

    def add(self, table: Mapping[str, np.ndarray]) -> None:
        """Append the rows of a columnar table (every column of :data:`TABLE_COLUMNS`)."""
        cols = [np.asarray(table[c]) for c in TABLE_COLUMNS]
        n = len(cols[0])
        self._write(_csv_rows([_fmt(c[i]) for c in cols] for i in range(n)))
        self.count += n

    def __enter__(self) -> CSVWriter:
        return self


def _csv_rows(rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _resolution(mpp: float | None) -> dict[str, Any]:
    if not mpp:
        return {}
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def write_label_tiff(path: str | Path, inst: np.ndarray, mpp: float | None = None) -> None:
    """Write an (H, W) instance map as a deflate-compressed int32 TIFF (tiled when large)."""
    inst = np.ascontiguousarray(inst, dtype=np.int32)
    tile = (256, 256) if inst.shape[0] * inst.shape[1] > 2048 * 2048 else None
    atomic_write(path, lambda tmp: tifffile.imwrite(
        str(tmp), inst, compression="zlib", tile=tile, photometric="minisblack", metadata=None,
        **_resolution(mpp)))


class LabelPyramidWriter:
    """Writes an (H, W) int32 label image as a tiled pyramidal BigTIFF from row bands.

    Full-resolution tiles go to disk as soon as a row of tiles is complete. Sub-resolution
    levels (nearest-neighbour, factor 2 per level, as SubIFDs, down to ~``min_size`` px) are
    kept as *compressed* tiles in memory until the end (about a third of the output size) and
    written after the base level.
    """

    def __init__(self, path: str | Path, height: int, width: int, mpp: float | None = None,
                 tile: int = 256, min_size: int = 256) -> None:
        self.path, self.height, self.width = Path(path), height, width
        self.mpp, self.tile = mpp, tile
        self.factors: list[int] = []
        f = 2
        while max(math.ceil(height / f), math.ceil(width / f)) >= min_size:
            self.factors.append(f)
            f *= 2
        self._sub_tiles: list[list[bytes]] = [[] for _ in self.factors]
        self._sub_rows: list[list[np.ndarray]] = [[] for _ in self.factors]
        self._rows = 0

    def _tiles_of(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        t = self.tile
        for x in range(0, rows.shape[1], t):
            block = rows[:, x:x + t]
            if block.shape != (t, t):
                block = np.pad(block, ((0, t - block.shape[0]), (0, t - block.shape[1])))
            yield np.ascontiguousarray(block, dtype=np.int32)

    def _feed_levels(self, band: np.ndarray, y0: int, final: bool) -> None:
        for k, f in enumerate(self.factors):
            first = (-y0) % f
            sub = band[first::f, ::f]
            if sub.size:
                self._sub_rows[k].append(sub)
            pending = np.concatenate(self._sub_rows[k]) if self._sub_rows[k] else band[:0, ::f]
            while pending.shape[0] >= self.tile or (final and pending.shape[0] > 0):
                rows, pending = pending[: self.tile], pending[self.tile:]
                for blk in self._tiles_of(rows):
                    self._sub_tiles[k].append(zlib.compress(blk.astype("<i4").tobytes(), 6))
            self._sub_rows[k] = [pending] if pending.shape[0] else []

    def _base_tiles(self, bands: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        pending = np.zeros((0, self.width), np.int32)
        for band in bands:
            band = np.asarray(band, dtype=np.int32)
            if band.ndim != 2 or band.shape[1] != self.width:
                raise ValueError(f"band shape {band.shape} does not match width {self.width}")
            self._feed_levels(band, self._rows, final=False)
            self._rows += band.shape[0]
            pending = np.concatenate([pending, band]) if pending.shape[0] else band
            while pending.shape[0] >= self.tile:
                yield from self._tiles_of(pending[: self.tile])
                pending = pending[self.tile:]
        if self._rows != self.height:
            raise ValueError(f"bands cover {self._rows} rows, expected {self.height}")
        if pending.shape[0]:
            yield from self._tiles_of(pending)

    def write(self, bands: Iterable[np.ndarray]) -> None:
        """Consume row bands (each (h, W) int32, top to bottom, covering all rows) and write."""
        opts = {"dtype": np.int32, "tile": (self.tile, self.tile), "compression": "zlib",
                "photometric": "minisblack", "metadata": None}
        self._rows = 0
        band_iter = iter(bands)
        try:
            with AtomicPath(self.path) as tmp, tifffile.TiffWriter(str(tmp), bigtiff=True) as tif:
                tif.write(self._base_tiles(band_iter), shape=(self.height, self.width),
                          subifds=len(self.factors), **_resolution(self.mpp), **opts)
                # tifffile stops pulling after the last tile: run the band producer to its end
                for band in band_iter:
                    if np.asarray(band).shape[0]:
                        raise ValueError("bands cover more rows than the image height")
                if self._rows != self.height:
                    raise ValueError(f"bands cover {self._rows} rows, expected {self.height}")
                self._feed_levels(np.zeros((0, self.width), np.int32), self._rows, final=True)
                for k, f in enumerate(self.factors):
                    shape = (math.ceil(self.height / f), math.ceil(self.width / f))
                    tif.write(iter(self._sub_tiles[k]), shape=shape, subfiletype=1,
                              **_resolution(self.mpp * f if self.mpp else None), **opts)
        except OSError as exc:
            raise file_error(self.path, f"cannot write label image ({exc})") from exc
        self._sub_tiles = [[] for _ in self.factors]


def outline_mask(inst: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of an instance whose 4-neighbour has another label."""
    inst = np.asarray(inst)
    edge = np.zeros(inst.shape, bool)
    edge[1:] |= inst[1:] != inst[:-1]
    edge[:-1] |= inst[:-1] != inst[1:]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    return edge & (inst > 0)


def overlay_image(image: np.ndarray, inst: np.ndarray,
                  color: tuple[int, int, int] = NUCLEUS_COLOR) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``image`` with instance outlines drawn in ``color``."""
    out = np.array(image, dtype=np.uint8, copy=True)
    out[outline_mask(inst)] = color
    return out


def draw_polygons(canvas: np.ndarray, rings: Iterable[np.ndarray], scale: float,
                  color: tuple[int, int, int] = NUCLEUS_COLOR) -> None:
    """Draw rings (x, y in full-resolution pixels) onto a thumbnail in place.

    Args:
        canvas: (h, w, 3) uint8 thumbnail.
        scale: thumbnail pixels per full-resolution pixel.
    """
    pts = [np.round(r * scale).astype(np.int32).reshape(-1, 1, 2) for r in rings]
    if pts:
        cv2.polylines(canvas, pts, isClosed=True, color=color, thickness=1)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise file_error(path, "cannot encode PNG")
    atomic_write_bytes(path, buf.tobytes())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_summary_json(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write the run summary as indented JSON (numpy scalars and paths converted)."""
    atomic_write_text(path, json.dumps(summary, indent=2, default=_json_default) + "\n")
