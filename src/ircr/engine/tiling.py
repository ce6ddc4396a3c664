"""Tile grid and instance-level stitching for images larger than one network pass.

Responsible-tile rule
---------------------
The image is cut into non-overlapping **core** boxes of ``tile`` x ``tile`` pixels (the last
row/column is smaller). Each tile is segmented on its **read window**: the core grown by
``margin`` pixels on every side (clipped to the image). In the tile's local instance map, an
instance's **anchor** is its first pixel in raster order (smallest row, then smallest column in
that row). The tile keeps exactly the instances whose anchor lies inside its core, and takes
them **whole** from its read window. Cores partition the image, so every instance has exactly
one responsible tile.

Why this is exact: if an instance's bounding box is at most ``margin`` pixels high and wide,
and its anchor is in the core, all its pixels lie inside the read window (it cannot reach above
the anchor's row, and reaches at most ``margin - 1`` pixels left, right and down). Conversely, a
piece of an instance cut by the read window's edge can never have its anchor in the core. So
when the per-window segmentation of an instance does not depend on where the window is, the
stitched map contains the same instances, as pixel sets, as segmenting the whole image at once
(tested in ``tests/test_tiling.py``). Instances larger than ``margin`` can be cut; they are
counted as ``truncated``.

With a real network, neighbouring windows may disagree slightly near their borders. Pasting is
first-writer-wins in raster tile order: an owned instance only takes pixels that are still
free, and is dropped as a duplicate when fewer than half its pixels are free. So the label
image never has overlapping instances and the per-nucleus table always matches it.

Streaming: instances never reach above their anchor's row, and the instances of core row
``r - 1`` reach at most ``margin`` rows below it. So once every tile of core row ``r - 1`` is
pasted, all rows above core row ``r`` are final. :class:`Stitcher` therefore keeps only a band
of ``tile + margin`` rows (full width) and hands out finished rows as it goes; memory does not
grow with the image height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ircr.errors import IrcrError

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive


@dataclass(frozen=True)
class Tile:
    """One tile: its grid position, core box and read window (both (y0, x0, y1, x1)).

    ``net``: the window the network runs on, containing ``read`` (equal to it unless the grid is
    ``uniform``); its maps are post-processed whole and the instance map is then cut to
    ``read`` for stitching.
    """

    row: int
    col: int
    core: Box
    read: Box
    net: Box


def tile_grid(height: int, width: int, tile: int, margin: int,
              uniform: bool = False) -> list[Tile]:
    """Tiles covering an image of ``height`` x ``width`` in raster (row-major) order.

    ``uniform``: every tile also gets a network window (``Tile.net``) of one shape,
    ``min(size, tile + 2 * margin)`` per axis: its read window slid inside the image where
    the core grown by the margin is clipped, so border and last tiles see more real context
    instead of a smaller window. A compiled network then builds one graph for all tiles of all
    slides of at least that size. Read windows, and so the stitching, are unchanged.

    Raises:
        IrcrError: tile < 1 or margin < 0.
    """
    if tile < 1 or margin < 0:
        raise IrcrError(f"tiling: tile ({tile}) must be >= 1 and margin ({margin}) >= 0")
    nh, nw = min(height, tile + 2 * margin), min(width, tile + 2 * margin)
    tiles = []
    for r, y0 in enumerate(range(0, height, tile)):
        y1 = min(y0 + tile, height)
        for c, x0 in enumerate(range(0, width, tile)):
            x1 = min(x0 + tile, width)
            read = (max(0, y0 - margin), max(0, x0 - margin),
                    min(height, y1 + margin), min(width, x1 + margin))
            net = read
            if uniform:
                ny, nx = min(read[0], height - nh), min(read[1], width - nw)
                net = (ny, nx, ny + nh, nx + nw)
            tiles.append(Tile(r, c, (y0, x0, y1, x1), read, net))
    return tiles


def first_pixels(
    inst: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[slice, slice]]]:
    """Anchor (first pixel in raster order) and bounding box of every instance.

    Args:
        inst: (h, w) integer instance map, 0 = background.

    Returns:
        ids (K,) int64, anchor rows (K,), anchor columns (K,), bounding-box slices (K).
    """
    inst = np.asarray(inst)
    if inst.size == 0 or inst.max() <= 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, []
    ids, ys, xs, boxes = [], [], [], []
    for k, sl in enumerate(ndi.find_objects(inst.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        y = sl[0].start
        row = inst[y, sl[1]]
        ids.append(k)
        ys.append(y)
        xs.append(sl[1].start + int(np.argmax(row == k)))
        boxes.append(sl)
    return np.array(ids, np.int64), np.array(ys, np.int64), np.array(xs, np.int64), boxes


@dataclass
class StitchStats:
    """Counters of a stitching run."""

    tiles: int = 0
    instances: int = 0
    truncated: int = 0
    duplicates: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON summaries."""
        return {"tiles": self.tiles, "instances": self.instances,
                "truncated": self.truncated, "duplicates_dropped": self.duplicates}


@dataclass
class TileResult:
    """Instances one tile contributed, in its read window's frame.

    ``labels`` is (h, w) int32 over rows ``[origin_y, read.y1)`` and the read window's columns,
    holding only this tile's pasted instances with their global ids ``ids`` (1-D int64).
    """

    ids: np.ndarray
    labels: np.ndarray
    origin_y: int
    origin_x: int
    truncated: int = 0


@dataclass
class Stitcher:
    """Pastes the owned instances of tiles, given in raster order, into a label buffer.

    With ``streaming=True`` the buffer is a band of ``tile + margin`` rows and finished rows are
    handed out by :meth:`pop_final`; otherwise it is the whole (height, width) image
    (:meth:`flush`).
    """

    height: int
    width: int
    tile: int
    margin: int
    streaming: bool = False
    stats: StitchStats = field(default_factory=StitchStats)

    def __post_init__(self) -> None:
        rows = min(self.height, self.tile + self.margin) if self.streaming else self.height
        self.buf = np.zeros((rows, self.width), np.int32)
        self.buf_y0 = 0
        self.next_id = 1

    def pop_final(self, upto: int) -> Iterator[np.ndarray]:
        """Hand out the finished rows ``[buf_y0, upto)`` as bands (streaming only).

        Call before pasting the first tile of the core row that starts at ``upto`` (and with
        ``upto = height`` at the end); rows above it can no longer change. Rows of skipped
        tiles come out as zeros, in bands of at most the buffer's height.
        """
        rows = self.buf.shape[0]
        while self.buf_y0 < upto:
            n = min(upto - self.buf_y0, rows)
            out = self.buf[:n].copy()
            if n < rows:
                self.buf[: rows - n] = self.buf[n:].copy()
            self.buf[rows - n:] = 0
            self.buf_y0 += n
            yield out

    def flush(self) -> np.ndarray:
        """The whole (height, width) map (in-memory mode)."""
        if self.streaming:
            raise ValueError("flush: use pop_final(height) when streaming")
        return self.buf

    def add(self, tile: Tile, local: np.ndarray) -> TileResult:
        """Paste the instances of ``local`` (the tile's read-window map) that the tile owns.

        Args:
            tile: the tile (from :func:`tile_grid` with this stitcher's tile and margin).
            local: (h, w) integer instance map of ``tile.read``; ids are tile-local.
        """
        ry0, rx0, ry1, rx1 = tile.read
        cy0, cx0, cy1, cx1 = tile.core
        if local.shape != (ry1 - ry0, rx1 - rx0):
            raise ValueError(f"tile {tile.row},{tile.col}: map shape {local.shape} != read window")
        if cy0 < self.buf_y0 or ry1 > self.buf_y0 + self.buf.shape[0]:
            raise ValueError(f"tile {tile.row},{tile.col}: outside the buffered band")
        self.stats.tiles += 1
        ids, ay, ax, boxes = first_pixels(local)
        gy, gx = ay + ry0, ax + rx0
        owned = (gy >= cy0) & (gy < cy1) & (gx >= cx0) & (gx < cx1)
        # rows above the core are never touched by owned instances (anchor = top-most pixel)
        top = cy0 - ry0
        window = self.buf[cy0 - self.buf_y0: ry1 - self.buf_y0, rx0:rx1]
        first_new = self.next_id
        truncated = 0
        sel = np.flatnonzero(owned)
        # paste in raster order of the anchors: global ids do not depend on local ids
        for k in sel[np.lexsort((gx[sel], gy[sel]))]:
            sy, sx = boxes[k]
            if ((sy.start == 0 and ry0 > 0) or (sx.start == 0 and rx0 > 0)
                    or (sy.stop == local.shape[0] and ry1 < self.height)
                    or (sx.stop == local.shape[1] and rx1 < self.width)):
                truncated += 1
            mask = local[sy, sx] == ids[k]
            wsl = (slice(sy.start - top, sy.stop - top), sx)
            free = mask & (window[wsl] == 0)
            if 2 * int(free.sum()) < int(mask.sum()):
                self.stats.duplicates += 1
                continue
            window[wsl][free] = self.next_id
            self.next_id += 1
        new = (window >= first_new) & (window < self.next_id)
        labels = np.where(new, window, 0).astype(np.int32)
        self.stats.instances += self.next_id - first_new
        self.stats.truncated += truncated
        return TileResult(np.arange(first_new, self.next_id, dtype=np.int64), labels, cy0, rx0,
                          truncated)


def stitch_image(
    height: int,
    width: int,
    segment_window: Callable[[Tile], np.ndarray],
    tile: int,
    margin: int,
) -> tuple[np.ndarray, StitchStats]:
    """Segment an image tile by tile and stitch with the responsible-tile rule.

    Args:
        height, width: image size in pixels.
        segment_window: called with each :class:`Tile`; returns the (h, w) integer instance map
            of ``tile.read`` (ids local to the call).
        tile, margin: core size and margin in pixels (``margin`` > largest nucleus extent).

    Returns:
        (height, width) int32 instance map with ids 1..K, and the stitching counters.
    """
    stitcher = Stitcher(height, width, tile, margin, streaming=False)
    for t in tile_grid(height, width, tile, margin):
        stitcher.add(t, np.asarray(segment_window(t)))
    return stitcher.flush(), stitcher.stats
