"""The training data of ``ircr adapt``: target tiles (+ source labels) as one prepared dataset.

The adaptation reuses the one trainer, which reads one prepared dataset and one split. So the
target tiles, sampled once (:mod:`ircr.engine.tile_source`, at the model's µm/px, tissue
only, deterministic for the seed), are written as *unlabelled* images of a prepared dataset
``OUT/data``; the images of the optional labelled source data that hold labelled patches of
its split are copied in with their labels, and ``OUT/data/splits/adapt.yaml`` lists those
labelled patches and every target patch as unlabelled (no validation images: the target has
no labels). A resumed run reuses the folder, so it sees exactly the same tiles.

Target label files are never opened: targets are read as images only, and the target
images of ``OUT/data`` are stored without labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ircr.data.prepare import prepare_samples
from ircr.data.sample import Sample
from ircr.data.splits import Patch, SplitPlan, write_split
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError

SPLIT_NAME = "adapt"
SOURCE_PREFIX = "source_"
TARGET_PREFIX = "target_"


@dataclass
class LabelledSource:
    """Labelled source data kept under a supervised term: a prepared dataset and its split."""

    dataset: Path
    split: str
    reason: str  # why it was chosen (start summary)


@dataclass
class AdaptData:
    """What :func:`build_adapt_data` wrote: the dataset, its split and counts."""

    path: Path
    split: Path
    n_tiles: int
    n_target_patches: int
    n_labelled_patches: int
    patch_size: int
    info: dict[str, Any] = field(default_factory=dict)


def labelled_choice(meta: dict[str, Any], labelled: str | None,
                    split: str | None) -> LabelledSource | None:
    """Which labelled data keeps a supervised term (``--labelled``), or None.

    Args:
        meta: the model folder's model.yaml mapping (``train.dataset``/``train.split``).
        labelled: ``None`` = the model's own training data when model.yaml names a prepared
            dataset that exists, else none; ``"none"`` = none; else a prepared dataset.
        split: ``--labelled-split`` (default: the model's split when the dataset is its
            own, else the dataset's only split).
    """
    got = meta.get("train")
    train: dict[str, Any] = got if isinstance(got, dict) else {}
    own = str(train.get("dataset") or "")
    own_split = str(train.get("split") or "")
    if labelled is None:
        if not own or not (Path(own) / "dataset.json").is_file():
            return None
        labelled, reason = own, "the model's own training data (model.yaml train.dataset)"
    elif labelled == "none":
        return None
    else:
        reason = "--labelled"
    path = Path(labelled)
    ds = PreparedDataset(path)  # one-line error when it is not a prepared dataset
    names = ds.split_names()
    same = own and Path(own).resolve() == path.resolve()
    if split is None:
        if same and own_split in names:
            split = own_split
        elif len(names) == 1:
            split = names[0]
        else:
            raise IrcrError(f"--labelled-split: {path} has {len(names)} splits "
                            f"({', '.join(names) or 'none'}); name one")
    elif split not in names and not Path(split).is_file():
        raise IrcrError(f"--labelled-split: {path}: no split '{split}' (available: "
                        f"{', '.join(names) or 'none'})")
    return LabelledSource(path, split, reason)


def _source_samples(src: LabelledSource) -> tuple[list[int], Iterator[Sample], list[Patch]]:
    """Images holding labelled patches of the source split (copied with their labels)."""
    ds = PreparedDataset(src.dataset)
    raw = ds.load_split(src.split)
    if not raw.labelled_patches:
        raise IrcrError(f"--labelled: {src.dataset}: split '{src.split}' has no labelled "
                        "patches")
    images = sorted({p.image for p in raw.labelled_patches})

    def gen() -> Iterator[Sample]:
        for i in images:
            m = ds.images[i]
            yield Sample(np.asarray(ds.load_image(i)), np.asarray(ds.load_inst(i)),
                         {"name": SOURCE_PREFIX + ds.names[i], "source": ds.source,
                          "mpp": m.get("mpp")})

    return images, gen(), list(raw.labelled_patches)


def _target_samples(tiles: np.ndarray, mpp: float) -> Iterator[Sample]:
    for k, tile in enumerate(tiles):
        yield Sample(np.ascontiguousarray(tile), None,
                     {"name": f"{TARGET_PREFIX}{k:05d}", "source": "adapt-target", "mpp": mpp})


def build_adapt_data(out: Path, tiles: np.ndarray, mpp: float, patch_size: int,
                     labelled: LabelledSource | None, extra: dict[str, Any]) -> AdaptData:
    """Write ``out`` (a prepared dataset) and its ``adapt`` split; returns what was written.

    Args:
        out: the dataset folder (replaced when it exists).
        tiles: (n, S, S, 3) uint8 target tiles at ``mpp`` µm/px.
        mpp: the model's µm/px (recorded for the target images).
        patch_size: patch side when there is no labelled source (else the source's grid).
        labelled: labelled source data, or None.
        extra: JSON-safe keys recorded in dataset.json (the adapt request).
    """
    samples: list[Iterator[Sample]] = []
    src_images: list[int] = []
    src_patches: list[Patch] = []
    patch, stride = int(patch_size), int(patch_size)
    if labelled is not None:
        sds = PreparedDataset(labelled.dataset)
        patch, stride = sds.patch_size, sds.stride
        src_images, gen, src_patches = _source_samples(labelled)
        samples.append(gen)
    samples.append(_target_samples(tiles, mpp))
    res = prepare_samples((s for it in samples for s in it), out, source="adapt",
                          patch=patch, stride=stride, overwrite=True, split=False,
                          extra={"adapt": extra})
    ds = PreparedDataset(res.path)
    new_index = {old: k for k, old in enumerate(src_images)}
    lab = [Patch(new_index[p.image], p.y0, p.x0, p.h, p.w) for p in src_patches]
    first_target = len(src_images)
    unl = [p for p in ds.patches if p.image >= first_target]
    plan = SplitPlan(Fraction(len(lab), max(len(lab) + len(unl), 1)) if lab else Fraction(0),
                     0, 0.0, list(range(len(ds.names))), [], lab, unl)
    split = write_split(ds.path / "splits" / f"{SPLIT_NAME}.yaml", plan, ds.names,
                        ds.patch_size, ds.stride, "adapt")
    return AdaptData(ds.path, split, len(tiles), len(unl), len(lab), ds.patch_size)


def existing_adapt_data(out: Path) -> AdaptData | None:
    """The dataset of an earlier start of the same run (complete: split written), or None."""
    split = out / "splits" / f"{SPLIT_NAME}.yaml"
    if not (out / "dataset.json").is_file() or not split.is_file():
        return None
    ds = PreparedDataset(out)
    raw = ds.load_split(SPLIT_NAME)
    n_tiles = sum(1 for n in ds.names if n.startswith(TARGET_PREFIX))
    return AdaptData(ds.path, split, n_tiles, len(raw.unlabelled_patches),
                     len(raw.labelled_patches), ds.patch_size, dict(ds.info.get("adapt") or {}))
