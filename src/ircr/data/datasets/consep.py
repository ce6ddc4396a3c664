"""CoNSeP (Graham et al. 2019, HoVer-Net paper): colorectal H&E tiles at 40x.

Published layout: ``CoNSeP/{Train,Test}/Images/<name>.png`` (RGBA 1000x1000) and
``CoNSeP/{Train,Test}/Labels/<name>.mat`` (MATLAB v5 files with ``inst_map`` (H, W) instance
ids, ``type_map`` (H, W), ``inst_type`` (N, 1) class of instance k at row k-1 and
``inst_centroid`` (N, 2)). ``root`` is a folder holding ``Images/`` and ``Labels/`` (or
pass the dataset folder and ``split="train"``/``"test"``).

Each sample's ``meta["inst_class"]`` maps instance id -> CoNSeP class code (1..7, names in
:data:`CONSEP_CLASSES`) when the file has ``inst_type``.
"""

from __future__ import annotations

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
    classes: dict[int, int] = {}
    if "inst_type" in mat:
        types = np.asarray(mat["inst_type"]).reshape(-1)
        present = np.unique(inst[inst > 0])
        classes = {int(k): int(types[k - 1]) for k in present if k - 1 < types.size}
    return inst, classes


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
        sub = find_subdir(base, (split, split.capitalize(), split.lower(), split.upper()))
        if sub is None:
            raise file_error(base, f"no '{split}' split folder (expected Train/ or Test/)")
        base = sub
    img_dir = find_subdir(base, ("Images", "images"))
    lab_dir = find_subdir(base, ("Labels", "labels"))
    if img_dir is None:
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

