"""Dataset readers on small files written in each dataset's published format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from ircr.data.datasets import DATASETS, open_dataset
from ircr.data.datasets.pannuke import merge_pannuke_masks
from ircr.data.polygons import rasterize_polygons
from ircr.errors import IrcrError

RNG = np.random.default_rng(0)


def _one_line_error(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(IrcrError) as info:
        out = fn(*args, **kw)
        list(out)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- polygons


def test_rasterize_square_pixel_centre_convention() -> None:
    sq = np.array([[2, 2], [5, 2], [5, 5], [2, 5]], float)  # (x, y)
    inst = rasterize_polygons([sq], (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[2:6, 2:6] = 1  # centres 2..5 inclusive (boundary counts)
    np.testing.assert_array_equal(inst, expected)
    half = np.array([[1.5, 0.5], [3.5, 0.5], [3.5, 2.5], [1.5, 2.5]])
    got = np.argwhere(rasterize_polygons([half], (5, 5))).tolist()
    assert got == [[1, 2], [1, 3], [2, 2], [2, 3]]


def test_rasterize_overlap_rules_and_degenerate() -> None:
    big = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float)
    small = np.array([[3, 3], [5, 3], [5, 5], [3, 5]], float)
    line = np.array([[0, 0], [5, 5], [9, 9]], float)  # zero area
    two = np.array([[0, 0], [5, 5]], float)
    later = rasterize_polygons([small, big, line, two], (10, 10))
    assert set(np.unique(later)) == {2}  # big (all 100 pixels) painted last covers small
    smaller = rasterize_polygons([small, big, line, two], (10, 10), overlap="smaller")
    assert (smaller[3:6, 3:6] == 1).all() and (smaller == 2).sum() == 100 - 9


# --------------------------------------------------------------------------- MoNuSeg


def _aperio_xml(polys: list[np.ndarray], classes: list[str] | None = None) -> str:
    """Aperio ImageScope XML; one Annotation per class (MoNuSAC) or one with all (MoNuSeg)."""
    groups: dict[str, list[np.ndarray]] = {}
    for i, p in enumerate(polys):
        groups.setdefault(classes[i] if classes else "", []).append(p)
    anns = []
    for aid, (cls, ps) in enumerate(groups.items(), 1):
        regions = "".join(
            f'<Region Id="{i}" Type="0"><Attributes/><Vertices>'
            + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in p)
            + "</Vertices></Region>"
            for i, p in enumerate(ps, 1)
        )
        attrs = f'<Attribute Name="{cls}" Id="0" Value=""/>' if cls else ""
        anns.append(f'<Annotation Id="{aid}" Name=""><Attributes>{attrs}</Attributes>'
                    f'<Regions><RegionAttributeHeaders/>{regions}</Regions><Plots/></Annotation>')
    head = '<?xml version="1.0"?><Annotations MicronsPerPixel="0.25">'
    return head + "".join(anns) + "</Annotations>"


def _square(x0: float, y0: float, s: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]])


def _monuseg(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels_inst").mkdir()
    (root / "annotations").mkdir()
    for k, name in enumerate(["A", "B"]):
        tifffile.imwrite(root / "images" / f"{name}.tif", _rgb(20, 30), compression="lzw",
                         photometric="rgb")
        polys = [_square(2, 2, 4), _square(10 + k, 10, 5), np.array([[1.0, 1.0], [3.0, 3.0]])]
        xml = _aperio_xml(polys)
        if name == "A":
            (root / "annotations" / "A.xml").write_text(xml)
        else:
            with gzip.open(root / "annotations" / "B.xml.gz", "wt") as fh:
                fh.write(xml)
    lab = np.zeros((20, 30), np.uint16)
    lab[0:3, 0:3], lab[5:9, 20:29] = 7, 300
    Image.fromarray(lab).save(root / "labels_inst" / "A.png")


def test_monuseg_png_xml_auto(tmp_path: Path) -> None:
    _monuseg(tmp_path)
    auto = list(open_dataset("monuseg", tmp_path))
    assert [s.name for s in auto] == ["A", "B"]
    assert [s.meta["label_format"] for s in auto] == ["png", "xml"]
    a, b = auto
    assert a.image.shape == (20, 30, 3) and a.inst is not None and a.inst.dtype == np.int32
    assert set(np.unique(a.inst)) == {0, 7, 300} and a.meta["mpp"] == 0.25
    assert b.inst is not None and b.meta["n_degenerate"] == 1
    expected = np.zeros((20, 30), np.int32)  # vertices are 1-based by default: shift -1
    expected[1:6, 1:6] = 1
    expected[9:15, 10:16] = 2
    np.testing.assert_array_equal(b.inst, expected)
    (_, raw) = list(open_dataset("monuseg", tmp_path, xml_one_based=False))
    np.testing.assert_array_equal(raw.inst, np.roll(expected, (1, 1), axis=(0, 1)))
    xml = list(open_dataset("monuseg", tmp_path, labels="xml"))
    assert [s.meta["label_format"] for s in xml] == ["xml", "xml"]
    assert set(np.unique(xml[0].inst)) == {0, 1, 2}
    msg = _one_line_error(open_dataset, "monuseg", tmp_path, labels="png")
    assert "B.tif" in msg and "no label PNG" in msg
    skip = open_dataset("monuseg", tmp_path, labels="png", missing="skip")
    assert [s.name for s in skip] == ["A"]
    unl = list(open_dataset("monuseg", tmp_path, labels="png", missing="unlabelled"))
    assert unl[1].inst is None


def test_monuseg_bad_inputs(tmp_path: Path) -> None:
    _monuseg(tmp_path)
    (tmp_path / "annotations" / "A.xml").write_text('<Annotations><Annotation Id="1">'
                                                     "<Regions/></Annotation></Annotations>")
    msg = _one_line_error(open_dataset, "monuseg", tmp_path, labels="xml")
    assert "A.xml" in msg and "no Annotation/Regions/Region" in msg
    (tmp_path / "annotations" / "A.xml").write_text("<Annotations><Annot")
    assert "invalid XML" in _one_line_error(open_dataset, "monuseg", tmp_path, labels="xml")
    Image.fromarray(np.zeros((21, 30), np.uint16)).save(tmp_path / "labels_inst" / "A.png")
    msg = _one_line_error(open_dataset, "monuseg", tmp_path, labels="png", missing="skip")
    assert "A.png" in msg and "A.tif" in msg and "30x21" in msg and "30x20" in msg
    assert "labels=" in _one_line_error(open_dataset, "monuseg", tmp_path, labels="mat")


# --------------------------------------------------------------------------- CPM-15


def _cpm_mask_text(inst: np.ndarray) -> str:
    h, w = inst.shape
    return f"{w} {h}\n" + "\n".join(str(v) for v in inst.reshape(-1)) + "\n"


def _cpm15(root: Path) -> dict[str, np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "labels_txt").mkdir()
    sizes = {"image01": (5, 6), "image04": (7, 4), "image05": (4, 9), "image09": (3, 3)}
    masks = {}
    for name, (h, w) in sizes.items():
        rgba = np.dstack([_rgb(h, w), np.full((h, w), 255, np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(root / "images" / f"{name}.png")
        inst = RNG.integers(0, 4, (h, w)).astype(np.int32)
        masks[name] = inst
    # the shared copy's defect: image04 and image05 masks swapped
    files = {"image01": "image01", "image04": "image05", "image05": "image04", "image09": "image09"}
    for img, mask_name in files.items():
        text = _cpm_mask_text(masks[img])
        if img == "image01":
            (root / "labels_txt" / f"{mask_name}_mask.txt").write_text(text)
        else:
            with gzip.open(root / "labels_txt" / f"{mask_name}_mask.txt.gz", "wt") as fh:
                fh.write(text)
    return masks


def test_cpm15_swap_detection_and_fixes(tmp_path: Path) -> None:
    masks = _cpm15(tmp_path)
    msg = _one_line_error(open_dataset, "cpm15", tmp_path)
    assert "image04.png" in msg and "image04_mask.txt.gz" in msg and "9x4" in msg and "4x7" in msg
    for opts in ({"fix_known_swaps": True},
                 {"pairs": {"image04": "image05_mask", "image05": "image04_mask.txt.gz"}}):
        got = {s.name: s for s in open_dataset("cpm15", tmp_path, **opts)}
        assert sorted(got) == ["image01", "image04", "image05", "image09"]
        for name, s in got.items():
            assert s.image.shape == masks[name].shape + (3,) and s.image.dtype == np.uint8
            np.testing.assert_array_equal(s.inst, masks[name])
        assert got["image04"].meta["mpp"] == 0.5 and got["image09"].meta["mpp"] == 0.25
    (tmp_path / "pairs.yaml").write_text("image04: image05_mask\nimage05: image04\n")
    assert len(list(open_dataset("cpm15", tmp_path, pairs=tmp_path / "pairs.yaml"))) == 4
    assert "image77" in _one_line_error(open_dataset, "cpm15", tmp_path, pairs={"image77": "x"})


def test_cpm15_bad_masks(tmp_path: Path) -> None:
    _cpm15(tmp_path)
    bad = tmp_path / "labels_txt" / "image01_mask.txt"
    bad.write_text("6 5\n" + "0\n" * 29)
    msg = _one_line_error(open_dataset, "cpm15", tmp_path, fix_known_swaps=True)
    assert "image01_mask.txt" in msg and "29 values" in msg
    fixed = {"fix_known_swaps": True}
    bad.write_text("6 5\n" + "0\n" * 29 + "1.5\n")
    assert "not an integer" in _one_line_error(open_dataset, "cpm15", tmp_path, **fixed)
    bad.write_text("six five\n")
    assert "width height" in _one_line_error(open_dataset, "cpm15", tmp_path, **fixed)


# --------------------------------------------------------------------------- CoNSeP


def test_consep_mat(tmp_path: Path) -> None:
    for split in ("Train", "Test"):
        (tmp_path / split / "Images").mkdir(parents=True)
        (tmp_path / split / "Labels").mkdir()
    inst = np.zeros((12, 10), np.float64)
    inst[1:4, 1:4], inst[6:10, 5:9] = 1, 2
    rgba = np.dstack([_rgb(12, 10), np.full((12, 10), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "Train" / "Images" / "train_1.png")
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {
        "inst_map": inst, "type_map": (inst > 0) * 2.0,
        "inst_type": np.array([[2.0], [5.0]]), "inst_centroid": np.array([[2.0, 2.0], [7.0, 7.5]]),
    })
    (s,) = list(open_dataset("consep", tmp_path, split="train"))
    assert s.name == "train_1" and s.inst is not None and s.inst.dtype == np.int32
    np.testing.assert_array_equal(s.inst, inst.astype(np.int32))
    np.testing.assert_array_equal(s.image, rgba[..., :3])
    assert s.meta["inst_class"] == {1: 2, 2: 5}
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"type_map": inst})
    msg = _one_line_error(open_dataset, "consep", tmp_path / "Train")
    assert "train_1.mat" in msg and "inst_map" in msg
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"inst_map": inst[:11]})
    msg = _one_line_error(open_dataset, "consep", tmp_path / "Train")
    assert "train_1.mat" in msg and "train_1.png" in msg and "10x11" in msg
    msg = _one_line_error(open_dataset, "consep", tmp_path, split="test")
    assert "Images" in msg and "no CoNSeP images" in msg


# --------------------------------------------------------------------------- PanNuke


def test_pannuke_merge_unique_ids() -> None:
    m = np.zeros((6, 6, 6), np.float64)
    m[0:2, 0:2, 0] = 5  # neoplastic id 5
    m[3:5, 0:2, 0] = 9  # neoplastic id 9
    m[0:2, 3:5, 1] = 5  # inflammatory reuses id 5
    m[4:6, 4:6, 4] = 1  # epithelial
    m[..., 5] = (m[..., :5].sum(-1) == 0)
    inst, classes = merge_pannuke_masks(m)
    assert inst.dtype == np.int32
    assert inst[0, 0] == 1 and inst[3, 0] == 2 and inst[0, 3] == 3 and inst[5, 5] == 4
    assert classes == {1: "neoplastic", 2: "neoplastic", 3: "inflammatory", 4: "epithelial"}
    assert (inst > 0).sum() == 16


def test_pannuke_fold_layout(tmp_path: Path) -> None:
    fold = tmp_path / "Fold 1"
    (fold / "images" / "fold1").mkdir(parents=True)
    (fold / "masks" / "fold1").mkdir(parents=True)
    imgs = RNG.integers(0, 256, (3, 16, 16, 3)).astype(np.float64)  # published dtype float64
    masks = np.zeros((3, 16, 16, 6), np.float64)
    masks[1, 2:6, 2:6, 2] = 4
    masks[1, 8:12, 8:12, 3] = 4
    np.save(fold / "images" / "fold1" / "images.npy", imgs)
    np.save(fold / "masks" / "fold1" / "masks.npy", masks)
    np.save(fold / "images" / "fold1" / "types.npy", np.array(["Breast", "Colon", "Lung"]))
    out = list(open_dataset("pannuke", fold))
    assert [s.name for s in out] == ["Fold_1_00000", "Fold_1_00001", "Fold_1_00002"]
    assert out[1].image.dtype == np.uint8
    np.testing.assert_array_equal(out[1].image, imgs[1].astype(np.uint8))
    assert out[1].inst is not None and len(np.unique(out[1].inst)) == 3
    assert out[1].meta["inst_class"] == {1: "connective", 2: "dead"}
    assert out[1].meta["tissue"] == "Colon"
    assert [s.meta["index"] for s in open_dataset("pannuke", fold, indices=[2, 0])] == [2, 0]
    np.save(fold / "masks" / "fold1" / "masks.npy", masks[:2])
    assert "masks.npy" in _one_line_error(open_dataset, "pannuke", fold)
    assert "no images.npy" in _one_line_error(open_dataset, "pannuke", fold / "masks")


# --------------------------------------------------------------------------- MoNuSAC


def test_monusac_classes(tmp_path: Path) -> None:
    patient = tmp_path / "TCGA-55-1594"
    patient.mkdir()
    tifffile.imwrite(patient / "TCGA-55-1594-01Z-00-DX1_003.tif", _rgb(25, 40), photometric="rgb")
    polys = [_square(1, 1, 3), _square(10, 10, 4), _square(20, 5, 2), _square(30, 15, 3)]
    classes = ["Epithelial", "Lymphocyte", "Epithelial", "Macrophage"]
    (patient / "TCGA-55-1594-01Z-00-DX1_003.xml").write_text(_aperio_xml(polys, classes))
    (s,) = list(open_dataset("monusac", tmp_path))
    assert s.name == "TCGA-55-1594-01Z-00-DX1_003" and s.inst is not None
    # XML groups by class: Epithelial (ids 1, 2), Lymphocyte (3), Macrophage (4)
    assert s.meta["inst_class"] == {1: "Epithelial", 2: "Epithelial", 3: "Lymphocyte",
                                    4: "Macrophage"}
    assert s.inst[2, 2] == 1 and s.inst[6, 21] == 2 and s.inst[12, 12] == 3 and s.inst[16, 31] == 4
    assert (s.inst == 3).sum() == 25
    tifffile.imwrite(patient / "extra.tif", _rgb(5, 5), photometric="rgb")
    assert "extra.tif" in _one_line_error(open_dataset, "monusac", tmp_path)
    assert len(list(open_dataset("monusac", tmp_path, missing="skip"))) == 1


# --------------------------------------------------------------------------- folder + registry


def test_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = _rgb(6, 8)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    tifffile.imwrite(tmp_path / "images" / "b.tiff", img, photometric="rgb")
    Image.fromarray(img).save(tmp_path / "images" / "c.jpg")
    lab = np.zeros((6, 8), np.int32)
    lab[1:3, 1:3] = 70000
    np.save(tmp_path / "labels" / "a.npy", lab)
    tifffile.imwrite(tmp_path / "labels" / "b.tif", lab)
    msg = _one_line_error(open_dataset, "folder", tmp_path)
    assert "c.jpg" in msg and "--option labels_required=false" in msg
    out = list(open_dataset("folder", tmp_path, labels_required=False, mpp=0.5))
    assert [s.name for s in out] == ["a", "b", "c"]
    np.testing.assert_array_equal(out[0].inst, lab)
    np.testing.assert_array_equal(out[1].image, img)
    assert out[2].inst is None and out[0].meta["mpp"] == 0.5
    np.save(tmp_path / "labels" / "a.npy", lab[:5])
    msg = _one_line_error(open_dataset, "folder", tmp_path, labels_required=False)
    assert "a.npy" in msg and "a.png" in msg and "8x5" in msg and "8x6" in msg


def test_registry_errors(tmp_path: Path) -> None:
    assert set(DATASETS) == {"monuseg", "cpm15", "consep", "pannuke", "monusac", "lizard",
                             "folder", "synthetic"}
    msg = _one_line_error(open_dataset, "kumar", tmp_path)
    assert "kumar" in msg and "monuseg" in msg and "cpm15" in msg
    (tmp_path / "images").mkdir()
    for name in ("monuseg", "folder", "cpm15"):
        msg = _one_line_error(open_dataset, name, tmp_path)
        assert str(tmp_path / "images") in msg and "no " in msg
    assert "not found" in _one_line_error(open_dataset, "folder", tmp_path / "nope")
    msg = _one_line_error(open_dataset, "folder", tmp_path, label_dir="x")
    assert "label_dir" in msg and "labels_dir" in msg
