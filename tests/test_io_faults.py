"""Bad inputs and hostile data for the file layer: names that try to leave their folder,
non-UTF-8 configs, impossible pixel sizes, decompression bombs, corrupt priors, write errors
of evaluate and data prepare, and the atomic-write helpers themselves."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from fault_helpers import file_size_limit
from ircr.cli.main import main
from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset, prepare_samples
from ircr.data.sample import Sample
from ircr.data.synthetic import make_tile
from ircr.engine.segmenter import load_model
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder, save_model_folder
from ircr.io.atomic import atomic_write_text, clean_stale_temps
from ircr.io.image import read_image, read_label_map
from ircr.io.paths import child_path, safe_name
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams
from ircr.ssl.prior import default_prior_path

EVIL = ["../../../../escaped", "..\\..\\escaped_win", "/tmp/escaped_abs", "..", ".hidden",
        "a/../../escaped_mid"]


def tiny_folder(path: Path, prior: Path | None = None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    return save_model_folder(path, build_model(cfg, load_pretrained=False), cfg,
                             dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64,
                             prior_file=prior)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_folder(tmp_path_factory.mktemp("m") / "model")


# ---- 1. path traversal ----------------------------------------------------------------------
def test_safe_name_and_child_path() -> None:
    assert [safe_name(n) for n in EVIL] == ["escaped", "escaped_win", "tmp_escaped_abs",
                                           "image", "hidden", "a_escaped_mid"]
    for name in ["../x", "a/b", "..", "", "/abs", "a\\b", "x\0y"]:
        with pytest.raises(IrcrError, match="would leave the output folder"):
            child_path(Path("/out"), name)
    assert child_path(Path("/out"), "ok.png") == Path("/out/ok.png")


def evil_dataset(tmp: Path) -> Path:
    ds = tmp / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": len(EVIL), "size": 64},
                    patch=64, ratio="1", val_fraction=0.5)
    index = json.loads((ds / "dataset.json").read_text())
    for entry, name in zip(index["images"], EVIL):
        entry["name"] = name  # a hand-edited (or hostile) dataset.json
    (ds / "dataset.json").write_text(json.dumps(index))
    return ds


def test_evaluate_overlays_stay_in_their_folder(model_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "a" / "b" / "c" / "d"
    work.mkdir(parents=True)
    ds = evil_dataset(work)
    out = work / "eval"
    Path("/tmp/escaped_abs.png").unlink(missing_ok=True)  # left by a run of unfixed code
    rc = main(["evaluate", str(model_dir), str(ds), "--split", "all", "--out", str(out),
               "--overlays", "--device", "cpu", "--window", "64", "--overlap", "16",
               "--no-progress"])
    assert rc == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")
                     if "ds" not in p.parts)
    assert written == sorted(f"a/b/c/d/eval/overlays/{n}.png" for n in
                             ["escaped", "escaped_win", "tmp_escaped_abs", "image", "hidden",
                              "a_escaped_mid"])
    assert not Path("/tmp/escaped_abs.png").exists()


def test_prepared_file_names_stay_in_their_folder(tmp_path: Path) -> None:
    img, inst = make_tile(np.random.default_rng(0), 64)
    samples = [Sample(img, inst, {"name": n}) for n in EVIL]
    out = tmp_path / "x" / "y" / "prep"
    prepare_samples(samples, out, source="test", patch=64)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert outside == []
    index = json.loads((out / "dataset.json").read_text())
    assert [e["name"] for e in index["images"]] == EVIL  # names kept, files sanitised
    assert all("/" not in e["file"] and not e["file"].startswith(".") for e in index["images"])


# ---- 6. write errors -------------------------------------------------------------------------
def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("ircr: error: ") and not any("Traceback" in e for e in err)
    return err[-1]


def test_prepare_write_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    base = ["data", "prepare", "synthetic", "--option", "n_images=2", "--option", "size=64",
            "--patch", "64", "-o"]
    assert main([*base, str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: output exists and is not a folder" in last_error(capsys)
    assert main([*base, str(tmp_path / "file" / "ds")]) == 2
    assert f"{tmp_path / 'file'}: parent of the output folder is an existing file" \
        in last_error(capsys)
    with file_size_limit(4000):  # a 64 px PNG fits, the 16-bit label PNG does not
        assert main([*base, str(tmp_path / "full")]) == 2
    line = last_error(capsys)
    assert "cannot write (File too large)" in line and str(tmp_path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-made


def test_evaluate_write_errors(model_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 2, "size": 64}, patch=64)
    (tmp_path / "file").write_text("x")
    base = ["evaluate", str(model_dir), str(ds), "--split", "all", "--device", "cpu",
            "--window", "64", "--overlap", "16", "--no-progress", "--out"]
    assert main([*base, str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: output folder is an existing file" in last_error(capsys)
    with file_size_limit(600):  # per_image.csv fits, metrics.json does not
        assert main([*base, str(tmp_path / "ev")]) == 2
    assert f"{tmp_path / 'ev' / 'metrics.json'}: cannot write (File too large)" \
        in last_error(capsys)
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["per_image.csv"]


def test_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with file_size_limit(10):
        with pytest.raises(IrcrError, match=r"summary.json: cannot write \(File too large\)"):
            atomic_write_text(target, "x" * 100)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["summary.json"]
    assert clean_stale_temps(tmp_path) == []


# ---- 7, 8. configs ----------------------------------------------------------------------------
def test_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("# réglages\ntrain:\n  epochs: 1\n".encode("latin-1"))
    with pytest.raises(IrcrError, match=r"latin1.yaml: not a UTF-8 text file \(byte 0xe9 at "
                                        r"offset 3\)"):
        read_yaml(cfg)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "latin1.yaml: not a UTF-8 text file" in last_error(capsys)


@pytest.mark.parametrize("mpp", [".nan", ".inf", "-.inf", "1.0e+9", "0.0", "true"])
def test_model_yaml_mpp_must_be_plausible(model_dir: Path, tmp_path: Path, mpp: str) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    meta["mpp"] = yaml.safe_load(mpp)
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(IrcrError, match=r"model.yaml: 'mpp' must be a number of microns per "
                                        r"pixel in \[0.05, 50\] or null"):
        load_model_folder(folder)


# ---- 13. decompression bombs ---------------------------------------------------------------
def test_tiff_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """14000 x 14000 px (196 Mpx) of zeros is a ~0.5 MB file: refused from its header by the
    default limit, which is Pillow's own (2 x Image.MAX_IMAGE_PIXELS = 179 Mpx)."""
    path = tmp_path / "bomb.tif"
    n, t = 14000, 512
    tiles = (np.zeros((t, t), np.uint8) for _ in range(((n + t - 1) // t) ** 2))
    tifffile.imwrite(path, tiles, shape=(n, n), dtype=np.uint8, tile=(t, t),
                     compression="zlib")
    assert path.stat().st_size < 2_000_000
    for reader in (read_image, read_label_map):
        with pytest.raises(IrcrError, match=r"bomb.tif: image of 14000x14000 px \(196 Mpx\) is "
                                            r"over the 179 Mpx limit .*IRCR_MAX_IMAGE_PIXELS"):
            reader(path)


def test_pixel_limit_is_the_same_for_tiff_and_png(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = make_tile(np.random.default_rng(1), (40, 50))
    tifffile.imwrite(tmp_path / "a.tif", img)
    Image.fromarray(img).save(tmp_path / "a.png")
    monkeypatch.setenv("IRCR_MAX_IMAGE_PIXELS", "1999")
    for name in ("a.tif", "a.png"):
        with pytest.raises(IrcrError, match=rf"{name}: image of 50x40 px .* over the 0 Mpx"):
            read_image(tmp_path / name)
    monkeypatch.setenv("IRCR_MAX_IMAGE_PIXELS", "2000")
    for name in ("a.tif", "a.png"):
        assert np.array_equal(read_image(tmp_path / name), img)
    monkeypatch.setenv("IRCR_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(IrcrError, match="IRCR_MAX_IMAGE_PIXELS: must be a positive number"):
        read_image(tmp_path / "a.png")


# ---- 14. corrupt prior -----------------------------------------------------------------------
def test_corrupt_model_prior_is_an_error(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "m", prior=default_prior_path())
    assert load_model(folder, device="cpu").prior is not None
    (folder / "prior.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(IrcrError, match=r"prior.npz: not a valid prior .npz file .*pass "
                                        r"--prior to use another prior"):
        load_model(folder, device="cpu")
    seg = load_model(folder, device="cpu", prior=default_prior_path())  # the way out
    assert seg.prior is not None
