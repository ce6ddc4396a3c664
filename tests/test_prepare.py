"""Prepared datasets: patch grid, splits, on-disk layout, reading back (synthetic + MoNuSeg)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ircr.data.prepare import add_split, prepare_dataset, prepare_samples
from ircr.data.sample import Sample
from ircr.data.splits import grid_positions, make_split, parse_ratio, patch_grid, split_name
from ircr.data.store import PreparedDataset, reflect_index
from ircr.data.synthetic import iter_synthetic
from ircr.errors import IrcrError

# ----------------------------------------------------------------------------- grid


def test_grid_positions_cover_every_pixel() -> None:
    assert grid_positions(1000, 256, 256) == [0, 256, 512, 768]
    assert grid_positions(256, 256, 256) == [0]
    assert grid_positions(257, 256, 256) == [0, 256]
    assert grid_positions(100, 256, 256) == [0]
    assert grid_positions(1000, 256, 128) == [0, 128, 256, 384, 512, 640, 768]
    ps = patch_grid(3, 1000, 600, 256, 256)
    assert len(ps) == 4 * 3
    assert ps[-1] == (3, 768, 512, 232, 88)
    with pytest.raises(IrcrError, match="stride"):
        grid_positions(100, 64, 65)


# ----------------------------------------------------------------------------- ratios


@pytest.mark.parametrize(
    ("text", "value"),
    [("1/32", Fraction(1, 32)), ("1/16", Fraction(1, 16)), ("1/8", Fraction(1, 8)),
     ("1/4", Fraction(1, 4)), ("1", Fraction(1)), ("3/10", Fraction(3, 10)),
     ("0.125", Fraction(1, 8)), (0.25, Fraction(1, 4)), ("1-8", Fraction(1, 8)), (1, Fraction(1))],
)
def test_parse_ratio(text, value) -> None:
    assert parse_ratio(text) == value


@pytest.mark.parametrize("bad", ["0", "3/2", "-1/8", "abc", "1/0", "1.5", "", "1/8/2", True])
def test_parse_ratio_rejects(bad) -> None:
    with pytest.raises(IrcrError, match="--ratio"):
        parse_ratio(bad)


def test_split_names() -> None:
    assert split_name(Fraction(1, 8), 0) == "ratio_1-8_seed0"
    assert split_name(Fraction(1), 2) == "ratio_1_seed2"
    assert split_name(Fraction(1, 4), 1, 0.2) == "ratio_1-4_seed1_val0.2"


# ----------------------------------------------------------------------------- splits


def _grid(n_images: int, per_side: int = 4):
    return [p for i in range(n_images) for p in patch_grid(i, per_side * 64, per_side * 64, 64, 64)]


def test_split_by_image_counts_and_determinism() -> None:
    patches = _grid(30)  # 16 patches per image
    a = make_split([True] * 30, patches, "1/8", seed=0)
    b = make_split([True] * 30, patches, "1/8", seed=0)
    assert a == b
    assert len(a.val_images) == 3 and len(a.train_images) == 27
    assert not set(a.val_images) & set(a.train_images)
    train_patches = [p for p in patches if p.image in set(a.train_images)]
    assert len(train_patches) == 27 * 16
    assert len(a.labelled_patches) == round(27 * 16 / 8) == 54
    assert sorted(a.labelled_patches + a.unlabelled_patches) == sorted(train_patches)
    assert all(p.image not in a.val_images for p in a.labelled_patches)
    c = make_split([True] * 30, patches, "1/8", seed=1)
    assert c.labelled_patches != a.labelled_patches


def test_split_nested_across_ratios_and_minimums() -> None:
    patches = _grid(10)
    small = make_split([True] * 10, patches, "1/32", seed=4)
    big = make_split([True] * 10, patches, "1/4", seed=4)
    assert small.val_images == big.val_images
    assert set(small.labelled_patches) <= set(big.labelled_patches)
    # at least one labelled patch, at least one val image when >= 2 images
    tiny = make_split([True, True], _grid(2, 1), "1/32", seed=0)
    assert len(tiny.val_images) == 1 and len(tiny.labelled_patches) == 1
    one = make_split([True], _grid(1, 1), "1/8", seed=0)
    assert one.val_images == [] and len(one.labelled_patches) == 1
    full = make_split([True] * 10, patches, "1", seed=0)
    assert full.unlabelled_patches == []


def test_unlabelled_images_are_train_only() -> None:
    patches = _grid(6, 2)
    plan = make_split([True, True, True, False, False, True], patches, "1/2", seed=0)
    assert not {3, 4} & set(plan.val_images)
    assert all(p.image not in (3, 4) for p in plan.labelled_patches)
    assert {p.image for p in plan.unlabelled_patches} >= {3, 4}


# ----------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory) -> PreparedDataset:
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 300},
                    ratio="1/4", seed=3)
    return PreparedDataset(out)


def test_prepared_layout_roundtrip(synth_ds: PreparedDataset) -> None:
    ds = synth_ds
    assert len(ds) == 4 and ds.names == [f"synth_{i:03d}" for i in range(4)]
    assert len(ds.patches) == 4 * 4  # 300 px -> 2x2 patches of 256 with reflect padding
    assert ds.patches[3] == (0, 256, 256, 44, 44)
    originals = list(iter_synthetic(n_images=4, size=300))
    for i, s in enumerate(originals):
        np.testing.assert_array_equal(ds.load_image(i), s.image)
        np.testing.assert_array_equal(ds.load_inst(i), s.inst)
        assert ds.load_inst(i).dtype == np.int32
        assert ds.images[i]["nuclei"] == len(np.unique(s.inst)) - 1
        assert ds.images[i]["mpp"] == 0.25 and ds.images[i]["height"] == 300
    assert ds.load_image(0) is ds.load_image(0)  # cached
    assert (ds.path / "labels" / "synth_000.png").is_file()


def test_read_window_inside_and_reflect(synth_ds: PreparedDataset) -> None:
    ds = synth_ds
    img, inst = ds.load_image(1), ds.load_inst(1)
    w_img, w_inst = ds.read_window(1, 10, 20, 64, 80)
    np.testing.assert_array_equal(w_img, img[10:74, 20:100])
    np.testing.assert_array_equal(w_inst, inst[10:74, 20:100])
    # a window sticking out on all sides: pixels equal np.pad(mode="reflect")
    p_img, p_inst = ds.read_window(1, -30, -40, 360, 380)
    ref = np.pad(img, ((30, 30), (40, 40), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(p_img, ref)
    np.testing.assert_array_equal(p_inst[30:330, 40:340], inst)
    ref_inst = np.pad(inst, ((30, 30), (40, 40)), mode="reflect")
    assert ((p_inst > 0) == (ref_inst > 0)).all()
    # mirrored copies of a nucleus get their own id
    top = p_inst[:30][p_inst[:30] > 0]
    assert top.size and not set(np.unique(top)) & set(np.unique(inst))
    assert p_inst.dtype == np.int32
    # the padded patch of the last row/column
    patch = ds.patches[3]
    img = ds.load_image(0)
    pi, pm = ds.read_patch(patch)
    assert pi.shape == (256, 256, 3) and pm.shape == (256, 256)
    np.testing.assert_array_equal(pi[:44, :44], img[256:300, 256:300])
    np.testing.assert_array_equal(pi[44, :44], img[298, 256:300])  # reflect, no edge repeat
    assert reflect_index(-3, 8, 3).tolist() == [1, 2, 1, 0, 1, 2, 1, 0]


def test_split_file_roundtrip_and_extra_splits(synth_ds: PreparedDataset) -> None:
    ds = synth_ds
    sp = ds.load_split("ratio_1-4_seed3")
    assert sp.ratio == "1/4" and sp.seed == 3 and sp.name == "ratio_1-4_seed3"
    assert len(sp.val_images) == 1 and len(sp.train_images) == 3
    assert len(sp.labelled_patches) == 3  # round(12 / 4)
    assert len(sp.unlabelled_patches) == 9
    assert all(p in ds.patches for p in sp.labelled_patches)
    # same seed and ratio -> byte-identical split file
    first = (ds.path / "splits" / "ratio_1-4_seed3.yaml").read_text()
    again = add_split(ds.path, "1/4", seed=3)
    assert again.read_text() == first
    other = add_split(ds.path, "1/2", seed=0)
    assert other.name == "ratio_1-2_seed0.yaml"
    assert PreparedDataset(ds.path).split_names() == ["ratio_1-2_seed0", "ratio_1-4_seed3"]
    assert ds.load_split(other).ratio == "1/2"
    with pytest.raises(IrcrError, match="split not found"):
        ds.load_split("ratio_1-64_seed0")


def test_unlabelled_samples_and_npy_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    big = np.zeros((70, 90), np.int32)
    big[10:20, 10:20] = 70000  # id >= 65536 -> stored as .npy
    samples = [
        Sample(img, big, {"name": "a b/c", "source": "t", "mpp": 0.5}),
        Sample(img, None, {"name": "u", "source": "t", "mpp": None}),
        Sample(img, (big > 0).astype(np.int32), {"name": "x", "source": "t", "mpp": None}),
    ]
    prepare_samples(samples, tmp_path / "d", source="t", patch=32)
    ds = PreparedDataset(tmp_path / "d")
    assert ds.images[0]["file"] == "a_b_c" and ds.images[0]["labels"].endswith(".npy")
    np.testing.assert_array_equal(ds.load_inst(0), big)
    with pytest.raises(IrcrError, match="has no instance labels"):
        ds.load_inst(1)
    assert ds.read_window(1, -5, -5, 20, 20)[1] is None
    sp = ds.load_split(ds.split_names()[0])
    assert 1 not in sp.val_images and 1 in sp.train_images


def test_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 64}, patch=32)
    with pytest.raises(IrcrError, match="already exists"):
        prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 64})
    prepare_dataset("synthetic", None, out, options={"n_images": 3, "size": 64}, patch=32,
                    overwrite=True)
    assert len(PreparedDataset(out)) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(IrcrError, match="not empty"):
        prepare_dataset("synthetic", None, foreign, options={"n_images": 1}, overwrite=True)


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    def broken():
        yield from iter_synthetic(n_images=1, size=64)
        raise IrcrError("reader: image 2 is corrupt")

    with pytest.raises(IrcrError, match="image 2 is corrupt"):
        prepare_samples(broken(), tmp_path / "out", source="t", patch=32)
    assert list(tmp_path.iterdir()) == []
    same = list(iter_synthetic(n_images=1, size=64)) * 2
    with pytest.raises(IrcrError, match="duplicate image name 'synth_000'"):
        prepare_samples(same, tmp_path / "out", source="t", patch=32)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_dataset_files(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="folder not found"):
        PreparedDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IrcrError, match=r"dataset.json: not found"):
        PreparedDataset(tmp_path / "empty")
    out = tmp_path / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 64}, patch=32)
    (out / "images" / "synth_001.png").write_bytes(b"not a png")
    ds = PreparedDataset(out)
    ds.load_image(0)
    with pytest.raises(IrcrError, match=r"synth_001.png: cannot decode"):
        ds.load_image(1)
    (out / "labels" / "synth_000.png").unlink()
    with pytest.raises(IrcrError, match=r"synth_000.png: file of the prepared dataset is missing"):
        ds.load_inst(0)
    (out / "patches.csv").write_text("index,image\n0,zz\n")
    with pytest.raises(IrcrError, match="patches.csv: corrupt"):
        PreparedDataset(out)
    (out / "dataset.json").write_text("{broken")
    with pytest.raises(IrcrError, match="dataset.json: corrupt JSON"):
        PreparedDataset(out)
    (out / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(IrcrError, match="not an ircr prepared dataset"):
        PreparedDataset(out)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="unknown dataset 'nucleiland'"):
        prepare_dataset("nucleiland", tmp_path, tmp_path / "o")
    with pytest.raises(IrcrError, match="--ratio"):
        prepare_dataset("synthetic", None, tmp_path / "o", ratio="2")
    with pytest.raises(IrcrError, match="--stride"):
        prepare_dataset("synthetic", None, tmp_path / "o", stride=300)
    with pytest.raises(IrcrError, match="unknown synthetic option 'colour'"):
        prepare_dataset("synthetic", None, tmp_path / "o", options={"colour": 1})


# ----------------------------------------------------------------------------- MoNuSeg


def test_prepare_monuseg_all_30(monuseg_root: Path, tmp_path: Path) -> None:
    """All 30 tiles (1000x1000): 16 patches per tile, 16,958 nuclei, split by image."""
    res = prepare_dataset("monuseg", monuseg_root, tmp_path / "monuseg", ratio="1/8", seed=0)
    assert res.n_images == 30 and res.n_patches == 30 * 16
    assert res.n_nuclei == 16958  # SOURCES.md
    ds = PreparedDataset(tmp_path / "monuseg")
    counts = {}
    for p in ds.patches:
        counts[p.image] = counts.get(p.image, 0) + 1
        assert (p.h, p.w) == (232 if p.y0 == 768 else 256, 232 if p.x0 == 768 else 256)
    assert set(counts.values()) == {16}
    sp = ds.load_split("ratio_1-8_seed0")
    assert len(sp.val_images) == 3 and len(sp.train_images) == 27
    val = set(sp.val_images)
    assert all(p.image not in val for p in sp.labelled_patches + sp.unlabelled_patches)
    assert len(sp.labelled_patches) == 54 and len(sp.unlabelled_patches) == 27 * 16 - 54
    name = "TCGA-HE-7130-01Z-00-DX1"
    i = ds.index_of(name)
    assert ds.images[i]["nuclei"] == 1862  # SOURCES.md per-image count
    assert ds.load_image(i).shape == (1000, 1000, 3)
    # the last patch of a row is reflect-padded from column 1000 on
    img, inst = ds.read_patch(ds.patches[i * 16 + 3])
    np.testing.assert_array_equal(img[:, 232], ds.load_image(i)[0:256, 998])
