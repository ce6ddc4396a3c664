"""Fluorescence recognised from the scanner vendors' metadata (PerkinElmer/Akoya, Hamamatsu).

A fluorescence slide can hold RGB pixels that are not dark (a pseudo-coloured composite), so
neither the channel-plane nor the dark check of :mod:`ircr.engine.plausibility` sees it. Its
metadata does; the rules are conservative (one positive piece of evidence, never an absence):

* **PerkinElmer/Akoya QPTIFF** (Vectra, Polaris, PhenoImager; ``Software`` starts with
  ``PerkinElmer-QPI``, an XML ``<PerkinElmer-QPI-ImageDescription>`` per page). Evidence, read
  from the full-resolution pages: the scan profile's ``<Mode>`` names fluorescence; a channel
  has an ``<ExcitationFilter>`` (brightfield has no excitation light); a channel (``<Name>``,
  ``<Biomarker>``, ``<Fluorophore>``) is named after a fluorophore (DAPI, Opal 520, FITC, ...);
  ``<IsUnmixedComponent>True`` (a spectrally unmixed component plane, not an RGB scan). A
  scan profile whose ``<Mode>`` names brightfield overrides all of these. ``<BFLampType>`` is
  not used: fluorescence scans of newer instruments carry it too.
* **Hamamatsu NDPI** has no documented fluorescence flag. Bio-Formats' NDPIS reader reads the
  channel name from tag 65434 and the emission wavelength from tag 65451, 0 marking a colour
  (brightfield) image; so a wavelength above 0, or a channel named after a fluorophore, is
  evidence. 16-bit fluorescence captures (tag 65441 ``CaptureMode`` >= 6) are read by tifffile
  as one sample per pixel and refused by that check already.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

QPI_SOFTWARE = "PerkinElmer-QPI"
QPI_ROOT = "PerkinElmer-QPI-ImageDescription"
MAX_PAGES = 64  # channel pages read (a 9-colour PhenoImager scan has 9; spectral ones more)
_NOT_A_FILTER = {"", "none", "blank", "open", "empty", "--", "-", "n/a"}
# A channel called this is a fluorescent dye or protein, never a brightfield colour or stain.
FLUOROPHORE = re.compile(
    r"^\s*(dapi|hoechst|opal[\s_-]*\d{3}|fitc|tritc|cy[\s_-]?[2357](\.5)?|"
    r"(alexa[\s_-]*(fluor)?|af)[\s_-]*\d{3}|atto[\s_-]*\d{3}|texas[\s_-]*red|txred|"
    r"e?gfp|yfp|cfp|rfp|mcherry|tdtomato|autofluorescence)\b", re.IGNORECASE)


def fluorescence_reason(tif: Any) -> str | None:
    """Why an open ``tifffile.TiffFile`` is a fluorescence image per its vendor metadata.

    Returns:
        ``"PerkinElmer QPTIFF metadata: <evidence>: a fluorescence image ..."`` (or
        ``"Hamamatsu NDPI metadata: ..."``), or None (no such metadata, or brightfield).
    """
    try:
        page = tif.pages[0]
        software = str(getattr(page, "software", "") or "")
        if software.startswith(QPI_SOFTWARE) or QPI_ROOT in str(page.description or ""):
            evidence, vendor = _qpi_evidence(tif), "PerkinElmer QPTIFF"
        elif getattr(page, "is_ndpi", False):
            tags = page.tags
            evidence = _ndpi_evidence(tags.valueof(65434), tags.valueof(65451))
            vendor = "Hamamatsu NDPI"
        else:
            return None
    except Exception:  # noqa: BLE001 - unreadable metadata is no evidence
        return None
    if not evidence:
        return None
    return (f"{vendor} metadata: {'; '.join(evidence)}: a fluorescence image, not "
            "brightfield H&E")


def _qpi_roots(tif: Any) -> list[ET.Element]:
    """The parsed XML of the full-resolution pages (thumbnail, overview, label skipped)."""
    roots = []
    for i, page in enumerate(tif.pages):
        if i >= MAX_PAGES:
            break
        text = re.sub(r"^\s*<\?xml[^>]*\?>", "", str(getattr(page, "description", "") or ""))
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            continue
        kind = (root.findtext("ImageType") or "FullResolution").strip()
        if root.tag == QPI_ROOT and kind == "FullResolution":
            roots.append(root)
    return roots


def _qpi_evidence(tif: Any) -> list[str]:
    """Pieces of fluorescence evidence in a QPTIFF's page XML (empty: brightfield/none)."""
    roots = _qpi_roots(tif)
    modes = [(m.text or "").strip() for r in roots for m in r.iter("Mode")]
    if any("brightfield" in m.lower() for m in modes):
        return []
    found = [f"scan mode '{m}'" for m in modes if "fluoresc" in m.lower()][:1]
    for root in roots:
        for piece in _qpi_channel_evidence(root):
            if piece not in found:
                found.append(piece)
    return found[:3]


def _qpi_channel_evidence(root: ET.Element) -> list[str]:
    """Evidence of one page: its channel's excitation filter, fluorophore name, unmixing."""
    tags = ("Name", "Biomarker", "Fluorophore")
    names = [(e.text or "").strip() for tag in tags for e in root.findall(tag)]
    names += [(e.text or "").strip() for band in root.iter("ScanBands-i")
              for tag in tags for e in band.findall(tag)]
    names = [n for n in dict.fromkeys(names) if n]
    label = f"channel '{names[0]}'" if names else "a channel"
    out = []
    exc = root.find("ExcitationFilter")
    if exc is not None:
        fname = (exc.findtext("Name") or "").strip()
        band = exc.find(".//Band")
        lo, hi = (band.findtext("Cuton"), band.findtext("Cutoff")) if band is not None else (
            None, None)
        if fname.lower() not in _NOT_A_FILTER or (lo and hi):
            nm = f" ({lo.strip()}-{hi.strip()} nm)" if lo and hi else ""
            out.append(f"{label} with excitation filter '{fname or '?'}'{nm}")
    fluor = [n for n in names if FLUOROPHORE.match(n)]
    if fluor and not out:
        out.append(f"channel '{fluor[0]}' (a fluorophore)")
    if (root.findtext("IsUnmixedComponent") or "").strip().lower() == "true":
        out.append(f"{label} is an unmixed component (IsUnmixedComponent True)")
    return out


def _ndpi_evidence(channel_tag: Any, wavelength: Any) -> list[str]:
    """Evidence in a Hamamatsu NDPI page's tags 65434 (channel name) and 65451 (emission nm)."""
    channel = str(channel_tag or "").strip().strip("\x00")
    if isinstance(wavelength, (tuple, list)):
        wavelength = wavelength[0] if wavelength else None
    try:
        nm = float(wavelength) if wavelength is not None else 0.0
    except (TypeError, ValueError):
        nm = 0.0
    name = f"channel '{channel}'" if channel else "a channel"
    if nm > 0:
        return [f"{name} with emission wavelength {nm:g} nm (tag 65451; 0 marks a colour "
                "image)"]
    if channel and FLUOROPHORE.match(channel):
        return [f"channel '{channel}' (a fluorophore; tag 65434)"]
    return []
