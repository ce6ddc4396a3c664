"""Tile grid and responsible-tile stitching (model-independent property tests).

What is equal: for a per-window segmentation that does not depend on the window's position
(here: the ground-truth map cropped to the window, ids randomly permuted per window, so ids
carry no global information), the stitched map and the whole-image segmentation have the same
set of instances as pixel sets (same partition of the foreground, up to relabelling), provided
every instance fits in ``margin`` pixels (bounding-box height and width).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ircr.data.synthetic import make_tile
from ircr.engine.tiling import Stitcher, first_pixels, stitch_image, tile_grid


def _max_extent(inst: np.ndarray) -> int:
    ext = 0
    for sl in ndi.find_objects(inst):
        if sl is not None:
            ext = max(ext, sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    return ext


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b have the same background and the same instances up to relabelling."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def _window_segmenter(gt: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)

    def seg(t):
        y0, x0, y1, x1 = t.read
        crop = gt[y0:y1, x0:x1]
        ids = np.unique(crop)
        ids = ids[ids > 0]
        lut = np.zeros(int(gt.max()) + 1, np.int32)
        lut[ids] = rng.permutation(len(ids)).astype(np.int32) + 1  # position-free ids
        return lut[crop]

    return seg


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 600x700 synthetic instance map: touching, occluding, elongated nuclei."""
    _, inst = make_tile(np.random.default_rng(3), (600, 700))
    assert inst.max() > 200
    return inst


def test_tile_grid_partitions_the_image() -> None:
    tiles = tile_grid(250, 310, 100, 16)
    cover = np.zeros((250, 310), int)
    for t in tiles:
        y0, x0, y1, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        ry0, rx0, ry1, rx1 = t.read
        assert (ry0, rx0) == (max(0, y0 - 16), max(0, x0 - 16))
        assert (ry1, rx1) == (min(250, y1 + 16), min(310, x1 + 16))
    assert (cover == 1).all()
    assert [(t.row, t.col) for t in tiles][:4] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert len(tiles) == 3 * 4


@pytest.mark.parametrize("size", [(250, 310), (120, 310), (90, 100)])
def test_uniform_network_windows_share_one_shape_and_hold_the_read(size) -> None:
    """uniform=True: the same cores and reads, plus one network-window shape for all tiles
    (min(size, tile + 2 margin) per axis), each inside the image and holding its read."""
    h, w = size
    plain = tile_grid(h, w, 100, 16)
    tiles = tile_grid(h, w, 100, 16, uniform=True)
    assert [(t.core, t.read) for t in tiles] == [(t.core, t.read) for t in plain]
    assert all(t.net == t.read for t in plain)
    shapes = {(t.net[2] - t.net[0], t.net[3] - t.net[1]) for t in tiles}
    assert shapes == {(min(h, 132), min(w, 132))}
    for t in tiles:
        ny0, nx0, ny1, nx1 = t.net
        ry0, rx0, ry1, rx1 = t.read
        assert 0 <= ny0 <= ry0 and ry1 <= ny1 <= h and 0 <= nx0 <= rx0 and rx1 <= nx1 <= w
    # a 310 px row: cores at 0, 100, 200, 300; the last (10 px) reads [284, 310) and its
    # network window is the last 132 px, [178, 310) (hand computation)
    if w == 310:
        last = tiles[3]
        assert last.read[1::2] == (284, 310) and last.net[1::2] == (178, 310)


def test_first_pixels_is_raster_first() -> None:
    inst = np.array([[0, 0, 2, 2],
                     [0, 1, 2, 0],
                     [1, 1, 1, 0]], np.int32)
    ids, ys, xs, _ = first_pixels(inst)
    assert ids.tolist() == [1, 2]
    assert list(zip(ys.tolist(), xs.tolist())) == [(1, 1), (0, 2)]


@pytest.mark.parametrize("tile,extra", [(64, 0), (97, 5), (150, 0), (256, 17), (1000, 0)])
def test_stitched_equals_untiled(scene: np.ndarray, tile: int, extra: int) -> None:
    margin = _max_extent(scene) + extra
    untiled = _window_segmenter(scene, 0)(tile_grid(*scene.shape, 10**6, 0)[0])
    stitched, stats = stitch_image(*scene.shape, _window_segmenter(scene, tile), tile, margin)
    assert _same_partition(stitched, untiled)
    assert stats.instances == len(np.unique(scene)) - 1
    assert stats.truncated == 0 and stats.duplicates == 0


def test_small_margin_breaks_large_nuclei(scene: np.ndarray) -> None:
    """The property needs margin >= nucleus extent: with a tiny margin it fails (and says so)."""
    stitched, stats = stitch_image(*scene.shape, _window_segmenter(scene, 1), 64, 4)
    assert not _same_partition(stitched, scene)
    assert stats.truncated > 0


@pytest.mark.parametrize("skip_odd_rows", [False, True])
def test_streaming_bands_equal_in_memory(scene: np.ndarray, skip_odd_rows: bool) -> None:
    """Streaming (band buffer, skipped background rows) gives the in-memory map exactly."""
    tile, margin = 128, _max_extent(scene)
    tiles = [t for t in tile_grid(*scene.shape, tile, margin)
             if not (skip_odd_rows and t.row % 2 == 1)]
    mem = Stitcher(*scene.shape, tile, margin, streaming=False)
    for t in tiles:
        mem.add(t, _window_segmenter(scene, 5)(t))
    st = Stitcher(*scene.shape, tile, margin, streaming=True)
    assert st.buf.shape[0] == tile + margin
    seg = _window_segmenter(scene, 5)
    bands = []
    for t in tiles:
        bands += list(st.pop_final(t.core[0]))
        st.add(t, seg(t))
    bands += list(st.pop_final(scene.shape[0]))
    assert max(b.shape[0] for b in bands) <= tile + margin
    streamed = np.concatenate(bands)
    assert streamed.shape == scene.shape
    assert np.array_equal(streamed, mem.flush())
    if skip_odd_rows:  # instances anchored in skipped rows are absent, the others whole
        ids, ys, _, _ = first_pixels(scene)
        keep = ids[(ys // tile) % 2 == 0]
        assert _same_partition(streamed, np.where(np.isin(scene, keep), scene, 0))
    else:
        assert _same_partition(streamed, scene)


def test_disagreeing_windows_never_overlap() -> None:
    """Windows that disagree near seams: no pixel gets two ids, duplicates are dropped."""
    gt = np.zeros((200, 200), np.int32)
    gt[90:110, 90:110] = 1  # one nucleus on the corner of four 100-px cores

    def shifted(t):  # each window sees the nucleus displaced by its tile index
        y0, x0, y1, x1 = t.read
        g = np.roll(gt, (t.row * 3, t.col * 3), axis=(0, 1))
        return g[y0:y1, x0:x1]

    out, stats = stitch_image(200, 200, shifted, 100, 40)
    assert stats.instances + stats.duplicates >= 1
    assert len(np.unique(out)) - 1 == stats.instances
    assert stats.instances == 1  # the shifted copies overlap it by more than half: dropped
