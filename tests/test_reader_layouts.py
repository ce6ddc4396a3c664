"""Issue 27 points 4, 5, 6, 9 and issue 28 point 5: dataset readers on the published layouts
(MoNuSAC .svs + XML, CoNSeP .mat with non-consecutive ids), binary masks, hints, image mpp."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ircr.cli.main import main
from ircr.data.datasets import open_dataset
from ircr.data.prepare import prepare_samples
from ircr.data.sample import Sample
from ircr.errors import IrcrError

APERIO = "Aperio Image Library v12.0.15 \r\n64x48 [0,0 64x48] (256x256) RAW|AppMag = 40"
XML = """<?xml version="1.0"?>
<Annotations{mpp}>
<Annotation Id="1"><Attributes><Attribute Name="Epithelial" Id="0" Value=""/></Attributes>
<Regions><Region Id="1"><Vertices><Vertex X="10" Y="10"/><Vertex X="20" Y="10"/>
<Vertex X="20" Y="20"/><Vertex X="10" Y="20"/></Vertices></Region></Regions></Annotation>
<Annotation Id="2"><Attributes><Attribute Name="Lymphocyte" Id="0" Value=""/></Attributes>
<Regions><Region Id="1"><Vertices><Vertex X="40" Y="30"/><Vertex X="44" Y="30"/>
<Vertex X="44" Y="34"/><Vertex X="40" Y="34"/></Vertices></Region></Regions></Annotation>
</Annotations>"""


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _svs(path: Path, img: np.ndarray, mpp: float | None) -> None:
    desc = APERIO + (f"|MPP = {mpp}" if mpp is not None else "")
    tifffile.imwrite(path, img, photometric="rgb", description=desc, tile=(16, 16))


def test_monusac_published_svs_layout_and_pixel_size(tmp_path: Path) -> None:
    img = _rgb(48, 64)
    for patient, name, xml_mpp, svs_mpp in (("P1", "a", 0.19448, 0.252), ("P1", "b", None, 0.252),
                                            ("P2", "c", None, None)):
        (tmp_path / patient).mkdir(exist_ok=True)
        _svs(tmp_path / patient / f"{name}.svs", img, svs_mpp)
        attr = f' MicronsPerPixel="{xml_mpp:f}"' if xml_mpp else ""
        (tmp_path / patient / f"{name}.xml").write_text(XML.format(mpp=attr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = list(open_dataset("monusac", tmp_path))
    assert [s.name for s in samples] == ["a", "b", "c"]
    got = {s.name: (s.meta["mpp"], s.meta["mpp_source"]) for s in samples}
    assert got == {"a": (0.19448, "xml"), "b": (0.252, "image"), "c": (0.25, "assumed")}
    assert "assumed 0.25" in str(samples[2].meta["mpp_note"])
    assert [str(w.message) for w in caught if "assumed 0.25" in str(w.message)]
    s = samples[0]
    np.testing.assert_array_equal(s.image, img)
    # hand: square 10..20 (pixel centres on the edge count) = 11 x 11; 40..44 = 5 x 5
    assert (s.inst == 1).sum() == 121 and (s.inst == 2).sum() == 25
    assert s.meta["inst_class"] == {1: "Epithelial", 2: "Lymphocyte"}


def test_monusac_conversion_next_to_svs_is_read_once(tmp_path: Path) -> None:
    img = _rgb(48, 64)
    _svs(tmp_path / "a.svs", img, 0.252)
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    (tmp_path / "a.xml").write_text(XML.format(mpp=' MicronsPerPixel="0.25"'))
    (s,) = list(open_dataset("monusac", tmp_path))
    assert s.meta["path"].endswith("a.tif") and s.meta["mpp"] == 0.25


def test_monusac_bad_xml_mpp_is_one_line(tmp_path: Path) -> None:
    _svs(tmp_path / "a.svs", _rgb(48, 64), None)
    (tmp_path / "a.xml").write_text(XML.format(mpp=' MicronsPerPixel="abc"'))
    with pytest.raises(IrcrError, match=r"a\.xml: MicronsPerPixel: 'abc' µm/px is not a "):
        list(open_dataset("monusac", tmp_path))


def _consep(root: Path, inst: np.ndarray, **extra: np.ndarray) -> None:
    from scipy.io import savemat

    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    Image.fromarray(_rgb(*inst.shape)).save(root / "Images" / "x.png")
    savemat(root / "Labels" / "x.mat", {"inst_map": inst, **extra})


def test_consep_non_consecutive_ids_map_by_sorted_id(tmp_path: Path) -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[1:4, 1:4], inst[6:9, 6:9], inst[12:16, 12:16] = 1039, 5, 17
    _consep(tmp_path, inst, inst_type=np.array([[2], [3], [4]]))  # rows: ids 5, 17, 1039
    (s,) = list(open_dataset("consep", tmp_path))
    assert s.meta["inst_class"] == {5: 2, 17: 3, 1039: 4}


def test_consep_row_count_mismatch_warns_and_uses_type_map(tmp_path: Path) -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[1:4, 1:4], inst[6:9, 6:9] = 1, 2
    type_map = np.zeros((20, 20), np.int32)
    type_map[1:4, 1:4], type_map[6:9, 6:9] = 7, 3
    type_map[6, 6] = 1  # a minority pixel: the majority (3) wins
    _consep(tmp_path, inst, inst_type=np.array([[1]]), type_map=type_map)
    with pytest.warns(UserWarning, match="inst_type has 1 rows but inst_map has 2 instances; "
                                         "classes from type_map"):
        (s,) = list(open_dataset("consep", tmp_path))
    assert s.meta["inst_class"] == {1: 7, 2: 3}


def test_consep_root_with_train_and_test_hints_split(tmp_path: Path) -> None:
    inst = np.zeros((8, 8), np.int32)
    inst[2:4, 2:4] = 1
    _consep(tmp_path / "Train", inst)
    (tmp_path / "Test").mkdir()
    with pytest.raises(IrcrError, match="Train/ and Test/: pick one with --option split=train"):
        open_dataset("consep", tmp_path)
    assert len(list(open_dataset("consep", tmp_path, split="train"))) == 1


def _binary_folder(root: Path) -> np.ndarray:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    mask = np.zeros((40, 40), np.uint8)
    for r in range(4):
        for c in range(3):  # 4 x 3 = 12 separate 3x3 blobs
            mask[2 + 9 * r: 5 + 9 * r, 2 + 12 * c: 5 + 12 * c] = 255
    mask[5, 5] = 255  # touches blob (0, 0) diagonally only: part of it (8-connected)
    mask[11:14, 5:8] = 255  # touches blob (1, 0) side by side: one region -> still 12
    Image.fromarray(_rgb(40, 40)).save(root / "images" / "m.png")
    Image.fromarray(mask).save(root / "labels" / "m.png")
    return mask


def test_binary_mask_refused_then_labelled_with_option(tmp_path: Path) -> None:
    _binary_folder(tmp_path)
    with pytest.raises(IrcrError) as exc:
        list(open_dataset("folder", tmp_path))
    msg = str(exc.value)
    assert "m.png: id 255 covers 12 separate regions" in msg
    assert "--option labels=binary" in msg
    (s,) = list(open_dataset("folder", tmp_path, labels="binary"))
    assert s.inst.max() == 12 and len(np.unique(s.inst)) == 13
    assert main(["data", "prepare", "folder", str(tmp_path), "-o", str(tmp_path / "p"),
                 "--patch", "20", "--ratio", "1", "--val-fraction", "0",
                 "--option", "labels=binary", "--no-progress"]) == 0


def test_monuseg_accepts_capitalised_folders_and_lists_names(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match=r"images/, Tissue Images/, Tissue_Images/ \(any case\)"):
        open_dataset("monuseg", tmp_path)
    (tmp_path / "Images").mkdir()
    tifffile.imwrite(tmp_path / "Images" / "A.tif", _rgb(30, 30), photometric="rgb")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "A.xml").write_text(XML.format(mpp=""))
    (s,) = list(open_dataset("monuseg", tmp_path))
    assert s.meta["label_format"] == "xml" and s.inst.max() >= 1


@pytest.mark.parametrize("value", ["abc", "nan", "-1"])
def test_prepare_refuses_bad_mpp_option(tmp_path: Path, value: str, capsys) -> None:
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_rgb(32, 32)).save(root / "images" / "a.png")
    assert main(["data", "prepare", "folder", str(root), "-o", str(tmp_path / "p"),
                 "--option", "labels_required=false", "--option", f"mpp={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ircr: error: --option mpp: ")
    assert "not a plausible pixel size" in err[0] and not (tmp_path / "p").exists()


def test_prepare_refuses_a_reader_mpp_that_is_not_a_pixel_size(tmp_path: Path) -> None:
    bad = Sample(image=_rgb(16, 16), inst=None,
                 meta={"name": "a", "source": "x", "mpp": float("nan"), "path": "a.png"})
    with pytest.raises(IrcrError, match=r"^a\.png: mpp: nan µm/px is not a plausible"):
        prepare_samples([bad], tmp_path / "p", source="x", patch=16, ratio=1,
                        val_fraction=0)
    assert not (tmp_path / "p").exists()


def test_prepared_dataset_with_a_bad_mpp_is_refused_on_load(tmp_path: Path) -> None:
    import json

    from ircr.data.store import PreparedDataset

    inst = np.zeros((16, 16), np.int32)
    inst[4:8, 4:8] = 1
    good = Sample(image=_rgb(16, 16), inst=inst,
                  meta={"name": "a", "source": "x", "mpp": 0.5, "path": "a.png"})
    prepare_samples([good], tmp_path / "p", source="x", patch=16, ratio=1, val_fraction=0)
    index = tmp_path / "p" / "dataset.json"
    assert PreparedDataset(tmp_path / "p").images[0]["mpp"] == 0.5
    for bad in ("abc", -1):  # written by a version that did not check it
        data = json.loads(index.read_text())
        data["images"][0]["mpp"] = bad
        index.write_text(json.dumps(data))
        with pytest.raises(IrcrError, match=r"dataset\.json: image 'a' mpp: .* is not a "
                                            r"plausible pixel size"):
            PreparedDataset(tmp_path / "p")


def test_prepare_prints_reader_notes_as_one_line_warnings(tmp_path: Path, capsys) -> None:
    _svs(tmp_path / "a.svs", _rgb(48, 64), None)
    (tmp_path / "a.xml").write_text(XML.format(mpp=""))
    assert main(["data", "prepare", "monusac", str(tmp_path), "-o", str(tmp_path / "p"),
                 "--patch", "32", "--ratio", "1", "--val-fraction", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ircr: warning: {tmp_path / 'a.svs'}: no MicronsPerPixel in the XML and no "
                   "pixel size in a.svs; assumed 0.25 µm/px (40x)"]
