"""Region reads from (pyramidal) TIFF files with tifffile alone.

The whole-slide backend of last resort (:mod:`ircr.io.wsi` uses it when neither OpenSlide
nor tiffslide can be imported, e.g. on a GPU machine with a minimal environment). It reads
only the tiles (or strips) a region touches, decoding them with tifffile's built-in codecs
(uncompressed, zlib/deflate, LZMA, PackBits, ...; JPEG and other optional codecs need
imagecodecs and fail with the codec's own message, which the caller turns into one line).

The handle mimics the part of tiffslide's API :class:`ircr.io.wsi.Slide` uses: ``dimensions``,
``level_dimensions``, ``level_downsamples``, ``properties``, ``read_region`` and ``close``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class TiffRegionReader:
    """Pyramid levels of the first image series of a TIFF, read region by region."""

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        try:
            levels = self._tif.series[0].levels
            self._pages = [lvl.keyframe for lvl in levels]
            for page in self._pages:
                if page.imagedepth != 1 or len(page.shape) not in (2, 3):
                    raise ValueError(f"unsupported image shape {page.shape}")
        except Exception:
            self._tif.close()
            raise
        self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
        self.dimensions = self.level_dimensions[0]
        w0, h0 = self.dimensions
        self.level_downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]
        self.properties: dict[str, str] = {}
        self._lock = threading.Lock()
        self._whole: dict[int, np.ndarray] = {}

    def _segment_grid(self, level: int) -> tuple[int, int] | None:
        """(segment height, width) of a chunky level, or None (read the level whole)."""
        page = self._pages[level]
        if page.planarconfig != 1 and page.samplesperpixel > 1:
            return None
        if page.is_tiled:
            return int(page.tilelength), int(page.tilewidth)
        return int(min(page.rowsperstrip, page.imagelength)), int(page.imagewidth)

    def _segment(self, level: int, index: int, seg_h: int, seg_w: int) -> np.ndarray:
        """Decoded segment ``index`` as (seg_h, seg_w, samples), padded to the full grid."""
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            return np.zeros((seg_h, seg_w, page.samplesperpixel), page.dtype)
        fh = self._tif.filehandle
        with self._lock:
            fh.seek(offset)
            data = fh.read(count)
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:
            raise ValueError(f"segment {index} could not be decoded")
        arr = np.asarray(seg).reshape(shape[1], shape[2], shape[3])
        out = np.zeros((seg_h, seg_w, arr.shape[2]), arr.dtype)
        out[: min(seg_h, arr.shape[0]), : min(seg_w, arr.shape[1])] = arr[:seg_h, :seg_w]
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int],
                    as_array: bool = True) -> np.ndarray:
        """(h, w, samples) pixels of ``level``; ``location`` (x, y) in level-0 pixels.

        Pixels outside the image are 0 (as tiffslide).
        """
        ds = self.level_downsamples[level]
        x0, y0 = int(location[0] / ds), int(location[1] / ds)
        w, h = int(size[0]), int(size[1])
        lw, lh = self.level_dimensions[level]
        page = self._pages[level]
        spp = int(page.samplesperpixel)
        out = np.zeros((h, w, spp), page.dtype)
        ya, yb, xa, xb = max(y0, 0), min(y0 + h, lh), max(x0, 0), min(x0 + w, lw)
        if ya >= yb or xa >= xb:
            return out
        grid = self._segment_grid(level)
        if grid is None:
            if level not in self._whole:
                self._whole[level] = np.asarray(page.asarray()).reshape(lh, lw, spp)
            out[ya - y0:yb - y0, xa - x0:xb - x0] = self._whole[level][ya:yb, xa:xb]
            return out
        sh, sw = grid
        across = -(-lw // sw)
        for sy in range(ya // sh, (yb - 1) // sh + 1):
            for sx in range(xa // sw, (xb - 1) // sw + 1):
                seg = self._segment(level, sy * across + sx, sh, sw)
                ta, tb = max(ya, sy * sh), min(yb, (sy + 1) * sh)
                la, lb = max(xa, sx * sw), min(xb, (sx + 1) * sw)
                out[ta - y0:tb - y0, la - x0:lb - x0] = seg[ta - sy * sh:tb - sy * sh,
                                                            la - sx * sw:lb - sx * sw]
        return out

    def close(self) -> None:
        """Close the file."""
        self._tif.close()
