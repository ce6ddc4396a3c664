"""``ircr prior build`` on the label formats of the IRCR paper's prior sources.

The paper builds its PIAC prior from MoNuSAC, CoNSeP, PanNuke and Lizard labels. Small
synthetic files in each published format (MoNuSAC image + Aperio XML, CoNSeP PNG + .mat
``inst_map``, PanNuke fold .npy arrays, Lizard PNG + .mat ``inst_map``/``id``/``class``) go
through the same command a user runs; the nucleus counts are the drawn nuclei (none touches
a border), counted by hand.
"""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.io import savemat

from ircr.cli.prior import at_mpp, register
from ircr.data.datasets import open_dataset
from ircr.errors import IrcrError
from ircr.ssl.prior import MorphPrior

RNG = np.random.default_rng(0)


def rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), np.uint8)


def disc(m: np.ndarray, cy: int, cx: int, ry: int, rx: int, val: int) -> None:
    yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
    m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = val


def two_nuclei(h: int, w: int, k: int) -> np.ndarray:
    inst = np.zeros((h, w), np.int32)
    disc(inst, 12, 12, 5 + k, 4, 1)
    disc(inst, 28, 28, 4, 6 + k, 2)
    return inst


XML_REGION = ('<Region Id="{i}"><Vertices>{v}</Vertices></Region>')


def monusac(root: Path) -> Path:
    """One 48 x 64 tile (tif + XML, 0.25 µm/px): a square and a triangle (2 nuclei)."""
    patient = root / "monusac" / "TCGA-XX"
    patient.mkdir(parents=True)
    tifffile.imwrite(patient / "a.tif", rgb(48, 64), photometric="rgb")
    polys = [[(10, 10), (20, 10), (20, 20), (10, 20)], [(30, 25), (45, 25), (37, 38)]]
    regions = "".join(XML_REGION.format(i=i + 1, v="".join(
        f'<Vertex X="{x}" Y="{y}"/>' for x, y in p)) for i, p in enumerate(polys))
    (patient / "a.xml").write_text(
        '<?xml version="1.0"?><Annotations MicronsPerPixel="0.250000"><Annotation Id="1">'
        '<Attributes><Attribute Name="Epithelial" Id="0" Value=""/></Attributes>'
        f"<Regions>{regions}</Regions></Annotation></Annotations>")
    return root / "monusac"


def consep(root: Path) -> Path:
    base = root / "consep"
    (base / "Images").mkdir(parents=True)
    (base / "Labels").mkdir()
    inst = two_nuclei(40, 40, 0)
    Image.fromarray(rgb(40, 40)).save(base / "Images" / "c1.png")
    savemat(base / "Labels" / "c1.mat", {"inst_map": inst, "inst_type": np.array([[1], [2]])})
    return base


def pannuke(root: Path) -> Path:
    fold = root / "Fold 1"
    (fold / "images" / "fold1").mkdir(parents=True)
    (fold / "masks" / "fold1").mkdir(parents=True)
    masks = np.zeros((2, 40, 40, 6), np.float64)
    for i in range(2):
        inst = two_nuclei(40, 40, i + 1)
        masks[i, ..., 0] = np.where(inst == 1, 3, 0)   # neoplastic, id 3
        masks[i, ..., 4] = np.where(inst == 2, 3, 0)   # epithelial, the same id 3
    np.save(fold / "images" / "fold1" / "images.npy", np.stack([rgb(40, 40)] * 2))
    np.save(fold / "masks" / "fold1" / "masks.npy", masks)
    return fold


def lizard(root: Path) -> Path:
    """Lizard's download layout: images in Lizard_Images1/, labels in Lizard_Labels/Labels/."""
    (root / "lizard" / "Lizard_Images1").mkdir(parents=True)
    (root / "lizard" / "Lizard_Labels" / "Labels").mkdir(parents=True)
    inst = np.zeros((40, 40), np.int32)
    inst[5:15, 5:15] = 4      # a 10 x 10 square (ids need not be 1..N)
    disc(inst, 28, 26, 5, 7, 9)
    Image.fromarray(rgb(40, 40)).save(root / "lizard" / "Lizard_Images1" / "consep_1.png")
    savemat(root / "lizard" / "Lizard_Labels" / "Labels" / "consep_1.mat",
            {"inst_map": inst, "id": np.array([[4], [9]]), "class": np.array([[2], [3]])})
    return root / "lizard"


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="ircr")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = args.func(args)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("priorsrc")
    return {"monusac": monusac(root), "consep": consep(root), "pannuke": pannuke(root),
            "lizard": lizard(root)}


def test_lizard_reader(sources: dict[str, Path]) -> None:
    (s,) = list(open_dataset("lizard", sources["lizard"]))
    assert s.name == "consep_1" and s.meta["mpp"] == 0.5 and s.inst is not None
    assert s.meta["inst_class"] == {4: 2, 9: 3} and (s.inst == 4).sum() == 100
    Image.fromarray(rgb(8, 8)).save(sources["lizard"] / "Lizard_Images1" / "x.png")
    try:
        with pytest.raises(IrcrError, match=r"x\.png: no label file x\.mat") as e:
            open_dataset("lizard", sources["lizard"])
        assert "\n" not in str(e.value)
        assert len(list(open_dataset("lizard", sources["lizard"], missing="skip"))) == 1
    finally:
        (sources["lizard"] / "Lizard_Images1" / "x.png").unlink()
    with pytest.raises(IrcrError, match="every image is excluded"):
        open_dataset("lizard", sources["lizard"], exclude="crag, consep")
    assert len(list(open_dataset("lizard", sources["lizard"], exclude="cons,crag"))) == 1


def test_one_prior_from_the_four_paper_sources(sources: dict[str, Path],
                                               tmp_path: Path) -> None:
    specs = [f"{k}:{v}" for k, v in sources.items()]
    out = tmp_path / "paper_sources.npz"
    rc, text = run(["prior", "build", *specs, "--mpp", "0.25", "-o", str(out)])
    assert rc == 0 and "5 images" in text
    meta = MorphPrior.load(out).meta
    assert meta["sources"] == ["monusac", "consep", "pannuke", "lizard"]
    # 2 (MoNuSAC) + 2 (CoNSeP) + 2 x 2 (PanNuke) + 2 (Lizard, resampled to 0.25 µm/px)
    assert meta["n_nuclei"] == 10 and meta["nuclei_per_mpp"] == {"0.25": 10}
    assert meta["resampled_to_mpp"] == 0.25 and meta["datasets"] == specs
    rc, _ = run(["prior", "build", *specs, "-o", str(tmp_path / "native.npz")])
    native = MorphPrior.load(tmp_path / "native.npz").meta
    assert native["nuclei_per_mpp"] == {"0.25": 8, "0.5": 2}


def test_mpp_resampling_is_exact_for_a_2x_change(sources: dict[str, Path]) -> None:
    (s,) = list(at_mpp(open_dataset("lizard", sources["lizard"]), 0.25))
    assert s.image.shape == (80, 80, 3) and s.inst is not None
    assert (s.inst == 4).sum() == 400  # the 10 x 10 square at twice the resolution
    assert s.meta["mpp"] == 0.25 and s.meta["native_mpp"] == 0.5
    (same,) = list(at_mpp(open_dataset("lizard", sources["lizard"]), 0.51))  # within 5 %
    assert same.image.shape == (40, 40, 3)
    with pytest.raises(IrcrError, match="--mpp"):
        run(["prior", "build", f"lizard:{sources['lizard']}", "--mpp", "-1", "-o", "x.npz"])


def test_unknown_pixel_size_with_mpp_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(rgb(40, 40)).save(tmp_path / "images" / "a.png")
    np.save(tmp_path / "labels" / "a.npy", two_nuclei(40, 40, 0))
    with pytest.raises(IrcrError, match="pixel size unknown") as e:
        run(["prior", "build", f"folder:{tmp_path}", "--mpp", "0.25", "-o",
             str(tmp_path / "p.npz")])
    assert "\n" not in str(e.value)
