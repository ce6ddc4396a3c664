"""CoNSeP (Graham et al. 2019, HoVer-Net paper): colorectal H&E tiles at 40x.

Published layout: ``CoNSeP/{Train,Test}/Images/<name>.png`` (RGBA 1000x1000) and
``CoNSeP/{Train,Test}/Labels/<name>.mat`` (MATLAB v5 files with ``inst_map`` (H, W) instance
ids, ``type_map`` (H, W), ``inst_type`` (N, 1) classes of the instances in sorted id order
(row k-1 for id k when ids are 1..N) and ``inst_centroid`` (N, 2)). ``root`` is a folder
holding ``Images/`` and ``Labels/`` (or pass the dataset folder and
``split="train"``/``"test"``; a root with ``Train/`` and ``Test/`` says so).

Each sample's ``meta["inst_class"]`` maps instance id -> CoNSeP class code (1..7, names in
:data:`CONSEP_CLASSES`) when the file has ``inst_type``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ircr.data.datasets._common import empty_folder_error, find_subdir, list_by_stem, require_root
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import as_label_map, check_same_size, read_image

CONSEP_MPP = 0.25  # 40x (HoVer-Net paper)
CONSEP_CLASSES = {
    1: "other", 2: "inflammatory", 3: "healthy epithelial",
    4: "dysplastic/malignant epithelial", 5: "fibroblast", 6: "muscle", 7: "endothelial",
}


def read_consep_mat(path: str | Path) -> tuple[np.ndarray, dict[int, int]]:
    """Read a CoNSeP label ``.mat``: (inst_map (H, W) int32, {instance id: class code}).

    Raises:
        IrcrError: unreadable file, MATLAB v7.3 (HDF5) file, or no ``inst_map`` variable.
    """
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise file_error(p, "file not found")
    try:
        mat = loadmat(str(p))
    except NotImplementedError:
        msg = "MATLAB v7.3 (HDF5) .mat files are not supported; save with -v7"
        raise file_error(p, msg) from None
    except Exception as exc:
        raise file_error(p, f"cannot read .mat file ({type(exc).__name__}: {exc})") from None
    if "inst_map" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise file_error(p, f"no 'inst_map' variable (found: {found})")
    inst = as_label_map(np.asarray(mat["inst_map"]), p)
    type_map = None
    if "type_map" in mat:
        type_map = np.asarray(mat["type_map"])
        if type_map.shape != inst.shape:
            warnings.warn(f"{p}: type_map {type_map.shape} and inst_map {inst.shape} differ "
                          "in shape; type_map ignored", stacklevel=2)
            type_map = None
    types = np.asarray(mat["inst_type"]).reshape(-1) if "inst_type" in mat else None
    return inst, instance_classes(inst, types, type_map, p)


def instance_classes(inst: np.ndarray, types: np.ndarray | None, type_map: np.ndarray | None,
                     path: Path) -> dict[int, int]:
    """{instance id: class code} of a CoNSeP label file.

    ``inst_type`` (N,) has one row per instance present, in sorted id order (so ids need not
    be 1..N, e.g. 5, 17, 1039); when its length differs from the number of instances the
    classes come from ``type_map`` (each instance's most frequent code), else from row id - 1
    when the rows cover every id, else are left out; each of these with a warning.
    """
    ids = np.unique(inst[inst > 0])
    if types is not None and types.size == ids.size:
        return {int(k): int(t) for k, t in zip(ids, types)}
    by_row = types is not None and ids.size > 0 and types.size >= int(ids[-1])
    if types is not None:
        src = ("classes from type_map" if type_map is not None else
               "classes by row = id - 1" if by_row else "no classes recorded")
        warnings.warn(f"{path}: inst_type has {types.size} rows but inst_map has {ids.size} "
                      f"instances; {src}", stacklevel=3)
    if type_map is not None:
        return _majority_types(inst, type_map)
    if by_row and types is not None:
        return {int(k): int(types[k - 1]) for k in ids}
    return {}


def _majority_types(inst: np.ndarray, type_map: np.ndarray) -> dict[int, int]:
    """Most frequent ``type_map`` code under each instance (ties: the smaller code)."""
    fg = inst > 0
    ids, codes = inst[fg].astype(np.int64), np.asarray(type_map)[fg].astype(np.int64)
    if ids.size == 0:
        return {}
    codes = np.clip(codes, 0, None)
    n_codes = int(codes.max()) + 1
    pairs, counts = np.unique(ids * n_codes + codes, return_counts=True)
    out: dict[int, tuple[int, int]] = {}
    for pair, count in zip(pairs.tolist(), counts.tolist()):
        k, c = divmod(pair, n_codes)
        if k not in out or count > out[k][1]:
            out[k] = (c, count)
    return {k: c for k, (c, _) in out.items()}


def iter_consep(root: str | Path, split: str | None = None) -> Iterator[Sample]:
    """Yield CoNSeP samples in name order.

    Args:
        root: folder with ``Images/`` and ``Labels/``, or the CoNSeP folder with ``split``.
        split: ``"train"``/``"test"`` selects ``root/Train`` or ``root/Test`` (any case).

    Raises:
        IrcrError: missing folders, no images, a missing/unreadable label, size mismatch.
    """
    base = require_root(root, "consep")
    if split is not None:
        sub = find_subdir(base, (split,), any_case=True)
        if sub is None:
            raise file_error(base, f"no '{split}' split folder (expected Train/ or Test/)")
        base = sub
    img_dir = find_subdir(base, ("Images",), any_case=True)
    lab_dir = find_subdir(base, ("Labels",), any_case=True)
    if img_dir is None:
        splits = [d.name for d in (find_subdir(base, (n,), any_case=True)
                                   for n in ("Train", "Test")) if d is not None]
        if split is None and splits:
            raise file_error(base, f"no Images/ folder; this is the CoNSeP folder with "
                             f"{' and '.join(f'{n}/' for n in splits)}: pick one with --option "
                             f"split={splits[0].lower()}")
        raise file_error(base, "no Images/ folder (CoNSeP layout: Images/*.png + Labels/*.mat)")
    images = list_by_stem(img_dir, (".png",))
    if not images:
        raise empty_folder_error(img_dir, "CoNSeP images (.png)")
    if lab_dir is None:
        raise file_error(base, "no Labels/ folder (CoNSeP layout: Images/*.png + Labels/*.mat)")
    labels = list_by_stem(lab_dir, (".mat",))
    for name, img in images.items():
        if name not in labels:
            raise file_error(img, f"no label file {lab_dir / (name + '.mat')}")
    return _generate(images, labels)


def _generate(images: dict[str, Path], labels: dict[str, Path]) -> Iterator[Sample]:
    for name, img_path in images.items():
        image = read_image(img_path)
        inst, classes = read_consep_mat(labels[name])
        check_same_size(image, inst, img_path, labels[name])
        meta = {
            "name": name, "source": "consep", "mpp": CONSEP_MPP, "path": str(img_path),
            "label_path": str(labels[name]), "inst_class": classes,
        }
        yield Sample(image=image, inst=inst, meta=meta)

