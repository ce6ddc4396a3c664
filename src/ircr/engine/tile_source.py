"""Unlabelled RGB tiles at a target pixel size from images, folders, prepared datasets and slides.

A *source* is one image: a plain image file, a whole-slide image (read region by region, never
whole), or one image of a prepared dataset (``ircr data prepare``; labels are ignored). Folders
are expanded (recursively, sorted, hidden files skipped); a prepared dataset folder (one with
``dataset.json``) gives its images, less the validation/test images of the splits named in
``exclude_splits`` (so pretraining never sees what a later run validates on).

Tissue is found exactly as ``ircr segment`` finds it: :func:`ircr.engine.tissue.tissue_mask` on
a thumbnail of at most :data:`ircr.engine.slide.THUMB_SIZE` px. Every tile is centred on a
tissue pixel drawn uniformly over the tissue of all sources (a source's weight is its tissue
area at the target pixel size), so glass is never sampled and a large slide counts for what
it holds. A bad source (unreadable, no pixel size and no override, no tissue, an empty folder)
is skipped with one line (``log``) and returned in ``skipped``; only when nothing is usable is
it an error.

Pixel size: ``mpp_override`` wins over the file's, as ``ircr segment --mpp`` does; prepared
datasets carry theirs in ``dataset.json``. Tiles are resampled to ``target_mpp`` (area
averaging when shrinking, bilinear when enlarging). :func:`sample_tiles` is a pure function of
(sources, n, size, seed): same arguments, same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from ircr.engine.inputs import supported_suffixes
from ircr.engine.slide import THUMB_SIZE
from ircr.engine.tissue import tissue_mask
from ircr.errors import IrcrError
from ircr.io.image import read_image
from ircr.io.wsi import check_mpp, image_mpp, is_slide, open_slide

__all__ = ["TileSource", "SkippedSource", "open_tile_sources", "sample_tiles", "iter_source_files"]


@dataclass(frozen=True)
class SkippedSource:
    """A source that was left out, and why (one line)."""

    path: str
    reason: str

    def line(self) -> str:
        """``"<path>: <reason>; skipped"``."""
        return f"{self.path}: {self.reason}; skipped"


@dataclass
class TileSource:
    """One usable image with its tissue mask.

    Attributes:
        path: the image or slide file.
        name: a readable name (``dataset/image`` for prepared datasets, else the path).
        kind: ``"image"`` (read whole when sampled) or ``"slide"`` (regions read lazily).
        mpp: µm per level-0 pixel; mpp_source: ``"file"``, ``"--mpp"`` or ``"dataset"``.
        target_mpp: µm per pixel of the tiles it gives.
        width, height: level-0 size in pixels.
        mask: (h, w) bool tissue mask of the thumbnail; mask_scale: thumbnail px per level-0 px.
    """

    path: Path
    name: str
    kind: str
    mpp: float
    mpp_source: str
    target_mpp: float
    width: int
    height: int
    mask: np.ndarray
    mask_scale: float

    @property
    def factor(self) -> float:
        """Level-0 pixels per tile pixel (``target_mpp / mpp``)."""
        return self.target_mpp / self.mpp

    @property
    def tissue_pixels(self) -> float:
        """Tissue area in tile pixels (at ``target_mpp``)."""
        return float(self.mask.sum()) / (self.mask_scale * self.factor) ** 2

    def describe(self) -> dict[str, object]:
        """Card entry: name, kind, mpp, level-0 size, tissue pixels at the target mpp."""
        return {"name": self.name, "kind": self.kind, "mpp": self.mpp,
                "mpp_source": self.mpp_source, "width": self.width, "height": self.height,
                "tissue_pixels": int(round(self.tissue_pixels))}


# ------------------------------------------------------------------ opening
def iter_source_files(path: Path) -> Iterator[Path]:
    """Supported image/slide files under a folder (recursive, sorted, no hidden files)."""
    suffixes = supported_suffixes()
    for f in sorted(path.rglob("*")):
        if (f.is_file() and f.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in f.relative_to(path).parts)):
            yield f


def _thumbnail(image: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = min(1.0, THUMB_SIZE / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _with_mask(path: Path, name: str, kind: str, mpp: float, mpp_source: str, target: float,
               size: tuple[int, int], thumb: np.ndarray, scale: float) -> TileSource:
    mask = tissue_mask(thumb)
    if not mask.any():
        raise IrcrError(f"{name}: no tissue found")
    return TileSource(path, name, kind, mpp, mpp_source, target, size[0], size[1],
                      np.ascontiguousarray(mask), scale)


def _no_mpp(name: str) -> IrcrError:
    return IrcrError(f"{name}: no microns-per-pixel in the file; pass --mpp")


def _open_file(path: Path, target: float, override: float | None) -> TileSource:
    name = str(path)
    if is_slide(path):
        with open_slide(path, mpp=override) as slide:
            if slide.mpp is None:
                raise _no_mpp(name)
            thumb, scale = slide.thumbnail(THUMB_SIZE)
            return _with_mask(path, name, "slide", float(slide.mpp), slide.mpp_source, target,
                              slide.dimensions, thumb, scale)
    image = read_image(path)
    mpp, src = (override, "--mpp") if override is not None else (image_mpp(path), "file")
    if mpp is None:
        raise _no_mpp(name)
    thumb, scale = _thumbnail(image)
    return _with_mask(path, name, "image", float(mpp), src, target,
                      (image.shape[1], image.shape[0]), thumb, scale)


def _excluded(ds: object, splits: Sequence[str]) -> set[str]:
    from ircr.data.store import PreparedDataset

    assert isinstance(ds, PreparedDataset)
    out: set[str] = set()
    for name in splits:
        sp = ds.load_split(name)
        out.update(ds.names[i] for i in [*sp.val_images, *sp.test_images])
    return out


def _open_dataset(folder: Path, target: float, override: float | None,
                  exclude_splits: Sequence[str]) -> Iterator[tuple[str, Callable[[], TileSource]]]:
    from ircr.data.store import PreparedDataset

    ds = PreparedDataset(folder, cache_bytes=0)
    drop = _excluded(ds, exclude_splits)
    for i, entry in enumerate(ds.images):
        if ds.names[i] in drop:
            continue
        name = f"{folder}/{ds.names[i]}"

        def make(i: int = i, entry: dict = entry, name: str = name) -> TileSource:
            mpp, src = (override, "--mpp") if override is not None else (entry.get("mpp"),
                                                                         "dataset")
            if mpp is None:
                raise _no_mpp(name)
            image = ds.load_image(i)
            thumb, scale = _thumbnail(image)
            return _with_mask(ds.path / str(entry["image"]), name, "image", float(mpp), src,
                              target, (image.shape[1], image.shape[0]), thumb, scale)

        yield name, make


def _candidates(path: Path, target: float, override: float | None,
                exclude_splits: Sequence[str]) -> Iterator[tuple[str, Callable[[], TileSource]]]:
    if path.is_dir() and (path / "dataset.json").is_file():
        yield from _open_dataset(path, target, override, exclude_splits)
        return
    if path.is_dir():
        files = list(iter_source_files(path))
        if not files:
            raise IrcrError(f"{path}: folder has no supported image files")
    elif not path.exists():
        raise IrcrError(f"{path}: file not found")
    else:
        files = [path]
    for f in files:
        yield str(f), partial(_open_file, f, target, override)


def open_tile_sources(
    paths: Iterable[str | Path], *, target_mpp: float, mpp_override: float | None = None,
    exclude_splits: Sequence[str] = (), log: Callable[[str], None] | None = None,
) -> tuple[list[TileSource], list[SkippedSource]]:
    """Open every source under ``paths``; bad ones are skipped, not fatal.

    Args:
        paths: image files, slides, folders of them, prepared dataset folders.
        target_mpp: µm/px of the tiles to sample.
        mpp_override: µm/px for every source (wins over the files' own, like ``--mpp``).
        exclude_splits: split names (``ratio_1-8_seed0``) whose val/test images are left out
            of prepared datasets; a missing split is an error.
        log: called with one line per skipped source, as it is skipped.

    Returns:
        (sources in input order, skipped sources).

    Raises:
        IrcrError: a bad ``target_mpp``/``mpp_override``, a bad prepared dataset or split.
    """
    target = check_mpp(target_mpp, "target mpp")
    override = None if mpp_override is None else check_mpp(mpp_override, "--mpp")
    sources: list[TileSource] = []
    skipped: list[SkippedSource] = []

    def skip(name: str, exc: IrcrError) -> None:
        msg = str(exc)
        reason = msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg
        skipped.append(SkippedSource(name, reason))
        if log is not None:
            log(skipped[-1].line())

    for raw in paths:
        path = Path(raw)
        try:
            cands = list(_candidates(path, target, override, exclude_splits))
        except IrcrError as exc:
            if path.is_dir() and (path / "dataset.json").is_file():
                raise
            skip(str(path), exc)
            continue
        for name, make in cands:
            try:
                sources.append(make())
            except IrcrError as exc:
                skip(name, exc)
    return sources, skipped


# ------------------------------------------------------------------ sampling
def _tissue_point(src: TileSource, rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly drawn tissue location (x, y) in level-0 pixels."""
    rows = src.mask.sum(axis=1)
    cum = np.cumsum(rows)
    k = int(rng.integers(int(cum[-1])))
    r = int(np.searchsorted(cum, k, side="right"))
    before = int(cum[r - 1]) if r > 0 else 0
    c = int(np.flatnonzero(src.mask[r])[k - before])
    u, v = rng.random(2)
    return (c + u) / src.mask_scale, (r + v) / src.mask_scale


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    if region.shape[:2] == (size, size):
        return region
    interp = cv2.INTER_AREA if region.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)


def _corner(centre: float, side: int, extent: int) -> int:
    """Top-left of a ``side`` window centred at ``centre``, kept inside [0, extent) if it fits."""
    start = int(math.floor(centre - side / 2))
    if side <= extent:
        start = min(max(start, 0), extent - side)
    return start


def _crop_reflect(image: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    ys = np.arange(y0, y0 + side)
    xs = np.arange(x0, x0 + side)
    if y0 >= 0 and x0 >= 0 and y0 + side <= h and x0 + side <= w:
        return image[y0:y0 + side, x0:x0 + side]
    ys = np.abs(ys) % (2 * h - 2 if h > 1 else 1)
    ys = np.where(ys >= h, 2 * h - 2 - ys, ys)
    xs = np.abs(xs) % (2 * w - 2 if w > 1 else 1)
    xs = np.where(xs >= w, 2 * w - 2 - xs, xs)
    return image[ys[:, None], xs[None, :]]


def _image_tiles(src: TileSource, points: list[tuple[float, float]], size: int) -> list[np.ndarray]:
    image = read_image(src.path)
    side = max(1, int(math.ceil(size * src.factor)))
    out = []
    for x, y in points:
        y0, x0 = _corner(y, side, src.height), _corner(x, side, src.width)
        out.append(_resize(np.ascontiguousarray(_crop_reflect(image, y0, x0, side)), size))
    return out


def _slide_tiles(src: TileSource, points: list[tuple[float, float]], size: int) -> list[np.ndarray]:
    side0 = max(1, int(math.ceil(size * src.factor)))
    out = []
    with open_slide(src.path, mpp=src.mpp) as slide:
        level = slide.best_level(src.factor)
        d = slide.level_downsamples[level]
        side = max(1, int(math.ceil(side0 / d)))
        for x, y in points:
            y0, x0 = _corner(y, side0, src.height), _corner(x, side0, src.width)
            out.append(_resize(slide.read_region(x0, y0, level, side, side), size))
    return out


def sample_tiles(sources: Sequence[TileSource], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` RGB tiles of ``size`` px at the sources' target mpp, centred on tissue.

    Each tile picks a source with probability proportional to its tissue area, then a tissue
    location uniformly within it. Each source is opened once per call; slides are read region
    by region, so memory is the output plus one plain image at a time.

    Returns:
        (n, size, size, 3) uint8, the same for the same (sources, n, size, seed).
    """
    if not sources:
        raise IrcrError("tile sources: no usable source (every input was skipped)")
    if n < 0 or size < 1:
        raise IrcrError(f"tile sources: bad request n={n}, size={size}")
    rng = np.random.default_rng(seed)
    weights = np.array([s.tissue_pixels for s in sources], dtype=np.float64)
    which = rng.choice(len(sources), size=n, p=weights / weights.sum())
    points = [_tissue_point(sources[int(i)], rng) for i in which]
    out = np.empty((n, size, size, 3), np.uint8)
    for s in np.unique(which):
        idx = np.flatnonzero(which == s)
        src = sources[int(s)]
        pts = [points[int(k)] for k in idx]
        tiles = (_slide_tiles if src.kind == "slide" else _image_tiles)(src, pts, size)
        for k, tile in zip(idx, tiles):
            out[int(k)] = tile
    return out
