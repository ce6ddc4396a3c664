"""Prepare a canonical on-disk dataset from any reader (``ircr data prepare``).

Layout written under ``OUT``::

    dataset.json           index: format, source, patch/stride, one entry per image
                           (name, file stem, source, mpp, height, width, labelled, nuclei)
    images/<stem>.png      RGB image (lossless)
    labels/<stem>.png      instance map, 16-bit PNG when every id < 65536, else
    labels/<stem>.npy      int32 .npy
    patches.csv            patch grid: index, image, name, y0, x0, h, w (h, w = valid size)
    splits/<name>.yaml     one file per (ratio, seed[, val fraction]); see ircr.data.splits

Nothing derived from augmentation is cached: the trainer computes targets itself.
``dataset.json`` is written last, so an interrupted run never looks like a dataset.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ircr._version import __version__
from ircr.data.sample import Sample
from ircr.data.splits import (
    Patch,
    check_fractions,
    make_split,
    parse_ratio,
    patch_grid,
    split_name,
    write_split,
)
from ircr.errors import IrcrError
from ircr.io.atomic import AtomicPath, atomic_write_bytes, atomic_write_text
from ircr.io.paths import ensure_dir, unique_name
from ircr.io.wsi import check_mpp

__all__ = ["prepare_dataset", "prepare_samples", "add_split", "PrepareResult", "FORMAT"]

FORMAT = "ircr-prepared-dataset"
_OUR_ENTRIES = ("dataset.json", "patches.csv", "images", "labels", "splits")


@dataclass
class PrepareResult:
    """Summary of a prepared dataset."""

    path: Path
    n_images: int
    n_labelled_images: int
    n_patches: int
    n_nuclei: int
    split_paths: list[Path]


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise IrcrError(f"{path}: could not encode PNG")
    atomic_write_bytes(path, buf.tobytes())


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
        elif isinstance(value, (np.integer, np.floating)):
            out[str(key)] = value.item()
        elif isinstance(value, Path):
            out[str(key)] = str(value)
    return out


def _check_sample(sample: Sample, index: int) -> tuple[str, np.ndarray, np.ndarray | None]:
    name = str(sample.meta.get("name") or f"image_{index:04d}")
    where = sample.meta.get("path") or name
    img = sample.image
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise IrcrError(f"{where}: image must be (H, W, 3), got {getattr(img, 'shape', None)}")
    if img.dtype != np.uint8:
        raise IrcrError(f"{where}: image must be uint8 RGB, got {img.dtype}")
    inst = sample.inst
    if inst is not None:
        if inst.shape != img.shape[:2]:
            raise IrcrError(f"{where}: label map {inst.shape} does not match image {img.shape}")
        if not np.issubdtype(inst.dtype, np.integer) or (inst.size and inst.min() < 0):
            raise IrcrError(f"{where}: label map must hold non-negative integer ids")
    return name, img, inst


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse a file, a foreign non-empty folder, or an existing dataset without overwrite."""
    if out.exists() and not out.is_dir():
        raise IrcrError(f"{out}: output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "dataset.json").is_file():
            raise IrcrError(f"{out}: output folder is not empty and is not a prepared dataset")
        if not overwrite:
            raise IrcrError(f"{out}: a prepared dataset already exists (use --overwrite)")


def _install(work: Path, out: Path) -> None:
    """Move the finished dataset from ``work`` to ``out`` (replacing our entries there)."""
    ensure_dir(out)
    for entry in _OUR_ENTRIES:
        p = out / entry
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for entry in _OUR_ENTRIES:
        if entry != "dataset.json" and (work / entry).exists():
            (work / entry).replace(out / entry)
    (work / "dataset.json").replace(out / "dataset.json")  # last: marks the dataset complete
    shutil.rmtree(work, ignore_errors=True)


def _write_sample(out: Path, stem: str, img: np.ndarray, inst: np.ndarray | None) -> str | None:
    _write_png(out / "images" / f"{stem}.png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if inst is None:
        return None
    if int(inst.max(initial=0)) < 65536:
        rel = f"labels/{stem}.png"
        _write_png(out / rel, inst.astype(np.uint16))
    else:
        rel = f"labels/{stem}.npy"
        with AtomicPath(out / rel) as tmp, tmp.open("wb") as fh:  # np.save(path) adds .npy
            np.save(fh, inst.astype(np.int32))
    return rel


def _write_patches(path: Path, patches: Sequence[Patch], names: Sequence[str]) -> None:
    with AtomicPath(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "image", "name", "y0", "x0", "h", "w"])
        for k, p in enumerate(patches):
            w.writerow([k, p.image, names[p.image], p.y0, p.x0, p.h, p.w])


def _check_grid(patch: int, stride: int | None) -> int:
    if int(patch) < 16:
        raise IrcrError(f"--patch: must be >= 16, got {patch}")
    s = int(patch) if stride is None else int(stride)
    if not 1 <= s <= int(patch):
        raise IrcrError(f"--stride: must be between 1 and the patch size {patch}, got {s}")
    return s


def prepare_samples(
    samples: Iterable[Sample],
    out: str | Path,
    *,
    source: str,
    patch: int = 256,
    stride: int | None = None,
    val_fraction: float = 0.1,
    ratio: Any = "1/8",
    seed: int = 0,
    overwrite: bool = False,
    test_fraction: float = 0.0,
    extra: dict[str, Any] | None = None,
    progress: Callable[[int, str], None] | None = None,
    split: bool = True,
) -> PrepareResult:
    """Write ``samples`` as a prepared dataset under ``out`` plus one split.

    Args:
        samples: Sample iterator (image (H, W, 3) uint8, inst (H, W) int or None).
        out: output folder (created; an existing prepared dataset needs ``overwrite``).
        source: dataset name recorded in the index.
        patch, stride: patch grid (stride defaults to patch: non-overlapping).
        val_fraction, ratio, seed, test_fraction: the split written to ``splits/`` (see
            make_split; BASS's 6:2:2 protocol: val_fraction=0.2, test_fraction=0.2).
        extra: more JSON-safe keys for the index (e.g. reader root/options).
        progress: called as ``progress(i, name)`` after each image.
        split: write the split file (False: the caller writes its own, e.g. ``ircr adapt``
            for a dataset that may have no labelled image).
    """
    stride = _check_grid(patch, stride)
    r = parse_ratio(ratio)
    check_fractions(val_fraction, test_fraction)
    out = Path(out)
    _check_output(out, overwrite)
    # a read-only place fails here, naming the folder, before any work (creates nothing new)
    ensure_dir(out if out.is_dir() else out.parent, "output folder" if out.is_dir() else
               "parent of the output folder")
    # Build in a hidden sibling folder; an error leaves nothing behind.
    work = out.parent / f".{out.name}.preparing"
    shutil.rmtree(work, ignore_errors=True)
    ensure_dir(work / "images", "work folder")
    ensure_dir(work / "labels", "work folder")
    try:
        entries, patches = _write_images(samples, work, source, int(patch), stride, progress)
        if not entries:
            raise IrcrError(f"{out}: the dataset '{source}' yielded no images")
        names = [e["name"] for e in entries]
        _write_patches(work / "patches.csv", patches, names)
        rel = Path("splits") / f"{split_name(r, seed, val_fraction, test_fraction)}.yaml"
        if split:
            plan = make_split([e["labelled"] for e in entries], patches, r, seed,
                              val_fraction, test_fraction, marked_val(entries))
            write_split(work / rel, plan, names, int(patch), stride, source)
        index = {
            "format": FORMAT, "version": 1, "ircr_version": __version__, "source": source,
            "patch": int(patch), "stride": stride, "n_images": len(entries),
            "n_patches": len(patches), **(extra or {}), "images": entries,
        }
        atomic_write_text(work / "dataset.json", json.dumps(index, indent=1))
        _install(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return PrepareResult(
        out, len(entries), sum(e["labelled"] for e in entries), len(patches),
        sum(e["nuclei"] for e in entries), [out / rel] if split else [],
    )


def _write_images(
    samples: Iterable[Sample], work: Path, source: str, patch: int, stride: int,
    progress: Callable[[int, str], None] | None,
) -> tuple[list[dict[str, Any]], list[Patch]]:
    """Write every sample's image and labels under ``work``; returns index entries, patches."""
    entries: list[dict[str, Any]] = []
    patches: list[Patch] = []
    taken: set[str] = set()
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        name, img, inst = _check_sample(sample, i)
        if name in seen:
            raise IrcrError(f"{sample.meta.get('path') or name}: duplicate image name '{name}'")
        seen.add(name)
        stem = unique_name(name, taken)  # never a path: names come from the data
        label_rel = _write_sample(work, stem, img, inst)
        h, w = img.shape[:2]
        n_nuclei = 0 if inst is None else int(np.unique(inst).size - (inst.min() == 0))
        meta = _json_safe(sample.meta)
        meta.update(
            name=name, file=stem, source=str(meta.get("source") or source),
            mpp=_sample_mpp(sample, name), height=h, width=w, labelled=inst is not None,
            image=f"images/{stem}.png", labels=label_rel, nuclei=n_nuclei,
        )
        entries.append(meta)
        patches.extend(patch_grid(i, h, w, patch, stride))
        if progress is not None:
            progress(i, name)
    return entries, patches


def _sample_mpp(sample: Sample, name: str) -> float | None:
    """The sample's pixel size (None = unknown); a non-number, NaN or implausible value is a
    one-line error naming the image (evaluation would rescale by it)."""
    mpp = sample.meta.get("mpp")
    if mpp is None:
        return None
    return check_mpp(mpp, key=f"{sample.meta.get('path') or name}: mpp")


def prepare_dataset(
    name: str,
    root: str | Path | None,
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    limit: int | None = None,
    **kwargs: Any,
) -> PrepareResult:
    """Read dataset ``name`` at ``root`` with a registered reader and prepare it at ``out``.

    ``options`` are passed to the reader (``open_dataset(name, root, **options)``);
    ``limit`` keeps the first N images; other keyword arguments go to prepare_samples.
    """
    from ircr.data.datasets import open_dataset

    if limit is not None and int(limit) < 1:
        raise IrcrError(f"--limit: must be >= 1, got {limit}")
    opts = dict(options or {})
    samples: Iterable[Sample] = open_dataset(name, root, **opts)
    if limit is not None:
        samples = itertools.islice(samples, int(limit))
    extra = {
        "reader": {
            "name": str(name).lower(),
            "root": None if root is None else str(Path(root).resolve()),
            "options": _json_safe(opts),
            "limit": limit,
        }
    }
    return prepare_samples(samples, out, source=str(name).lower(), extra=extra, **kwargs)


def marked_val(images: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the images whose metadata fixes them as validation images (``split: val``,
    e.g. PanNuke's Fold 2 read with ``--option val_fold=...``)."""
    return [i for i, m in enumerate(images) if str(m.get("split", "")).lower() == "val"]


def add_split(
    dataset: str | Path, ratio: Any, seed: int = 0, val_fraction: float = 0.1,
    test_fraction: float = 0.0,
) -> Path:
    """Write one more split file for an already prepared dataset; returns its path."""
    from ircr.data.store import PreparedDataset

    ds = PreparedDataset(dataset)
    r = parse_ratio(ratio)
    plan = make_split([m["labelled"] for m in ds.images], ds.patches, r, seed, val_fraction,
                      test_fraction, marked_val(ds.images))
    path = ds.path / "splits" / f"{split_name(r, seed, val_fraction, test_fraction)}.yaml"
    return write_split(path, plan, ds.names, ds.patch_size, ds.stride, ds.source)
