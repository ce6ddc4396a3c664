"""PanNuke (Gamper et al. 2019/2020): 256x256 patches at 40x from 19 tissue types.

Published layout of one fold (``Fold 1/``): ``images/fold1/images.npy`` (N, 256, 256, 3)
float64 or uint8 RGB 0..255, ``masks/fold1/masks.npy`` (N, 256, 256, 6) and optionally
``images/fold1/types.npy`` (N,) tissue names. ``root`` may be the fold folder or any
folder that contains exactly one ``images.npy`` and one ``masks.npy`` below it. Arrays are
memory-mapped, so a 4 GB fold is read one patch at a time.

Validation from another fold (the IRCR paper's protocol: Fold 1 trains, Fold 2 validates,
Fold 3 tests): ``val_fold`` names a second fold folder whose patches follow the first
fold's with ``meta["split"] = "val"``; the split files of the prepared dataset then take
exactly those as validation images (:func:`ircr.data.splits.make_split`).

Mask channels 0-4 hold per-class instance ids (0 neoplastic, 1 inflammatory, 2 connective,
3 dead, 4 epithelial; ids may repeat across channels) and channel 5 is background. They are
merged into one map with unique ids by :func:`merge_pannuke_masks`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ircr.data.datasets._common import require_root
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import to_uint8

PANNUKE_MPP = 0.25  # 40x
PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def merge_pannuke_masks(mask: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Merge a (H, W, 6) PanNuke mask into one instance map.

    Instances are numbered 1..K channel by channel (channel 0 first, ids in increasing
    order within a channel). Where two channels overlap (not expected in PanNuke) the
    earlier channel keeps the pixel.

    Returns:
        inst (H, W) int32 and {instance id: class name} for the ids present in ``inst``.
    """
    h, w = mask.shape[:2]
    inst = np.zeros((h, w), dtype=np.int32)
    classes: dict[int, str] = {}
    next_id = 1
    for c, cls in enumerate(PANNUKE_CLASSES):
        ch = np.asarray(mask[..., c])
        fg = ch > 0
        if not fg.any():
            continue
        ids, inverse = np.unique(ch[fg], return_inverse=True)
        new = (next_id + inverse).astype(np.int32)
        free = inst[fg] == 0
        vals = inst[fg]
        vals[free] = new[free]
        inst[fg] = vals
        for k in np.unique(new[free]):
            classes[int(k)] = cls
        next_id += ids.size
    return inst, classes


def _find_one(base: Path, filename: str) -> Path:
    hits = sorted(p for p in base.rglob(filename) if p.is_file())
    if not hits:
        raise file_error(base, f"no {filename} found in this folder (PanNuke fold layout)")
    if len(hits) > 1:
        names = ", ".join(str(h.relative_to(base)) for h in hits[:4])
        raise file_error(base, f"several {filename} files ({names}); pass one fold folder")
    return hits[0]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(str(path), mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise file_error(path, f"cannot read .npy ({type(exc).__name__}: {exc})") from None


def iter_pannuke(root: str | Path, indices: Sequence[int] | None = None,
                 val_fold: str | Path | None = None) -> Iterator[Sample]:
    """Yield PanNuke patches of one fold (``indices`` selects a subset, in that order), then
    every patch of ``val_fold`` (another fold folder) marked ``split: val``.

    Names are ``<fold>_<index:05d>`` with the fold folder name (spaces -> ``_``).

    Raises:
        IrcrError: missing files, mismatched array shapes, out-of-range indices, a
            ``val_fold`` that is the training fold or has the same folder name.
    """
    train = _open_fold(root, indices, None)
    if val_fold is None:
        return train
    if Path(val_fold).resolve() == Path(root).resolve():
        raise file_error(Path(val_fold), "val_fold is the training fold itself")
    if Path(val_fold).name == Path(root).name:
        raise file_error(Path(val_fold), "val_fold has the training fold's folder name "
                         "(image names would clash)")
    return itertools.chain(train, _open_fold(val_fold, None, "val"))


def _open_fold(root: str | Path, indices: Sequence[int] | None,
               split: str | None) -> Iterator[Sample]:
    """Check one fold folder's arrays and return its sample generator."""
    base = require_root(root, "pannuke")
    img_path, mask_path = _find_one(base, "images.npy"), _find_one(base, "masks.npy")
    images, masks = _load_npy(img_path), _load_npy(mask_path)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise file_error(img_path, f"expected (N, H, W, 3) images, got shape {images.shape}")
    if masks.ndim != 4 or masks.shape[-1] != 6:
        raise file_error(mask_path, f"expected (N, H, W, 6) masks, got shape {masks.shape}")
    if masks.shape[:3] != images.shape[:3]:
        raise file_error(mask_path, f"masks shape {masks.shape} does not match images "
                         f"{img_path} shape {images.shape}")
    types = None
    types_path = img_path.parent / "types.npy"
    if types_path.is_file():
        types = _load_npy(types_path)
    n = images.shape[0]
    order = list(range(n)) if indices is None else [int(i) for i in indices]
    bad = [i for i in order if not 0 <= i < n]
    if bad:
        raise file_error(img_path, f"index {bad[0]} out of range (fold has {n} patches)")
    prefix = re.sub(r"\s+", "_", base.name) or "pannuke"
    return _generate(images, masks, types, order, prefix, img_path, mask_path, split)


def _generate(images: np.ndarray, masks: np.ndarray, types: np.ndarray | None,
              order: list[int], prefix: str, img_path: Path, mask_path: Path,
              split: str | None = None) -> Iterator[Sample]:
    for i in order:
        image = to_uint8(np.asarray(images[i]), f"{img_path}[{i}]")
        inst, classes = merge_pannuke_masks(np.asarray(masks[i]))
        meta = {
            "name": f"{prefix}_{i:05d}", "source": "pannuke", "mpp": PANNUKE_MPP,
            "path": str(img_path), "label_path": str(mask_path), "index": i,
            "inst_class": classes,
            "tissue": str(types[i]) if types is not None and i < len(types) else None,
            **({"split": split} if split else {}),
        }
        yield Sample(image=np.ascontiguousarray(image), inst=inst, meta=meta)
