"""Readers on the real shared copies of MoNuSeg 2018 (train) and CPM-15.

Expected numbers are copied from ../shared/data/SOURCES.md (counted independently of this
code when the data was collected), not produced by the readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ircr.data.datasets import open_dataset
from ircr.data.datasets.monuseg import read_monuseg_xml
from ircr.errors import IrcrError
from ircr.io.image import read_label_map

# SOURCES.md, "Per-image counts": instances in labels_inst, XML regions where the XML exists.
MONUSEG_COUNTS: dict[str, tuple[int, int | None]] = {
    "TCGA-18-5592-01Z-00-DX1": (480, None), "TCGA-21-5784-01Z-00-DX1": (398, 398),
    "TCGA-21-5786-01Z-00-DX1": (440, 440), "TCGA-38-6178-01Z-00-DX1": (424, None),
    "TCGA-49-4488-01Z-00-DX1": (557, None), "TCGA-50-5931-01Z-00-DX1": (444, 445),
    "TCGA-A7-A13E-01Z-00-DX1": (314, 314), "TCGA-A7-A13F-01Z-00-DX1": (356, None),
    "TCGA-AR-A1AK-01Z-00-DX1": (432, 433), "TCGA-AR-A1AS-01Z-00-DX1": (405, 405),
    "TCGA-AY-A8YK-01A-01-TS1": (363, None), "TCGA-B0-5698-01Z-00-DX1": (357, 357),
    "TCGA-B0-5710-01Z-00-DX1": (359, 359), "TCGA-B0-5711-01Z-00-DX1": (342, 342),
    "TCGA-CH-5767-01Z-00-DX1": (294, 294), "TCGA-DK-A2I6-01A-01-TS1": (342, None),
    "TCGA-E2-A14V-01Z-00-DX1": (378, None), "TCGA-E2-A1B5-01Z-00-DX1": (328, 329),
    "TCGA-G2-A2EK-01A-02-TSB": (401, None), "TCGA-G9-6336-01Z-00-DX1": (448, None),
    "TCGA-G9-6348-01Z-00-DX1": (390, None), "TCGA-G9-6356-01Z-00-DX1": (442, None),
    "TCGA-G9-6362-01Z-00-DX1": (472, 472), "TCGA-G9-6363-01Z-00-DX1": (354, None),
    "TCGA-HE-7128-01Z-00-DX1": (1073, None), "TCGA-HE-7129-01Z-00-DX1": (1584, None),
    "TCGA-HE-7130-01Z-00-DX1": (1862, None), "TCGA-KB-A93J-01A-01-TS1": (1391, None),
    "TCGA-NH-A8F7-01A-01-TS1": (363, 363), "TCGA-RD-A8N9-01A-01-TS1": (1165, None),
}
MONUSEG_TOTAL = 16958
MONUSEG_XML_REGIONS = 4951  # in 13 files, 2 of them degenerate

# SOURCES.md CPM-15 table: image (W, H) and nuclei (of the correctly paired mask).
CPM15_TABLE: dict[str, tuple[int, int, int]] = {
    "image01": (643, 488, 351), "image02": (488, 490, 127), "image03": (751, 587, 256),
    "image04": (623, 493, 144), "image05": (863, 597, 346), "image06": (459, 392, 255),
    "image07": (439, 439, 292), "image08": (798, 596, 251), "image09": (801, 888, 97),
    "image10": (1032, 808, 218), "image11": (677, 696, 68), "image12": (793, 669, 131),
    "image13": (641, 589, 93), "image14": (461, 498, 139), "image15": (552, 526, 137),
}
CPM15_TOTAL = 2905


def _n_instances(inst: np.ndarray) -> int:
    ids = np.unique(inst)
    return int((ids > 0).sum())


def _mean_best_iou(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean over instances of ``ref`` of the IoU with their best-overlapping ``other`` instance."""
    r, o = ref.ravel().astype(np.int64), other.ravel().astype(np.int64)
    area_r, area_o = np.bincount(r), np.bincount(o)
    both = (r > 0) & (o > 0)
    pair, inter = np.unique(r[both] * (o.max() + 1) + o[both], return_counts=True)
    pr, po = pair // (o.max() + 1), pair % (o.max() + 1)
    best = np.zeros(area_r.size)
    iou = inter / (area_r[pr] + area_o[po] - inter)
    np.maximum.at(best, pr, iou)
    ids = np.unique(r[r > 0])
    return float(best[ids].mean())


def test_monuseg_all_30_tiles_and_counts(monuseg_root: Path) -> None:
    samples = list(open_dataset("monuseg", monuseg_root, labels="png"))
    assert sorted(s.name for s in samples) == sorted(MONUSEG_COUNTS)
    total = 0
    for s in samples:
        assert s.image.shape == (1000, 1000, 3) and s.image.dtype == np.uint8
        assert s.inst is not None and s.inst.dtype == np.int32 and s.inst.shape == (1000, 1000)
        assert s.meta["mpp"] == 0.25 and s.meta["source"] == "monuseg"
        n = _n_instances(s.inst)
        assert n == MONUSEG_COUNTS[s.name][0], s.name
        total += n
        assert s.image.std() > 10  # real tissue, not a blank decode
    assert total == MONUSEG_TOTAL


def test_monuseg_xml_matches_label_pngs(monuseg_root: Path) -> None:
    xml_dir = monuseg_root / "annotations_xml_partial"
    files = sorted(xml_dir.glob("*.xml.gz"))
    assert len(files) == 13
    n_degenerate, ious = 0, []
    for f in files:
        name = f.name[: -len(".xml.gz")]
        png = read_label_map(monuseg_root / "labels_inst" / f"{name}.png")
        inst, n_bad = read_monuseg_xml(f, png.shape)
        n_degenerate += n_bad
        png_count, xml_regions = MONUSEG_COUNTS[name]
        assert xml_regions is not None
        n = _n_instances(inst)
        assert n == xml_regions - n_bad, name  # every non-degenerate region is drawn
        assert abs(n - png_count) <= 1, name
        ious.append(_mean_best_iou(inst, png))
        assert ious[-1] >= 0.8, name
    assert n_degenerate == 2
    # 1-based vertices reproduce the official masks closely (0.83 mean with raw coordinates)
    assert np.mean(ious) >= 0.9


def test_monuseg_xml_layout_through_the_reader(monuseg_root: Path) -> None:
    with pytest.raises(IrcrError, match="no XML found"):
        open_dataset("monuseg", monuseg_root, labels="xml")  # 17 tiles have no XML
    it = open_dataset("monuseg", monuseg_root, labels="xml", missing="skip")
    first = next(it)  # TCGA-21-5784: 398 regions, none degenerate (SOURCES.md)
    assert first.name == "TCGA-21-5784-01Z-00-DX1" and first.meta["label_format"] == "xml"
    assert first.inst is not None and _n_instances(first.inst) == 398


def test_cpm15_with_swap_fixed(cpm15_root: Path) -> None:
    samples = list(open_dataset("cpm15", cpm15_root, fix_known_swaps=True))
    assert sorted(s.name for s in samples) == sorted(CPM15_TABLE)
    total = 0
    for s in samples:
        w, h, n_exp = CPM15_TABLE[s.name]
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        assert s.inst is not None and s.inst.shape == (h, w)
        assert _n_instances(s.inst) == n_exp, s.name
        assert s.meta["mpp"] == (0.5 if int(s.name[-2:]) <= 7 else 0.25)
        total += _n_instances(s.inst)
        # the README says nuclei are darker than background: a correct pairing shows it
        gray = s.image.mean(axis=2)
        assert gray[s.inst == 0].mean() - gray[s.inst > 0].mean() > 20, s.name
    assert total == CPM15_TOTAL


def test_cpm15_unfixed_pairing_fails_clearly(cpm15_root: Path) -> None:
    with pytest.raises(IrcrError) as info:
        list(open_dataset("cpm15", cpm15_root))
    msg = str(info.value)
    assert "\n" not in msg
    assert "image04.png" in msg and "image04_mask.txt.gz" in msg
    assert "623x493" in msg and "863x597" in msg and "fix_known_swaps" in msg
