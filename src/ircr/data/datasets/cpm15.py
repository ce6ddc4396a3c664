"""CPM-15 (MICCAI 2015 Computational Precision Medicine segmentation challenge, training set).

Layout under ``root``: images ``images/imageNN.png`` (or in ``root``) and ASCII masks
``labels_txt/imageNN_mask.txt[.gz]`` (or ``labels/`` or ``root``). The RGBA PNGs are read
as RGB (see :func:`ircr.io.image.read_image`). Mask format (challenge README): line 1 is
``width height``, then ``width*height`` integer labels in row-major order (x fastest), so
the map is ``values.reshape(height, width)``; 0 = background.

Known issue of the shared copy (SOURCES.md): ``image04_mask.txt`` and ``image05_mask.txt``
are swapped. An image whose mask has another size fails with a one-line error naming both
files and sizes. Correct the pairing with ``fix_known_swaps=True`` (exactly image04 <->
image05) or ``pairs={"image04": "image05_mask", ...}`` / ``pairs="pairs.yaml"`` (a YAML
mapping of image name to mask name).

Magnification (challenge README): image01-07 were scanned at 20x (mpp 0.5), image08-15 at
40x (mpp 0.25); other names get ``mpp=None``.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ircr.data.datasets._common import (
    empty_folder_error,
    find_subdir,
    list_by_stem,
    open_maybe_gz,
    require_root,
)
from ircr.data.sample import Sample
from ircr.errors import IrcrError, file_error
from ircr.io.image import read_image

KNOWN_SWAPS: dict[str, str] = {"image04": "image05", "image05": "image04"}
_MASK_SUFFIXES = (".txt", ".txt.gz")


def cpm15_mpp(name: str) -> float | None:
    """Microns per pixel from the challenge README: image01-07 20x (0.5), image08-15 40x (0.25)."""
    m = re.fullmatch(r"image(\d+)", name)
    if not m:
        return None
    k = int(m.group(1))
    return 0.5 if 1 <= k <= 7 else 0.25 if 8 <= k <= 15 else None


def read_cpm15_mask(path: str | Path) -> np.ndarray:
    """Parse a CPM-15 ASCII mask (``.txt`` or ``.txt.gz``) into an (H, W) int32 map.

    Parsing is a single vectorised ``np.fromstring`` call (about 50 ms per 1000x800 mask).

    Raises:
        IrcrError: bad header, non-integer or negative values, or a value count that is
            not ``width*height``.
    """
    p = Path(path)
    data = open_maybe_gz(p)
    head, _, body = data.partition(b"\n")
    parts = head.split()
    if len(parts) != 2 or not all(t.isdigit() for t in parts):
        raise file_error(p, f"first line must be 'width height', got {head[:40]!r}")
    w, h = int(parts[0]), int(parts[1])
    if w <= 0 or h <= 0:
        raise file_error(p, f"invalid mask size {w}x{h}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(body, dtype=np.int64, sep=" ")  # type: ignore[call-overload]
        except (DeprecationWarning, ValueError):
            raise file_error(p, "mask contains a value that is not an integer") from None
    if values.size != w * h:
        raise file_error(p, f"mask has {values.size} values, expected {w}*{h} = {w * h}")
    if values.size and values.min() < 0:
        raise file_error(p, f"mask has negative labels (min {values.min()})")
    if values.size and values.max() > np.iinfo(np.int32).max:
        raise file_error(p, "mask has labels above the int32 range")
    return values.reshape(h, w).astype(np.int32)


def _mask_key(value: str) -> str:
    """Normalise a mask reference ('image05', 'image05_mask', 'image05_mask.txt.gz')."""
    v = Path(str(value)).name
    for suf in (".txt.gz", ".txt"):
        if v.lower().endswith(suf):
            v = v[: -len(suf)]
    return v[: -len("_mask")] if v.endswith("_mask") else v


def _load_pairs(pairs: Mapping[str, str] | str | Path) -> tuple[dict[str, str], str]:
    if isinstance(pairs, Mapping):
        return {str(k): _mask_key(str(v)) for k, v in pairs.items()}, "pairs"
    from ircr.config import load_yaml_file

    path = Path(pairs)
    data = load_yaml_file(path, what="pairs mapping")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise file_error(path, "pairs mapping must be a YAML mapping 'image name: mask name'")
    return {str(k): _mask_key(v) for k, v in data.items()}, str(path)


def _resolve_pairs(
    images: dict[str, Path], masks: dict[str, Path], pairs: Mapping[str, str] | str | Path | None,
    fix_known_swaps: bool,
) -> dict[str, Path]:
    """image name -> mask file, applying the known swap and then explicit pairs."""
    chosen = {n: n for n in images}
    if fix_known_swaps:
        chosen.update({k: v for k, v in KNOWN_SWAPS.items() if k in images})
    if pairs is not None:
        mapping, origin = _load_pairs(pairs)
        for img, mask in mapping.items():
            if img not in images:
                raise IrcrError(f"{origin}: image '{img}' is not in the dataset")
            if mask not in masks:
                msg = f"mask '{mask}' (for image '{img}') is not in the dataset"
                raise IrcrError(f"{origin}: {msg}")
            chosen[img] = mask
    out: dict[str, Path] = {}
    for img, mask in chosen.items():
        if mask not in masks:
            raise file_error(images[img], f"no mask {mask}_mask.txt[.gz] found for this image")
        out[img] = masks[mask]
    return out


def iter_cpm15(
    root: str | Path,
    pairs: Mapping[str, str] | str | Path | None = None,
    fix_known_swaps: bool = False,
) -> Iterator[Sample]:
    """Yield CPM-15 samples in name order (see module docstring for layout and options).

    Raises:
        IrcrError: missing/empty folder, missing mask, bad pairs mapping, a mask whose size
            differs from its image (naming both files and sizes), unreadable files.
    """
    base = require_root(root, "cpm15")
    img_dir = find_subdir(base, ("images",)) or base
    mask_dir = find_subdir(base, ("labels_txt", "labels")) or base
    images = list_by_stem(img_dir, (".png",))
    if not images:
        raise empty_folder_error(img_dir, "CPM-15 images (imageNN.png)")
    masks = list_by_stem(mask_dir, _MASK_SUFFIXES, strip="_mask")
    pairing = _resolve_pairs(images, masks, pairs, bool(fix_known_swaps))
    _check_sizes(images, pairing)
    return _generate(images, pairing)


def _mask_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a mask's first line without reading the rest (None if unreadable)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:  # type: ignore[operator]
            parts = fh.readline(64).split()
        return int(parts[0]), int(parts[1])
    except (OSError, EOFError, ValueError, IndexError):
        return None  # the full parser reports the problem when the sample is read


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # reported by read_image when the sample is read
        return None


def _size_error(img_path: Path, isize: tuple[int, int], mask_path: Path,
                msize: tuple[int, int]) -> IrcrError:
    return IrcrError(
        f"{img_path}: image is {isize[0]}x{isize[1]} but its mask {mask_path} is "
        f"{msize[0]}x{msize[1]} (WxH); fix the pairing with --option pairs=PAIRS.yaml (a "
        "YAML mapping image: mask), or --option fix_known_swaps=true for the swapped "
        "image04/image05 masks of the shared copy"
    )


def _check_sizes(images: dict[str, Path], pairing: dict[str, Path]) -> None:
    """Fail before reading any pixels when a header says image and mask sizes differ."""
    for name, img_path in images.items():
        isize, msize = _image_size(img_path), _mask_size(pairing[name])
        if isize is not None and msize is not None and isize != msize:
            raise _size_error(img_path, isize, pairing[name], msize)


def _generate(images: dict[str, Path], pairing: dict[str, Path]) -> Iterator[Sample]:
    for name, img_path in images.items():
        mask_path = pairing[name]
        image = read_image(img_path)
        inst = read_cpm15_mask(mask_path)
        if image.shape[:2] != inst.shape:
            (ih, iw), (mh, mw) = image.shape[:2], inst.shape
            raise _size_error(img_path, (iw, ih), mask_path, (mw, mh))
        meta = {
            "name": name, "source": "cpm15", "mpp": cpm15_mpp(name), "path": str(img_path),
            "label_path": str(mask_path),
        }
        yield Sample(image=image, inst=inst, meta=meta)
