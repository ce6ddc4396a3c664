"""Lizard (Graham et al. 2021): colon H&E regions at 20x with six nucleus classes.

Published layout (as downloaded, any nesting): ``Lizard_Images1/<name>.png`` and
``Lizard_Images2/<name>.png`` (RGB), ``Lizard_Labels/Labels/<name>.mat`` (MATLAB v5 files
with ``inst_map`` (H, W) instance ids and, per instance, ``id`` (N, 1) and ``class`` (N, 1)
codes 1..6, names in :data:`LIZARD_CLASSES`). The reader walks ``root`` recursively, pairs
every ``.png`` with the ``.mat`` of the same name, and yields them in name order; an image
without a label file is an error (``missing="skip"`` leaves it out). Pixel size: 0.5 µm/px
(20x) unless ``mpp`` says otherwise: features such as area are in native pixels, so a prior
for 40x data is built with ``ircr prior build --mpp 0.25`` (docs/method.md).

Lizard re-annotates regions of other datasets, named by source (``consep_1``, ``crag_3``,
``dpath_2``, ``glas_5``, ``pannuke_4``): ``exclude="consep,pannuke"`` leaves out the images
whose name starts with one of those prefixes and ``_``, e.g. to keep a prior disjoint from
its target dataset as the IRCR paper requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from ircr.data.datasets._common import check_choice, empty_folder_error, require_root
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import as_label_map, check_same_size, read_image
from ircr.io.wsi import check_mpp

LIZARD_MPP = 0.5  # 20x (Lizard paper)
LIZARD_CLASSES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma",
                  5: "eosinophil", 6: "connective"}


def read_lizard_mat(path: str | Path) -> tuple[np.ndarray, dict[int, int]]:
    """Read a Lizard label ``.mat``: (inst_map (H, W) int32, {instance id: class code}).

    Raises:
        IrcrError: unreadable or v7.3 file, no ``inst_map``, ``id``/``class`` of different
            lengths.
    """
    from scipy.io import loadmat

    p = Path(path)
    try:
        mat = loadmat(str(p))
    except NotImplementedError:
        raise file_error(p, "MATLAB v7.3 (HDF5) .mat files are not supported; save with "
                         "-v7") from None
    except Exception as exc:
        raise file_error(p, f"cannot read .mat file ({type(exc).__name__}: {exc})") from None
    if "inst_map" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise file_error(p, f"no 'inst_map' variable (found: {found})")
    inst = as_label_map(np.asarray(mat["inst_map"]), p)
    if "id" not in mat or "class" not in mat:
        return inst, {}
    ids = np.asarray(mat["id"]).reshape(-1)
    codes = np.asarray(mat["class"]).reshape(-1)
    if ids.size != codes.size:
        raise file_error(p, f"'id' has {ids.size} rows but 'class' has {codes.size}")
    present = set(np.unique(inst[inst > 0]).tolist())
    return inst, {int(k): int(c) for k, c in zip(ids, codes) if int(k) in present}


def _by_stem(base: Path, suffix: str) -> dict[str, Path]:
    """Files ``*<suffix>`` anywhere under ``base`` by stem; a stem found twice is an error."""
    out: dict[str, Path] = {}
    for f in sorted(base.rglob(f"*{suffix}")):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.stem in out:
            raise file_error(f, f"a second {suffix} named '{f.stem}' (also {out[f.stem]})")
        out[f.stem] = f
    return out


def iter_lizard(root: str | Path, mpp: float = LIZARD_MPP,
                missing: Literal["error", "skip"] = "error",
                exclude: str | None = None) -> Iterator[Sample]:
    """Yield Lizard samples in name order (``meta["inst_class"]``: id -> class code);
    ``exclude``: comma-separated source prefixes to leave out (module docstring).

    Raises:
        IrcrError: missing/empty folder, an image without labels (``missing="error"``),
            unreadable files, image/label size mismatch.
    """
    check_choice("lizard", "missing", missing, ("error", "skip"))
    mpp = check_mpp(mpp, key="--option mpp")
    base = require_root(root, "lizard")
    images, labels = _by_stem(base, ".png"), _by_stem(base, ".mat")
    if not images:
        raise empty_folder_error(base, "Lizard images (.png)")
    skip = tuple(f"{p.strip().lower()}_" for p in str(exclude or "").split(",") if p.strip())
    images = {n: p for n, p in images.items() if not n.lower().startswith(skip)} if skip \
        else images
    if not images:
        raise file_error(base, f"every image is excluded by exclude={exclude}")
    if missing == "error":
        for name, img in images.items():
            if name not in labels:
                raise file_error(img, f"no label file {name}.mat under {base} (pass "
                                 "--option missing=skip to leave such images out)")
    pairs = [(n, images[n], labels[n]) for n in sorted(images) if n in labels]
    return _generate(pairs, mpp)


def _generate(pairs: list[tuple[str, Path, Path]], mpp: float) -> Iterator[Sample]:
    for name, img_path, lab_path in pairs:
        image = read_image(img_path)
        inst, classes = read_lizard_mat(lab_path)
        check_same_size(image, inst, img_path, lab_path)
        meta = {"name": name, "source": "lizard", "mpp": mpp, "path": str(img_path),
                "label_path": str(lab_path), "inst_class": classes}
        yield Sample(image=image, inst=inst, meta=meta)
