"""MoNuSeg 2018 (Kumar et al.): 1000x1000 H&E tiles at 40x with nucleus polygons.

Accepted layouts under ``root`` (first match wins):

* images: ``images/``, ``Tissue Images/``, ``Tissue_Images/``, or ``root`` itself
  (``<id>.tif``/``.tiff``/``.png``);
* label PNGs: ``labels_inst/<id>.png`` (16-bit instance maps, 0 = background);
* Aperio ImageScope XMLs: ``annotations/``, ``annotations_xml/``,
  ``annotations_xml_partial/`` or next to the images (``<id>.xml`` or ``<id>.xml.gz``).

Folder names match in any case (``Images/``, ``Annotations/``); an error for a folder without
images lists the names looked for.

XML polygons are rasterised with :func:`ircr.data.polygons.rasterize_polygons` (pixel
centres at integer coordinates; overlap rule ``"later"`` by default: a later region wins).
Degenerate regions (< 3 vertices or zero area) are skipped and counted in
``meta["n_degenerate"]``.

Coordinate origin: the official MoNuSeg instance masks (the ``labels_inst`` PNGs) were drawn
treating the XML vertices as 1-based pixel coordinates (MATLAB ``poly2mask``), so vertex
(X, Y) lies on 0-based pixel (X - 1, Y - 1). With ``xml_one_based=True`` (default) the reader
subtracts 1 and reproduces those masks: on the 13 shared XMLs the mean best-overlap IoU
against the PNGs is 0.96 (0.83 without the shift; measured on this data, see
``tests/test_datasets_real.py``). Pass ``xml_one_based=False`` to use the raw coordinates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from ircr.data.datasets._common import (
    check_choice,
    check_instance_map,
    empty_folder_error,
    find_subdir,
    list_by_stem,
    parse_aperio_xml,
    require_root,
)
from ircr.data.polygons import is_degenerate, rasterize_polygons
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    check_same_size,
    read_image,
    read_label_map,
)

MONUSEG_MPP = 0.25  # 40x scans (Kumar et al. 2017)
_IMAGE_DIRS = ("images", "Tissue Images", "Tissue_Images")
_PNG_DIRS = ("labels_inst",)
_XML_DIRS = ("annotations", "Annotations", "annotations_xml", "annotations_xml_partial")
_XML_SUFFIXES = (".xml", ".xml.gz")


def read_monuseg_xml(
    path: str | Path, shape: tuple[int, int], overlap: Literal["later", "smaller"] = "later",
    one_based: bool = True,
) -> tuple[np.ndarray, int]:
    """Rasterise one MoNuSeg XML to an (H, W) int32 instance map.

    ``one_based`` shifts vertices by -1 to match the official masks (module docstring).

    Returns:
        (inst, n_degenerate): the map (ids are region positions, 1-based) and the number
        of skipped degenerate regions.
    """
    shift = 1.0 if one_based else 0.0
    polys = [p - shift for _, p in parse_aperio_xml(Path(path))]
    n_bad = sum(1 for p in polys if is_degenerate(p))
    return rasterize_polygons(polys, shape, overlap=overlap), n_bad


def _discover(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path], Path]:
    img_dir = find_subdir(root, _IMAGE_DIRS, any_case=True) or root
    images = list_by_stem(img_dir, IMAGE_SUFFIXES)
    png_dir = find_subdir(root, _PNG_DIRS, any_case=True)
    pngs = list_by_stem(png_dir, LABEL_SUFFIXES) if png_dir else {}
    xml_dir = find_subdir(root, _XML_DIRS, any_case=True) or img_dir
    xmls = list_by_stem(xml_dir, _XML_SUFFIXES)
    return images, pngs, xmls, img_dir


def iter_monuseg(
    root: str | Path,
    labels: Literal["auto", "png", "xml", "none"] = "auto",
    missing: Literal["error", "skip", "unlabelled"] = "error",
    overlap: Literal["later", "smaller"] = "later",
    xml_one_based: bool = True,
) -> Iterator[Sample]:
    """Yield MoNuSeg samples in name order.

    Args:
        root: dataset folder (see module docstring for layouts).
        labels: ``"png"`` label maps, ``"xml"`` polygons, ``"auto"`` (PNG if present for
            that image, else XML) or ``"none"`` (images only, ``inst=None``).
        missing: what to do with an image without labels of the chosen kind: ``"error"``,
            ``"skip"`` it, or yield it ``"unlabelled"`` (``inst=None``).
        overlap: XML overlap rule passed to ``rasterize_polygons``.
        xml_one_based: treat XML vertices as 1-based (matches the official masks).

    Raises:
        IrcrError: missing/empty folder, unknown option value, missing labels (with
            ``missing="error"``), unreadable files, size mismatch, XML without regions.
    """
    check_choice("monuseg", "labels", labels, ("auto", "png", "xml", "none"))
    check_choice("monuseg", "missing", missing, ("error", "skip", "unlabelled"))
    check_choice("monuseg", "overlap", overlap, ("later", "smaller"))
    base = require_root(root, "monuseg")
    images, pngs, xmls, img_dir = _discover(base)
    if not images:
        looked = ", ".join(f"{d}/" for d in _IMAGE_DIRS)
        raise empty_folder_error(img_dir, f"MoNuSeg images (.tif/.tiff/.png); image folders "
                                 f"looked for: {looked} (any case) or the folder itself")
    plan: list[tuple[str, Path, Path | None, str]] = []
    for name, img in images.items():
        fmt, lab = "none", None
        if labels in ("png", "auto") and name in pngs:
            fmt, lab = "png", pngs[name]
        elif labels in ("xml", "auto") and name in xmls:
            fmt, lab = "xml", xmls[name]
        if lab is None and labels != "none":
            if missing == "error":
                kind = {"auto": "label PNG or XML", "png": "label PNG", "xml": "XML"}[labels]
                raise file_error(img, f"no {kind} found for this image (use --option "
                                 "missing=skip or --option missing=unlabelled to continue "
                                 "without it)")
            if missing == "skip":
                continue
        plan.append((name, img, lab, fmt))
    return _generate(plan, overlap, bool(xml_one_based))


def _generate(
    plan: list[tuple[str, Path, Path | None, str]], overlap: Literal["later", "smaller"],
    one_based: bool,
) -> Iterator[Sample]:
    for name, img_path, lab_path, fmt in plan:
        image = read_image(img_path)
        meta: dict[str, object] = {
            "name": name, "source": "monuseg", "mpp": MONUSEG_MPP, "path": str(img_path),
            "label_path": str(lab_path) if lab_path else None, "label_format": fmt,
        }
        inst = None
        if fmt == "png" and lab_path is not None:
            inst = read_label_map(lab_path)
            check_same_size(image, inst, img_path, lab_path)
            check_instance_map(inst, lab_path, "labels_inst/ needs instance maps (for binary "
                               "masks use the folder reader with --option labels=binary)")
        elif fmt == "xml" and lab_path is not None:
            inst, n_bad = read_monuseg_xml(lab_path, image.shape[:2], overlap, one_based)
            meta["n_degenerate"] = n_bad
        yield Sample(image=image, inst=inst, meta=meta)
