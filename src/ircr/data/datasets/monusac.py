"""MoNuSAC 2020 (Verma et al.): variable-size H&E tiles at 40x with four nucleus classes.

Published layout: ``<root>/<patient>/<image>.svs`` next to ``<image>.xml`` (some copies add
``.tif`` conversions). The reader walks ``root`` recursively and pairs every ``.svs`` (read
with the slide reader, :func:`ircr.io.wsi.open_slide`: tiffslide or OpenSlide) and
``.tif``/``.tiff``/``.png`` image with the XML of the same name in the same folder; where an
image exists both as ``.svs`` and as a conversion, the conversion is read.

Pixel size (``meta["mpp"]``, ``meta["mpp_source"]``): the XML's ``MicronsPerPixel``
(``"xml"``), else the image's own metadata (Aperio ``MPP``, TIFF resolution: ``"image"``),
else 0.25 µm/px (40x, ``"assumed"``) with ``meta["mpp_note"]`` and a warning. A value that is
not a plausible pixel size is a one-line error naming the file.

The XML has one ``Annotation`` per class, whose ``Attributes/Attribute@Name`` is the class
(Epithelial, Lymphocyte, Neutrophil, Macrophage; "Ambiguous" in the test set), each with
``Regions/Region/Vertices/Vertex@X,Y`` polygons. All classes are rasterised into one
instance map (:func:`ircr.data.polygons.rasterize_polygons`; ids follow document order;
overlap rule ``"later"`` by default) and ``meta["inst_class"]`` maps id -> class name.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from ircr.data.datasets._common import (
    check_choice,
    empty_folder_error,
    open_maybe_gz,
    parse_aperio_xml,
    require_root,
    stem_of,
)
from ircr.data.polygons import is_degenerate, rasterize_polygons
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import IMAGE_SUFFIXES, check_pixels, read_image
from ircr.io.wsi import check_mpp, image_mpp, open_slide

MONUSAC_MPP = 0.25  # 40x
_SUFFIXES = (*IMAGE_SUFFIXES, ".svs")


def _discover(base: Path) -> list[tuple[str, Path, Path | None]]:
    found: dict[str, tuple[Path, Path | None]] = {}
    for f in sorted(base.rglob("*")):
        stem = stem_of(f, _SUFFIXES) if f.is_file() else None
        if stem is None or f.name.startswith("."):
            continue
        if stem in found:
            other = found[stem][0]
            same_folder = other.parent == f.parent
            if same_folder and f.suffix.lower() == ".svs":
                continue  # the conversion next to it is read
            if not (same_folder and other.suffix.lower() == ".svs"):
                raise file_error(f, f"another image is also named '{stem}' ({other})")
        xml = next((c for c in (f.with_name(stem + ".xml"), f.with_name(stem + ".xml.gz"))
                    if c.is_file()), None)
        found[stem] = (f, xml)
    return [(name, img, xml) for name, (img, xml) in sorted(found.items())]


def xml_mpp(path: Path) -> float | None:
    """``MicronsPerPixel`` of an Aperio XML's root element (None if absent or unparsable).

    Raises:
        IrcrError: the attribute is present but not a plausible pixel size.
    """
    try:
        root = ET.fromstring(open_maybe_gz(path))
    except ET.ParseError:
        return None  # parse_aperio_xml reports it with the annotations
    value = root.get("MicronsPerPixel")
    if value is None or not value.strip():
        return None
    return check_mpp(value, key=f"{path}: MicronsPerPixel")


def read_monusac_image(path: Path) -> tuple[np.ndarray, float | None]:
    """(image (H, W, 3) uint8, the file's µm/px or None); ``.svs`` through the slide reader."""
    if path.suffix.lower() != ".svs":
        return read_image(path), image_mpp(path)
    with open_slide(path) as slide:
        w, h = slide.dimensions
        check_pixels(path, w, h)
        return slide.read_region(0, 0, 0, w, h), slide.mpp


def _pixel_size(img_path: Path, xml_path: Path | None,
                file_mpp: float | None) -> tuple[float, str, str | None]:
    """(mpp, source, note): the XML's, else the image's, else 0.25 with a note."""
    mpp = xml_mpp(xml_path) if xml_path is not None else None
    if mpp is not None:
        return mpp, "xml", None
    if file_mpp is not None:
        return float(file_mpp), "image", None
    note = (f"no MicronsPerPixel in the XML and no pixel size in {img_path.name}; assumed "
            f"{MONUSAC_MPP} µm/px (40x)")
    return MONUSAC_MPP, "assumed", note


def iter_monusac(
    root: str | Path,
    missing: Literal["error", "skip", "unlabelled"] = "error",
    overlap: Literal["later", "smaller"] = "later",
) -> Iterator[Sample]:
    """Yield MoNuSAC tiles in name order.

    Args:
        root: dataset folder (searched recursively).
        missing: image without an XML: ``"error"``, ``"skip"`` or ``"unlabelled"``.
        overlap: polygon overlap rule (see ``rasterize_polygons``).

    Raises:
        IrcrError: missing/empty folder, image without XML (``missing="error"``), XML
            without regions, unreadable files.
    """
    check_choice("monusac", "missing", missing, ("error", "skip", "unlabelled"))
    check_choice("monusac", "overlap", overlap, ("later", "smaller"))
    base = require_root(root, "monusac")
    items = _discover(base)
    if not items:
        raise empty_folder_error(base, "MoNuSAC images (.svs/.tif/.tiff/.png, searched "
                                 "recursively)")
    plan = []
    for name, img, xml in items:
        if xml is None and missing == "error":
            raise file_error(img, f"no annotation {img.with_name(name + '.xml').name} next to "
                             "this image (use --option missing=skip or "
                             "--option missing=unlabelled)")
        if xml is None and missing == "skip":
            continue
        plan.append((name, img, xml))
    return _generate(plan, overlap)


def _generate(plan: list[tuple[str, Path, Path | None]],
              overlap: Literal["later", "smaller"]) -> Iterator[Sample]:
    for name, img_path, xml_path in plan:
        image, file_mpp = read_monusac_image(img_path)
        mpp, mpp_source, note = _pixel_size(img_path, xml_path, file_mpp)
        meta: dict[str, object] = {
            "name": name, "source": "monusac", "mpp": mpp, "mpp_source": mpp_source,
            "path": str(img_path), "label_path": str(xml_path) if xml_path else None,
        }
        if note:
            meta["mpp_note"] = note
            warnings.warn(f"{img_path}: {note}", stacklevel=2)
        inst = None
        if xml_path is not None:
            regions = parse_aperio_xml(xml_path)
            inst = rasterize_polygons([p for _, p in regions], image.shape[:2], overlap=overlap)
            present = np.unique(inst)
            meta["inst_class"] = {int(k): regions[k - 1][0] for k in present if k > 0}
            meta["classes"] = sorted({c for c, _ in regions})
            meta["n_degenerate"] = sum(1 for _, p in regions if is_degenerate(p))
        yield Sample(image=image, inst=inst, meta=meta)

