"""MoNuSAC 2020 (Verma et al.): variable-size H&E tiles at 40x with four nucleus classes.

Published layout: ``<root>/<patient>/<image>.svs`` (and the ``.tif`` conversions used for
training) next to ``<image>.xml``. The reader walks ``root`` recursively and pairs every
``.tif``/``.tiff``/``.png`` image with the XML of the same name in the same folder.

The XML has one ``Annotation`` per class, whose ``Attributes/Attribute@Name`` is the class
(Epithelial, Lymphocyte, Neutrophil, Macrophage; "Ambiguous" in the test set), each with
``Regions/Region/Vertices/Vertex@X,Y`` polygons. All classes are rasterised into one
instance map (:func:`ircr.data.polygons.rasterize_polygons`; ids follow document order;
overlap rule ``"later"`` by default) and ``meta["inst_class"]`` maps id -> class name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from ircr.data.datasets._common import (
    check_choice,
    empty_folder_error,
    parse_aperio_xml,
    require_root,
    stem_of,
)
from ircr.data.polygons import is_degenerate, rasterize_polygons
from ircr.data.sample import Sample
from ircr.errors import file_error
from ircr.io.image import IMAGE_SUFFIXES, read_image

MONUSAC_MPP = 0.25  # 40x


def _discover(base: Path) -> list[tuple[str, Path, Path | None]]:
    found: dict[str, tuple[Path, Path | None]] = {}
    for f in sorted(base.rglob("*")):
        stem = stem_of(f, IMAGE_SUFFIXES) if f.is_file() else None
        if stem is None or f.name.startswith("."):
            continue
        if stem in found:
            raise file_error(f, f"another image is also named '{stem}' ({found[stem][0]})")
        xml = next((c for c in (f.with_name(stem + ".xml"), f.with_name(stem + ".xml.gz"))
                    if c.is_file()), None)
        found[stem] = (f, xml)
    return [(name, img, xml) for name, (img, xml) in sorted(found.items())]


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
        raise empty_folder_error(base, "MoNuSAC images (.tif/.tiff/.png, searched recursively)")
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
        image = read_image(img_path)
        meta: dict[str, object] = {
            "name": name, "source": "monusac", "mpp": MONUSAC_MPP, "path": str(img_path),
            "label_path": str(xml_path) if xml_path else None,
        }
        inst = None
        if xml_path is not None:
            regions = parse_aperio_xml(xml_path)
            inst = rasterize_polygons([p for _, p in regions], image.shape[:2], overlap=overlap)
            present = np.unique(inst)
            meta["inst_class"] = {int(k): regions[k - 1][0] for k in present if k > 0}
            meta["classes"] = sorted({c for c, _ in regions})
            meta["n_degenerate"] = sum(1 for _, p in regions if is_degenerate(p))
        yield Sample(image=image, inst=inst, meta=meta)

