"""Generic folder dataset: ``images/NAME.{png,tif,tiff,jpg,jpeg}`` + ``labels/NAME.{png,tif,npy}``.

(``.tiff`` works for both.)

Labels are instance maps read with :func:`ircr.io.image.read_label_map` (0 = background).
With ``labels_required=False`` images without a label file are yielded with ``inst=None``
(for unlabelled data in semi-supervised training). Label files without an image are
ignored.

A label map in which one id covers many separate regions (a 0/255 mask) is refused with a
one-line error; ``labels="binary"`` (``--option labels=binary``) labels the connected
components of such masks instead (touching nuclei stay one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from ircr.data.datasets._common import (
    check_choice,
    check_instance_map,
    empty_folder_error,
    find_subdir,
    label_components,
    list_by_stem,
    require_root,
)
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    check_same_size,
    read_image,
    read_label_map,
)
from ircr.io.wsi import check_mpp


def iter_folder(
    root: str | Path,
    labels_required: bool = True,
    images_dir: str = "images",
    labels_dir: str = "labels",
    mpp: float | None = None,
    labels: Literal["instances", "binary"] = "instances",
) -> Iterator[Sample]:
    """Yield samples of a generic image/label folder in name order.

    Args:
        root: folder containing ``images_dir`` (or the images themselves).
        labels_required: if True every image needs ``labels_dir/NAME.<ext>``.
        images_dir, labels_dir: sub-folder names.
        mpp: microns per pixel recorded in ``meta["mpp"]`` (None = unknown).
        labels: ``"instances"`` (one id per nucleus; a binary-looking map is refused) or
            ``"binary"`` (foreground = label > 0, nuclei = its 8-connected components).

    Raises:
        IrcrError: missing/empty folder, missing label (when required), ambiguous names,
            unreadable files, label/image size mismatch.
    """
    check_choice("folder", "labels", labels, ("instances", "binary"))
    if mpp is not None:
        mpp = check_mpp(mpp, key="--option mpp")  # 'abc', nan, -1: one line, before any work
    base = require_root(root, "folder")
    img_dir = find_subdir(base, (images_dir,)) or base
    images = list_by_stem(img_dir, IMAGE_SUFFIXES)
    if not images:
        raise empty_folder_error(img_dir, "images (" + "/".join(IMAGE_SUFFIXES) + ")")
    lab_dir = find_subdir(base, (labels_dir,))
    label_files = list_by_stem(lab_dir, LABEL_SUFFIXES) if lab_dir is not None else {}
    if labels_required:
        for name, img in images.items():
            if name not in label_files:
                where = lab_dir if lab_dir is not None else base / labels_dir
                raise file_error(img, f"no label map {where}/{name}.(png|tif|tiff|npy) "
                                 "(pass --option labels_required=false for unlabelled images)")
    return _generate(images, label_files, mpp, labels == "binary")


def _generate(images: dict[str, Path], labels: dict[str, Path],
              mpp: float | None, binary: bool) -> Iterator[Sample]:
    for name, img_path in images.items():
        image = read_image(img_path)
        lab_path = labels.get(name)
        inst = None
        if lab_path is not None:
            inst = read_label_map(lab_path)
            check_same_size(image, inst, img_path, lab_path)
            if binary:
                inst = label_components(inst)
            else:
                check_instance_map(inst, lab_path, "pass --option labels=binary to label its "
                                   "connected components")
        meta = {
            "name": name, "source": "folder", "mpp": mpp, "path": str(img_path),
            "label_path": str(lab_path) if lab_path else None,
        }
        yield Sample(image=image, inst=inst, meta=meta)
