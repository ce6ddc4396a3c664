"""Patch grids and seeded splits (ircr-method.md §5).

* Patches: non-overlapping (or overlapping, ``stride <= patch``) windows on a regular grid;
  the last row/column of windows may extend past the image (reflect padding) so every pixel
  is covered, and each patch remembers its valid height/width.
* Train/val by **image** (``val_fraction`` of the labelled images, at least one when there
  are two or more), then labelled/unlabelled by **patch** among the train patches at a
  ratio (at least one labelled). Optionally a **test** set by image first
  (``test_fraction`` of the labelled images, at least one when > 0; BASS's 6:2:2 protocol is
  ``val_fraction=0.2, test_fraction=0.2``); its images are in neither train nor val, and
  ``test_fraction=0`` gives exactly the splits of earlier versions. A dataset may fix its
  validation images instead (``split: val`` in their metadata, e.g. PanNuke's Fold 2 as
  the paper's protocol says): then those are the validation set, ``val_fraction`` is not
  used, and the split file says ``val_source: dataset``. The draws are seeded;
  the labelled draw takes a prefix of one seeded permutation, so for one seed the 1/32 set
  is inside the 1/16 set, etc.
* Split files are human-readable YAML; several may coexist (``splits/ratio_1-8_seed0.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from ircr.errors import IrcrError

__all__ = [
    "Patch",
    "SplitPlan",
    "grid_positions",
    "patch_grid",
    "parse_ratio",
    "ratio_text",
    "split_name",
    "make_split",
    "check_fractions",
    "write_split",
    "read_split_file",
]

_VAL_STREAM = 0x76616C  # independent RNG streams for the two draws
_LAB_STREAM = 0x6C6162
_TEST_STREAM = 0x746573


class Patch(NamedTuple):
    """One patch: image index, top-left corner, and the valid (unpadded) height/width."""

    image: int
    y0: int
    x0: int
    h: int
    w: int


def grid_positions(length: int, patch: int, stride: int) -> list[int]:
    """Start positions along one axis: 0, stride, ... until a window reaches the end."""
    if length < 1 or patch < 1 or not 1 <= stride <= patch:
        raise IrcrError(
            f"patch grid: need length >= 1, patch >= 1 and 1 <= stride <= patch "
            f"(got length={length}, patch={patch}, stride={stride})"
        )
    pos = [0]
    while pos[-1] + patch < length:
        pos.append(pos[-1] + stride)
    return pos


def patch_grid(image: int, height: int, width: int, patch: int, stride: int) -> list[Patch]:
    """All patches of one (height, width) image in raster order."""
    return [
        Patch(image, y0, x0, min(patch, height - y0), min(patch, width - x0))
        for y0 in grid_positions(height, patch, stride)
        for x0 in grid_positions(width, patch, stride)
    ]


def parse_ratio(value: Any, where: str = "--ratio") -> Fraction:
    """``"1/8"``, ``"1-8"``, ``"0.125"``, ``0.125``, ``1`` -> Fraction in (0, 1]."""
    bad = IrcrError(
        f"{where}: labelled ratio must be a fraction a/b or a number in (0, 1], got {value!r}"
    )
    if isinstance(value, bool):
        raise bad
    try:
        if isinstance(value, Fraction):
            r = value
        elif isinstance(value, int):
            r = Fraction(value)
        elif isinstance(value, float):
            r = Fraction(repr(value)).limit_denominator(1_000_000)
        else:
            text = str(value).strip().replace("-", "/")
            if "/" in text:
                a, b = text.split("/")
                if not (a.strip().isdigit() and b.strip().isdigit()):
                    raise bad
                r = Fraction(int(a), int(b))
            else:
                r = Fraction(text).limit_denominator(1_000_000)
    except (ValueError, ZeroDivisionError):
        raise bad from None
    if not 0 < r <= 1:
        raise bad
    return r


def ratio_text(r: Fraction) -> str:
    """``Fraction(1, 8)`` -> ``"1/8"``; ``Fraction(1)`` -> ``"1"``."""
    return str(r.numerator) if r.denominator == 1 else f"{r.numerator}/{r.denominator}"


def split_name(ratio: Fraction, seed: int, val_fraction: float = 0.1,
               test_fraction: float = 0.0) -> str:
    """File stem of a split: ``ratio_1-8_seed0`` (``_val0.2`` added when not 0.1,
    ``_test0.2`` when a test set is held out)."""
    name = f"ratio_{ratio_text(ratio).replace('/', '-')}_seed{int(seed)}"
    if not math.isclose(val_fraction, 0.1):
        name += f"_val{val_fraction:g}"
    if test_fraction > 0:
        name += f"_test{test_fraction:g}"
    return name


@dataclass
class SplitPlan:
    """A split in terms of image indices and patches (see :func:`make_split`)."""

    ratio: Fraction
    seed: int
    val_fraction: float
    train_images: list[int]
    val_images: list[int]
    labelled_patches: list[Patch]
    unlabelled_patches: list[Patch]
    extra: dict[str, Any] = field(default_factory=dict)
    test_images: list[int] = field(default_factory=list)
    test_fraction: float = 0.0
    val_marked: bool = False  # validation images fixed by the dataset, not drawn


def _n_val(n_labelled: int, val_fraction: float) -> int:
    if val_fraction <= 0 or n_labelled < 2:
        return 0
    return min(max(1, math.floor(val_fraction * n_labelled + 0.5)), n_labelled - 1)


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    """``--val-fraction`` in [0, 1), ``--test-fraction`` in [0, 1), their sum < 1."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise IrcrError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise IrcrError(f"--test-fraction: must be in [0, 1), got {test_fraction}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise IrcrError(f"--test-fraction: with --val-fraction {val_fraction} nothing is "
                        f"left to train on (the sum must be < 1), got {test_fraction}")


def _test_images(lab_idx: list[int], seed: int, test_fraction: float) -> list[int]:
    if test_fraction <= 0:
        return []
    n_test = max(1, math.floor(test_fraction * len(lab_idx) + 0.5))
    if n_test > len(lab_idx) - 1:
        raise IrcrError(f"--test-fraction: {test_fraction} of {len(lab_idx)} labelled image(s) "
                        "leaves none to train on")
    perm = np.random.default_rng([int(seed), _TEST_STREAM]).permutation(len(lab_idx))
    return sorted(lab_idx[int(k)] for k in perm[:n_test])


def make_split(
    labelled_images: Sequence[bool],
    patches: Sequence[Patch],
    ratio: Any = "1/8",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    val_images: Sequence[int] | None = None,
) -> SplitPlan:
    """Seeded train/val (by image) and labelled/unlabelled (by train patch) split.

    Args:
        labelled_images: per image, whether it has an instance map (only those can be
            validation images or give labelled patches).
        patches: every patch of the dataset.
        ratio: labelled fraction of the labelled train images' patches (see parse_ratio).
        seed: seed of both draws; the same (seed, ratio, val_fraction) gives the same split.
        val_fraction: fraction of the labelled images held out for validation, in [0, 1).
        test_fraction: fraction of the labelled images held out for testing (drawn first,
            by image, from its own seeded stream; 0 = no test set).
        val_images: image indices the dataset fixes as validation images (metadata
            ``split: val``); when given, they are the validation set and ``val_fraction``
            is not used (the test images are drawn from the other labelled images).
    """
    r = parse_ratio(ratio)
    check_fractions(val_fraction, test_fraction)
    lab_idx = [i for i, lab in enumerate(labelled_images) if lab]
    if not lab_idx:
        raise IrcrError("split: the dataset has no labelled image")
    marked = sorted({int(i) for i in val_images or []})
    if marked:
        val, test = _marked_val(labelled_images, lab_idx, marked, seed, float(test_fraction))
    else:
        test = _test_images(lab_idx, seed, float(test_fraction))
        rest = [i for i in lab_idx if i not in set(test)]
        # val is a fraction of ALL labelled images (6:2:2 = 0.2 and 0.2), >= 1 train image
        n_val = min(_n_val(len(lab_idx), float(val_fraction)), max(len(rest) - 1, 0))
        perm = np.random.default_rng([int(seed), _VAL_STREAM]).permutation(len(rest))
        val = sorted(rest[int(k)] for k in perm[:n_val])
    val_set = set(val) | set(test)
    train = [i for i in range(len(labelled_images)) if i not in val_set]
    train_set = set(train)
    candidates = sorted(p for p in patches if p.image in train_set and labelled_images[p.image])
    if not candidates:
        raise IrcrError("split: no labelled training patch (all labelled images are in val)")
    n_lab = min(max(1, math.floor(r * len(candidates) + Fraction(1, 2))), len(candidates))
    order = np.random.default_rng([int(seed), _LAB_STREAM]).permutation(len(candidates))
    chosen = {candidates[int(k)] for k in order[:n_lab]}
    labelled = [p for p in candidates if p in chosen]
    unlabelled = sorted(p for p in patches if p.image in train_set and p not in chosen)
    return SplitPlan(r, int(seed), float(val_fraction), train, val, labelled, unlabelled,
                     test_images=test, test_fraction=float(test_fraction),
                     val_marked=bool(marked))


def _marked_val(labelled_images: Sequence[bool], lab_idx: list[int], marked: list[int],
                seed: int, test_fraction: float) -> tuple[list[int], list[int]]:
    """Validation images fixed by the dataset, and the test images drawn from the others."""
    bad = [i for i in marked if not 0 <= i < len(labelled_images) or not labelled_images[i]]
    if bad:
        raise IrcrError(f"split: image {bad[0]} is marked as a validation image but has no "
                        "labels (validation needs ground truth)")
    rest = [i for i in lab_idx if i not in set(marked)]
    if not rest:
        raise IrcrError("split: every labelled image is marked as a validation image; "
                        "nothing is left to train on")
    return marked, _test_images(rest, seed, test_fraction)


def write_split(
    path: Path, plan: SplitPlan, names: Sequence[str], patch: int, stride: int, dataset: str
) -> Path:
    """Write ``plan`` as YAML (images by name, patches as ``[name, y0, x0]``)."""

    def refs(ps: Sequence[Patch]) -> list[list[Any]]:
        return [[names[p.image], p.y0, p.x0] for p in ps]

    doc = {
        "format": "ircr-split",
        "version": 1,
        "dataset": dataset,
        "ratio": ratio_text(plan.ratio),
        "seed": plan.seed,
        "val_fraction": plan.val_fraction,
        **({"val_source": "dataset"} if plan.val_marked else {}),
        **({"test_fraction": plan.test_fraction} if plan.test_fraction > 0 else {}),
        "patch": patch,
        "stride": stride,
        "counts": {
            "train_images": len(plan.train_images),
            "val_images": len(plan.val_images),
            **({"test_images": len(plan.test_images)} if plan.test_fraction > 0 else {}),
            "labelled_patches": len(plan.labelled_patches),
            "unlabelled_patches": len(plan.unlabelled_patches),
        },
        "train_images": [names[i] for i in plan.train_images],
        "val_images": [names[i] for i in plan.val_images],
        **({"test_images": [names[i] for i in plan.test_images]}
           if plan.test_fraction > 0 else {}),
        "labelled_patches": refs(plan.labelled_patches),
        "unlabelled_patches": refs(plan.unlabelled_patches),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# ircr split: train/val by image, labelled/unlabelled by train patch.\n"
        "# Patches are [image name, y0, x0] of the dataset's patch grid.\n"
    ) + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def read_split_file(path: Path) -> dict[str, Any]:
    """Parse a split YAML and check its keys; returns the raw mapping."""
    from ircr.config import load_yaml_file

    doc = load_yaml_file(path, what="split")
    if not isinstance(doc, dict) or doc.get("format") != "ircr-split":
        raise IrcrError(f"{path}: not an ircr split file (missing 'format: ircr-split')")
    need = ("ratio", "seed", "train_images", "val_images", "labelled_patches",
            "unlabelled_patches", "patch", "stride")
    for key in need:
        if key not in doc:
            raise IrcrError(f"{path}: split file lacks '{key}'")
    return doc
