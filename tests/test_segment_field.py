"""Issue 27 (field defects of ``ircr segment`` on other projects' files) and issue 28.6.

Small slides and tiles are written here with tifffile/Pillow; the network is the fixed "Dark"
segmenter of test_segment_faults (NP rises with darkness), so grey blobs drawn on glass are
found as nuclei although they are outside the tissue mask. Expected numbers are counted from
what was drawn (blob positions, image sizes), not taken from the engine.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage as ndi

from ircr.cli.main import main
from ircr.engine.segmenter import NucleusSegmenter
from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams
from test_segment import make_slide
from test_segment_faults import Dark, dark_segmenter
from test_wsi import write_pyramid

GLASS = (243, 241, 246)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def whole_tile_segmenter() -> NucleusSegmenter:
    """Dark network, one 512-px stitching tile: a small slide is a single processed tile."""
    return NucleusSegmenter(Dark(), WBISParams(), model_mpp=0.25, device="cpu", batch_size=4,
                            window=128, overlap=32, tile=512, margin=32, name="dark")


def disc(img: np.ndarray, cy: int, cx: int, r: int, value: int = 60) -> None:
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def rows_of(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def use_dark(monkeypatch: pytest.MonkeyPatch, make=dark_segmenter, calls=None) -> None:
    def fake_load(*args, **kwargs):
        print("MODEL LOADED", file=sys.stderr)
        if calls is not None:
            calls.append(args)
        return make()

    monkeypatch.setattr("ircr.engine.segmenter.load_model", fake_load)


@pytest.fixture(scope="module")
def glass_blob_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H&E block at x 24..224 plus 8 grey blobs on the glass at x >= 300 (not tissue)."""
    path = tmp_path_factory.mktemp("density") / "blobs.tif"
    img, _ = make_slide(path, 0.25, 3, shape=(320, 448), region=(16, 24, 288, 200))
    for i in range(8):
        disc(img, 40 + 34 * i, 330 + 40 * (i % 2), 7)
    write_pyramid(path, img, 0.25)
    return path


# ---- 27.1 density divides what it counts; 27.9 reader recorded, sizes rounded ----------------
def test_slide_density_counts_nuclei_in_the_tissue_mask(glass_blob_slide: Path,
                                                        tmp_path: Path) -> None:
    seg = whole_tile_segmenter()
    logs: list[str] = []
    s = seg.process(glass_blob_slide, tmp_path, log=logs.append)
    rows = rows_of(tmp_path / "blobs.csv")
    x = np.array([float(r["centroid_x_px"]) for r in rows])
    on_glass = int((x >= 300).sum())
    assert on_glass == 8  # the blobs are segmented (the tile is processed) ...
    assert s["n_nuclei"] == len(rows)
    assert s["n_nuclei_in_tissue"] == len(rows) - 8  # ... but not counted in the density
    assert s["nuclei_per_mm2"] == pytest.approx((len(rows) - 8) / s["tissue_area_mm2"])
    assert "tissue mask" in s["density_basis"]
    assert s["slide_reader"] in ("tiffslide", "openslide", "tifffile")
    assert f"read with {s['slide_reader']}" in logs[0]
    assert not re.search(r"\d\.\d{6,}", logs[0]), logs[0]


# ---- 27.7 folder summary: tissue area column, totals on the same area as the rows ------------
def test_folder_summary_totals_use_the_rows_area(glass_blob_slide: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "blobs.tif").write_bytes(glass_blob_slide.read_bytes())
    tile = np.full((200, 240, 3), GLASS, np.uint8)
    for i in range(5):
        disc(tile, 40 + 30 * i, 60 + 25 * i, 6)
    Image.fromarray(tile).save(src / "tile.png")
    use_dark(monkeypatch, whole_tile_segmenter)
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--mpp", "0.25", "--no-progress"]) == 0
    per = {n: json.loads((out / f"{n}_summary.json").read_text()) for n in ("blobs", "tile")}
    table = {r["image"]: r for r in rows_of(out / "ircr_summary.csv")}
    assert float(table["tile.png"]["tissue_area_mm2"]) == pytest.approx(200 * 240 * 0.0625e-6)
    assert float(table["blobs.tif"]["tissue_area_mm2"]) == pytest.approx(
        per["blobs"]["tissue_area_mm2"])
    assert float(table["blobs.tif"]["area_mm2"]) == pytest.approx(320 * 448 * 0.0625e-6)
    doc = json.loads((out / "ircr_summary.json").read_text())
    counted = per["blobs"]["n_nuclei"] - 8 + 5  # blobs on glass are outside the tissue mask
    tissue = per["blobs"]["tissue_area_mm2"] + 200 * 240 * 0.0625e-6
    assert doc["n_nuclei_in_tissue"] == counted
    assert doc["tissue_area_mm2"] == pytest.approx(tissue)
    assert doc["nuclei_per_mm2"] == pytest.approx(counted / tissue)
    assert doc["area_mm2"] == pytest.approx((320 * 448 + 200 * 240) * 0.0625e-6)


# ---- 27.3 coordinates clipped to the image; 27.16 one centroid convention --------------------
def test_slide_coordinates_stay_inside_the_image(tmp_path: Path) -> None:
    # 449 x 324 px at 0.3 µm/px -> 539 x 389 processing px for 0.25 µm/px (rounded up), which
    # map back to 449.17 x 324.17: nuclei on the right and bottom edges used to pass the image
    img = np.full((324, 449, 3), GLASS, np.uint8)
    for cy in (40, 120, 200):
        disc(img, cy, 446, 7)
    for cx in (60, 160, 260):
        disc(img, 321, cx, 7)
    path = tmp_path / "edge.tif"
    write_pyramid(path, img, 0.3)
    s = whole_tile_segmenter().process(path, tmp_path / "o", tissue=False)
    assert s["n_nuclei"] == 6
    rows = rows_of(tmp_path / "o" / "edge.csv")
    assert max(int(r["bbox_x1_px"]) for r in rows) == 449
    assert max(int(r["bbox_y1_px"]) for r in rows) == 324
    coords = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in json.loads(
        (tmp_path / "o" / "edge.geojson").read_text())["features"]])
    assert coords[:, 0].max() == 449 and coords[:, 1].max() == 324
    for r in rows:
        assert float(r["centroid_x_um"]) == pytest.approx(float(r["centroid_x_px"]) * 0.3, abs=1e-3)
        assert float(r["centroid_y_um"]) == pytest.approx(float(r["centroid_y_px"]) * 0.3, abs=1e-3)


def polygon_centroid(ring: np.ndarray) -> tuple[float, float]:
    x, y = ring[:, 0], ring[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    a = cross.sum() / 2
    return (float(((x[:-1] + x[1:]) * cross).sum() / (6 * a)),
            float(((y[:-1] + y[1:]) * cross).sum() / (6 * a)))


def test_csv_centroids_are_the_geojson_centroids(tmp_path: Path) -> None:
    img = np.full((120, 160, 3), GLASS, np.uint8)
    img[30:37, 40:45] = 60   # a 5 x 7 px rectangle: centroid (42.5, 33.5) with corner origin
    disc(img, 80, 110, 6)
    path = tmp_path / "t.png"
    Image.fromarray(img).save(path)
    dark_segmenter().process(path, tmp_path / "o", mpp=0.25, outputs=["csv", "geojson"])
    rows = sorted(rows_of(tmp_path / "o" / "t.csv"), key=lambda r: int(r["id"]))
    feats = {int(f["properties"]["measurements"]["Nucleus id"]): f for f in json.loads(
        (tmp_path / "o" / "t.geojson").read_text())["features"]}
    assert len(rows) == 2
    rect = min(rows, key=lambda r: float(r["centroid_x_px"]))
    assert (float(rect["centroid_x_px"]), float(rect["centroid_y_px"])) == (42.5, 33.5)
    for r in rows:
        gx, gy = polygon_centroid(np.asarray(feats[int(r["id"])]["geometry"]["coordinates"][0]))
        assert float(r["centroid_x_px"]) == pytest.approx(gx)
        assert float(r["centroid_y_px"]) == pytest.approx(gy)
        assert float(r["centroid_x_um"]) == pytest.approx(gx * 0.25)


# ---- 27.2 non-brightfield input refused (or --force), oversized objects dropped --------------
def test_channel_planes_are_refused_unless_forced(tmp_path: Path) -> None:
    planes = np.zeros((3, 96, 96), np.uint8)  # CYX: three fluorescence channels as pages
    planes[:, 20:40, 20:40] = 200
    path = tmp_path / "qptiff_like.tif"
    tifffile.imwrite(path, planes, photometric="minisblack", metadata={"axes": "CYX"})
    seg = dark_segmenter()
    with pytest.raises(IrcrError, match=r"qptiff_like\.tif: 3 channel planes .* --force"):
        seg.process(path, tmp_path / "o", mpp=0.25)
    assert not (tmp_path / "o" / "qptiff_like_summary.json").exists()
    with pytest.warns(UserWarning, match="channel planes.*anyway"):
        s = seg.process(path, tmp_path / "o", mpp=0.25, force=True)
    assert s["n_nuclei"] >= 0


def test_mostly_dark_tile_and_slide_are_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dapi = np.full((256, 256, 3), 5, np.uint8)  # black background, bright nuclei (DAPI)
    for cy, cx in ((60, 60), (150, 90), (200, 200)):
        disc(dapi, cy, cx, 8, value=220)
    png = tmp_path / "dapi.png"
    Image.fromarray(dapi).save(png)
    slide = tmp_path / "dapi.tif"
    write_pyramid(slide, np.tile(dapi, (2, 2, 1)), 0.25)
    use_dark(monkeypatch)
    for path in (png, slide):
        rc = main(["segment", str(path), "-o", str(tmp_path / "o"), "--mpp", "0.25",
                   "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "mostly dark" in err and "--force" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "o" / "dapi_summary.json").exists()
    rc = main(["segment", str(png), "-o", str(tmp_path / "f"), "--mpp", "0.25", "--force",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "ircr: warning:" in err and "mostly dark" in err


def test_real_he_tiles_are_brightfield(monuseg_root: Path, cpm15_root: Path) -> None:
    """The dark check never refuses real H&E: every MoNuSeg and CPM-15 training tile passes
    (the darkest has a median brightness of 82/255, the limit is 40)."""
    from ircr.engine.plausibility import dark_reason
    from ircr.io.image import read_image

    files = sorted((monuseg_root / "images").glob("*.tif")) + sorted(
        (cpm15_root / "images").glob("*.png"))
    assert len(files) == 45
    for f in files:
        assert dark_reason(read_image(f)) is None, f


def test_objects_far_above_nucleus_size_are_dropped_and_counted(tmp_path: Path) -> None:
    img = np.full((400, 400, 3), GLASS, np.uint8)
    img[20:270, 20:270] = 60   # 62,500 px = 3,906 µm² at 0.25 µm/px: no nucleus is that big
    for cx in (300, 340, 380):
        disc(img, 350, cx, 7)
    path = tmp_path / "junk.png"
    Image.fromarray(img).save(path)
    seg = whole_tile_segmenter()
    # post-processing = connected components of NP > 0.5, so the square is one object
    seg.postprocess = lambda pred: ndi.label(pred.prob > 0.5)[0].astype(np.int32)
    s = seg.process(path, tmp_path / "o", mpp=0.25)
    rows = rows_of(tmp_path / "o" / "junk.csv")
    assert s["dropped_oversized"] == 1
    assert len(rows) == s["n_nuclei"] == 3
    assert max(float(r["area_um2"]) for r in rows) < 3000
    labels = tifffile.imread(tmp_path / "o" / "junk_labels.tif")
    assert not labels[20:270, 20:270].any()


# ---- 27.8 DICOM-WSI ----------------------------------------------------------------------------
def test_dicom_is_refused_by_name_or_handed_to_openslide(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    import ircr.io.wsi as wsi
    from ircr.engine.inputs import check_input_file

    dcm = tmp_path / "slide.dcm"
    dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    monkeypatch.setattr(wsi, "openslide_reads_dicom", lambda: False)
    rc = main(["segment", str(dcm), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "DICOM-WSI is not supported" in err and "OpenSlide 4" in err
    assert err.count("\n") == 1
    monkeypatch.setattr(wsi, "openslide_reads_dicom", lambda: True)
    check_input_file(dcm)  # accepted: OpenSlide reads it
    assert wsi.is_slide(dcm)


# ---- 27.9/27.10/27.14 inputs checked before the model, a folder run goes on past failures -----
def test_folder_goes_on_past_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "tiles"
    src.mkdir()
    tile = np.full((96, 96, 3), GLASS, np.uint8)
    disc(tile, 48, 48, 7)
    Image.fromarray(tile).save(src / "a.png")
    (src / "b_text.png").write_text("this is not an image\n")
    Image.fromarray(tile).save(src / "c_late.png")
    good = (src / "a.png").read_bytes()
    (src / "d_cut.png").write_bytes(good[:80])  # header fine, data cut: fails in the run
    out = tmp_path / "out"
    use_dark(monkeypatch)
    args = ["segment", str(src), "-o", str(out), "--mpp", "0.25", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.index("b_text.png: cannot read image") < err.index("MODEL LOADED")
    assert "Error" not in err.replace("ircr: error", "")  # no UnidentifiedImageError etc.
    tail = err[err.index("2 of 4 input(s) failed"):]
    assert "b_text.png: cannot read image" in tail and "d_cut.png" in tail
    assert (out / "c_late_summary.json").exists()
    table = {r["image"]: r for r in rows_of(out / "ircr_summary.csv")}
    assert [table[n]["status"] for n in ("a.png", "b_text.png", "c_late.png", "d_cut.png")] == [
        "done", "failed", "done", "failed"]
    assert "not an image file" in table["b_text.png"]["error"]
    doc = json.loads((out / "ircr_summary.json").read_text())
    assert doc["inputs"] == 4 and doc["failed"] == 2
    # --skip-done: the same failures, done inputs skipped with their recorded time (not 0.0 s)
    assert main([*args, "--skip-done"]) == 2
    err = capsys.readouterr().err
    assert "2 of 4 input(s) failed" in err
    table = {r["image"]: r for r in rows_of(out / "ircr_summary.csv")}
    assert table["a.png"]["status"] == "skipped"
    recorded = json.loads((out / "a_summary.json").read_text())["timings_s"]
    assert float(table["a.png"]["seconds"]) == pytest.approx(sum(recorded.values()), abs=0.01)
    assert float(table["a.png"]["seconds"]) > 0


def test_several_inputs_go_on_past_a_missing_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tile = np.full((96, 96, 3), GLASS, np.uint8)
    disc(tile, 48, 48, 7)
    for name in ("one.png", "three.png"):
        Image.fromarray(tile).save(tmp_path / name)
    use_dark(monkeypatch)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "one.png"), str(tmp_path / "two.png"),
               str(tmp_path / "three.png"), "-o", str(out), "--mpp", "0.25", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 3 input(s) failed" in err and "two.png: file not found" in err
    assert (out / "three_summary.json").exists()
    doc = json.loads((out / "ircr_summary.json").read_text())
    assert [r["status"] for r in doc["per_input"]] == ["done", "failed", "done"]
    assert doc["n_nuclei"] == 2


def test_missing_mpp_is_reported_before_the_model_loads(glass_blob_slide: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    img = tifffile.imread(glass_blob_slide)
    nompp = tmp_path / "nompp.tif"
    write_pyramid(nompp, img, None)
    calls: list = []
    use_dark(monkeypatch, calls=calls)
    rc = main(["segment", str(nompp), "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "pass --mpp" in err and not calls
    assert err.count("\n") == 1


def test_reader_warnings_do_not_reach_the_console(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "imagej.tif"  # ImageJ metadata that does not match: tifffile logs it
    tifffile.imwrite(path, np.full((64, 64, 3), GLASS, np.uint8), metadata=None,
                     description="ImageJ=1.11a\nimages=5\nframes=5\n")
    use_dark(monkeypatch)
    seen = io.StringIO()  # stands for the console: Python's last-resort handler
    handler = logging.StreamHandler(seen)
    logging.getLogger("tifffile").addHandler(handler)
    try:
        rc = main(["segment", str(path), "-o", str(tmp_path / "o"), "--mpp", "0.25",
                   "--no-progress"])
    finally:
        logging.getLogger("tifffile").removeHandler(handler)
    err = capsys.readouterr().err + seen.getvalue()
    assert rc == 0 and "ImageJ" not in err and "TiffFile" not in err, err


# ---- 28.6 a folder named like a packaged model does not replace it ---------------------------
def test_a_default_folder_here_does_not_shadow_the_packaged_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ircr.cli.segment import split_model
    from ircr.engine.packaged import packaged_root, resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "model.yaml").write_text("mpp: 0.25\n")
    packaged = packaged_root() / "default"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_model(None) == packaged  # no model given: no question, no warning
    with pytest.warns(UserWarning, match=r"packaged model 'default'.*\./default"):
        assert resolve_model("default") == packaged
    assert resolve_model("./default") == Path("./default")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "a.png")
    assert split_model(None, ["./default", "a.png"]) == ("./default", [Path("a.png")])
    assert split_model(None, ["a.png"]) == ("default", [Path("a.png")])
