"""Issue 27 point 2: fluorescence recognised from the vendors' metadata (ircr.io.fluorescence).

The files are written here with tifffile: RGB pixels that pass the channel-plane and the dark
checks (light glass with grey discs), carrying a PerkinElmer QPI XML description (element
names as in public QPTIFF readers: Bio-Formats' VectraReader and others) or Hamamatsu NDPI
private tags (65434 channel name, 65451 emission wavelength, as Bio-Formats' NDPIS reader reads
them). Only the metadata differs between a refused and an accepted file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ircr.cli.main import main
from ircr.engine.plausibility import dark_reason
from ircr.errors import IrcrError
from ircr.io.wsi import non_rgb_reason
from test_segment import make_tile
from test_segment_field import GLASS, disc, use_dark, whole_tile_segmenter


def qpi_xml(*children: str, image_type: str = "FullResolution") -> str:
    """A PerkinElmer QPI ImageDescription (declared utf-16 as the instruments write it)."""
    body = "\n  ".join(children)
    return (f'<?xml version="1.0" encoding="utf-16"?>\n<PerkinElmer-QPI-ImageDescription>\n'
            f"  <DescriptionVersion>4</DescriptionVersion>\n"
            f"  <AcquisitionSoftware>Vectra</AcquisitionSoftware>\n"
            f"  <ImageType>{image_type}</ImageType>\n  {body}\n"
            "</PerkinElmer-QPI-ImageDescription>")


DAPI_FILTER = ("<Name>DAPI</Name><ExcitationFilter><Name>DAPI</Name><Bands><Band>"
               "<Cuton>353</Cuton><Cutoff>381</Cutoff></Band></Bands></ExcitationFilter>")
BRIGHTFIELD = ("<IsUnmixedComponent>False</IsUnmixedComponent>"
               "<ScanProfile><root><Mode>im_Brightfield</Mode></root></ScanProfile>")


def light_rgb(size: int = 256) -> np.ndarray:
    img = np.full((size, size, 3), GLASS, np.uint8)
    for cy, cx in ((60, 60), (150, 90), (200, 200)):
        disc(img, cy, cx, 8)
    return img


def write_qpi(path: Path, xml: str, img: np.ndarray | None = None,
              pyramid: bool = False) -> Path:
    """An RGB QPTIFF-like file: Software PerkinElmer-QPI, the XML on every page."""
    img = light_rgb() if img is None else img
    kw = {"photometric": "rgb", "software": "PerkinElmer-QPI", "metadata": None}
    with tifffile.TiffWriter(path) as w:
        if not pyramid:
            w.write(img, description=xml, **kw)
            return path
        w.write(img, description=xml, tile=(64, 64), **kw)
        w.write(img[::8, ::8], description=xml.replace("FullResolution", "Thumbnail"), **kw)
        w.write(img[::2, ::2], description=xml, tile=(64, 64), subfiletype=1, **kw)
    return path


def write_ndpi_like(path: Path, channel: str | None, wavelength: float | None) -> Path:
    """A TIFF with Hamamatsu NDPI private tags (tifffile cannot write NDPI's 64-bit layout)."""
    tags = [(271, "s", 0, "Hamamatsu", True), (65420, "H", 1, 1, True),
            (65421, "f", 1, 20.0, True)]
    if channel is not None:
        tags.append((65434, "s", 0, channel, True))
    if wavelength is not None:
        tags.append((65451, "f", 1, wavelength, True))
    tifffile.imwrite(path, light_rgb(), photometric="rgb", extratags=tags, metadata=None)
    return path


def test_pixels_alone_pass_so_only_the_metadata_decides(tmp_path: Path) -> None:
    img = light_rgb()
    assert dark_reason(img) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, img, photometric="rgb")
    assert non_rgb_reason(plain) is None
    assert non_rgb_reason(write_qpi(tmp_path / "bf.tif", qpi_xml(BRIGHTFIELD)),
                          slide=True) is None


def test_fluorescent_qptiff_refused_with_evidence_brightfield_accepted_force_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fl = write_qpi(tmp_path / "vectra_fl.tif", qpi_xml(DAPI_FILTER))
    bf = write_qpi(tmp_path / "vectra_bf.tif", qpi_xml(BRIGHTFIELD))
    use_dark(monkeypatch, whole_tile_segmenter)
    rc = main(["segment", str(fl), "-o", str(tmp_path / "o"), "--mpp", "0.25",
               "--no-progress"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"ircr: error: {fl}: PerkinElmer QPTIFF metadata: channel "
                               "'DAPI' with excitation filter 'DAPI' (353-381 nm): a "
                               "fluorescence image"), err
    assert "--force" in lines[0] and "MODEL LOADED" not in err
    assert not (tmp_path / "o" / "vectra_fl_summary.json").exists()

    assert main(["segment", str(bf), "-o", str(tmp_path / "o"), "--mpp", "0.25",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "o" / "vectra_bf_summary.json").read_text())["n_nuclei"] == 3

    assert main(["segment", str(fl), "-o", str(tmp_path / "f"), "--mpp", "0.25", "--force",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ircr: warning:" in err and "PerkinElmer QPTIFF metadata" in err
    assert (tmp_path / "f" / "vectra_fl_summary.json").exists()


def test_qptiff_slide_with_fluorescence_scan_mode_is_refused(tmp_path: Path) -> None:
    xml = qpi_xml("<ScanProfile><root><Mode>im_Fluorescence</Mode><ScanBands><ScanBands-i>"
                  "<Name>CD3</Name><Fluorophore>OPAL570</Fluorophore></ScanBands-i>"
                  "</ScanBands></root></ScanProfile>")
    fl = write_qpi(tmp_path / "polaris.qptiff", xml, pyramid=True)
    seg = whole_tile_segmenter()
    with pytest.raises(IrcrError, match=r"polaris\.qptiff: PerkinElmer QPTIFF metadata: scan "
                                        r"mode 'im_Fluorescence'; channel 'OPAL570' "
                                        r"\(a fluorophore\): a fluorescence image"):
        seg.process(fl, tmp_path / "o", mpp=0.25)
    tissue = np.full((256, 256, 3), GLASS, np.uint8)
    tissue[32:224, 32:224], _ = make_tile(np.random.default_rng(3), (192, 192))
    bf = write_qpi(tmp_path / "polaris_bf.qptiff", qpi_xml(BRIGHTFIELD), tissue, pyramid=True)
    s = seg.process(bf, tmp_path / "o", mpp=0.25)
    assert s["kind"] == "slide" and s["n_nuclei"] > 0


@pytest.mark.parametrize("children, evidence", [
    (["<Name>Opal 520</Name>", "<Biomarker>CD8</Biomarker>"], "channel 'Opal 520' (a fluorophore)"),
    (["<Name>PD-L1</Name>", "<IsUnmixedComponent>True</IsUnmixedComponent>"],
     "channel 'PD-L1' is an unmixed component (IsUnmixedComponent True)"),
    (["<Name>Sample</Name>", "<ExcitationFilter><Name>FITC</Name></ExcitationFilter>"],
     "channel 'Sample' with excitation filter 'FITC'"),
    # brightfield scan mode wins; "None" filters, stain names and lamp types are no evidence
    ([DAPI_FILTER, BRIGHTFIELD], None),
    (["<Name>Hematoxylin</Name>", "<ExcitationFilter><Name>None</Name></ExcitationFilter>",
      "<BFLampType>WhiteLED</BFLampType>", "<IsUnmixedComponent>False</IsUnmixedComponent>"],
     None),
])
def test_qpi_rules(tmp_path: Path, children: list[str], evidence: str | None) -> None:
    reason = non_rgb_reason(write_qpi(tmp_path / "q.tif", qpi_xml(*children)))
    if evidence is None:
        assert reason is None
    else:
        assert reason == (f"PerkinElmer QPTIFF metadata: {evidence}: a fluorescence image, "
                          "not brightfield H&E")


def test_qpi_thumbnail_pages_and_foreign_descriptions_are_no_evidence(tmp_path: Path) -> None:
    # a DAPI channel named only in the thumbnail's XML, and a non-QPI TIFF mentioning DAPI
    xml = qpi_xml(DAPI_FILTER, image_type="Thumbnail")
    assert non_rgb_reason(write_qpi(tmp_path / "thumb.tif", xml)) is None
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, light_rgb(), photometric="rgb", description="<Name>DAPI</Name>",
                     metadata=None)
    assert non_rgb_reason(other) is None


@pytest.mark.parametrize("channel, wavelength, evidence", [
    ("DAPI", 461.0, "channel 'DAPI' with emission wavelength 461 nm (tag 65451; 0 marks a "
                    "colour image)"),
    (None, 650.0, "a channel with emission wavelength 650 nm (tag 65451; 0 marks a colour "
                  "image)"),
    ("FITC", None, "channel 'FITC' (a fluorophore; tag 65434)"),
    ("", 0.0, None),          # 0 nm: a colour (brightfield) image
    (None, None, None),       # plain brightfield NDPI tags
])
def test_ndpi_rules(tmp_path: Path, channel: str | None, wavelength: float | None,
                    evidence: str | None) -> None:
    path = write_ndpi_like(tmp_path / "ndpi_like.tif", channel, wavelength)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].is_ndpi  # tifffile reads these tags as NDPI metadata
    reason = non_rgb_reason(path, slide=True)
    if evidence is None:
        assert reason is None
    else:
        assert reason == (f"Hamamatsu NDPI metadata: {evidence}: a fluorescence image, not "
                          "brightfield H&E")


def test_ndpi_like_dapi_is_refused_by_segment(tmp_path: Path) -> None:
    path = write_ndpi_like(tmp_path / "dapi_ndpi.tif", "DAPI", 461.0)
    seg = whole_tile_segmenter()
    with pytest.raises(IrcrError, match=r"dapi_ndpi\.tif: Hamamatsu NDPI metadata: channel "
                                        r"'DAPI' with emission wavelength 461 nm"):
        seg.process(path, tmp_path / "o", mpp=0.25)
    with pytest.warns(UserWarning, match="Hamamatsu NDPI metadata.*anyway"):
        assert seg.process(path, tmp_path / "o", mpp=0.25, force=True)["n_nuclei"] == 3


def test_real_he_tiffs_carry_no_fluorescence_metadata(monuseg_root: Path) -> None:
    files = sorted((monuseg_root / "images").glob("*.tif"))
    assert len(files) == 30
    for f in files:
        assert non_rgb_reason(f) is None, f
