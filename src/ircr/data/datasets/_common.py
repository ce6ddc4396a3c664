"""Helpers shared by the dataset readers: folder discovery, pairing, Aperio XML parsing."""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ircr.errors import IrcrError, file_error


def require_root(root: str | Path | None, dataset: str) -> Path:
    """Return ``root`` as a Path, raising IrcrError if it is missing or not a folder."""
    if root is None:
        raise IrcrError(f"dataset '{dataset}': a root folder is required")
    p = Path(root).expanduser()
    if not p.exists():
        raise file_error(p, f"{dataset} dataset folder not found")
    if not p.is_dir():
        raise file_error(p, f"{dataset} dataset root must be a folder")
    return p


def find_subdir(root: Path, candidates: Sequence[str], any_case: bool = False) -> Path | None:
    """First existing sub-folder of ``root`` among ``candidates``, else None.

    Names are exact unless ``any_case`` (then ``Images/``, ``IMAGES/`` match ``images``; an
    exact match still wins).
    """
    for name in candidates:
        d = root / name
        if d.is_dir():
            return d
    if not any_case:
        return None
    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    except OSError:
        return None
    for name in candidates:
        for d in subdirs:
            if d.name.lower() == name.lower():
                return d
    return None


def stem_of(path: Path, suffixes: Iterable[str]) -> str | None:
    """Name without the first matching suffix (case-insensitive, e.g. ``.xml.gz``), or None."""
    low = path.name.lower()
    for suf in sorted(suffixes, key=len, reverse=True):
        if low.endswith(suf) and len(low) > len(suf):
            return path.name[: -len(suf)]
    return None


def list_by_stem(folder: Path, suffixes: Sequence[str], strip: str = "") -> dict[str, Path]:
    """Map name -> file for files in ``folder`` ending in one of ``suffixes``.

    ``strip`` is removed from the end of each stem (e.g. ``"_mask"``). Two files with the same
    name but different extensions raise IrcrError (the pairing would be ambiguous).
    """
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        stem = stem_of(f, suffixes)
        if stem is None:
            continue
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        if stem in out:
            raise file_error(f, f"ambiguous: another file in the folder also has the name '{stem}' "
                             f"({out[stem].name})")
        out[stem] = f
    return out


def empty_folder_error(folder: Path, what: str) -> IrcrError:
    """The error for a folder without any usable file."""
    return file_error(folder, f"no {what} found in this folder")


def open_maybe_gz(path: Path) -> bytes:
    """Read a file's bytes, gunzipping ``.gz`` files; errors name the file."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except (OSError, EOFError) as exc:
        raise file_error(path, f"cannot read file ({exc})") from None


def parse_aperio_xml(path: Path) -> list[tuple[str, np.ndarray]]:
    """Parse an Aperio ImageScope XML (plain or ``.xml.gz``) into ``(class, polygon)`` pairs.

    Polygons come from ``Annotations/Annotation/Regions/Region/Vertices/Vertex@X,Y`` in
    document order, as (K, 2) float64 (x, y) arrays. The class is the ``Name`` of the
    annotation's first ``Attributes/Attribute`` (MoNuSAC), else the annotation's ``Name``
    attribute, else ``""`` (MoNuSeg).

    Raises:
        IrcrError: unparsable XML, a vertex without numeric X/Y, or no regions at all.
    """
    data = open_maybe_gz(path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise file_error(path, f"invalid XML ({exc})") from None
    annotations = [root] if root.tag == "Annotation" else root.findall("Annotation")
    out: list[tuple[str, np.ndarray]] = []
    for ann in annotations:
        attr = ann.find("Attributes/Attribute")
        cls = (attr.get("Name") if attr is not None else None) or ann.get("Name") or ""
        for region in ann.findall("Regions/Region"):
            verts = region.findall("Vertices/Vertex")
            try:
                pts = [(float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in verts]
            except ValueError:
                rid = region.get("Id", "?")
                msg = f"region {rid} has a non-numeric vertex coordinate"
                raise file_error(path, msg) from None
            out.append((cls.strip(), np.asarray(pts, dtype=np.float64).reshape(-1, 2)))
    if not out:
        raise file_error(path, "XML has no Annotation/Regions/Region elements (no nuclei)")
    return out


def check_choice(dataset: str, option: str, value: object, choices: Sequence[object]) -> None:
    """Raise IrcrError unless ``value`` is one of ``choices``."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise IrcrError(
            f"dataset '{dataset}': option {option}={value!r} is invalid (valid: {valid})"
        )


# One id covering this many separate regions is not a nucleus: the map is binary/semantic.
MAX_PARTS_PER_ID = 10
_EIGHT = np.ones((3, 3), dtype=bool)


def parts_per_id(inst: np.ndarray) -> tuple[int, int]:
    """(id, number of separate 8-connected regions) of the id with the most regions (0, 0 if
    the map is empty). Regions of one id are counted once per foreground component they lie
    in (exact for a binary mask; a lower bound where nuclei of one id touch others)."""
    from scipy import ndimage

    fg = inst > 0
    if not fg.any():
        return 0, 0
    comp, n = ndimage.label(fg, structure=_EIGHT)
    codes = inst[fg].astype(np.int64) * (n + 1) + comp[fg]
    ids = np.unique(codes) // (n + 1)
    uniq, counts = np.unique(ids, return_counts=True)
    k = int(np.argmax(counts))
    return int(uniq[k]), int(counts[k])


def check_instance_map(inst: np.ndarray, path: Path, hint: str) -> None:
    """Refuse a label map in which one id covers many separate regions (a 0/255 or class
    mask read as instances would count as a handful of "nuclei"); ``hint`` says what to do.

    Raises:
        IrcrError: ``"<path>: id 255 covers 353 separate regions ...; <hint>"``.
    """
    k, parts = parts_per_id(inst)
    if parts >= MAX_PARTS_PER_ID:
        raise file_error(path, f"id {k} covers {parts} separate regions: this looks like a "
                         f"binary (or class) mask, not an instance map with one id per "
                         f"nucleus; {hint}")


def label_components(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 instance map of the 8-connected components of ``mask > 0`` (ids 1..K in
    raster order of their first pixel). Touching nuclei of a binary mask stay merged."""
    from scipy import ndimage

    lab, _ = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT)
    return lab.astype(np.int32)
