"""One inference setting per model folder, shared by evaluate, segment and the API (issue 14.2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import ircr
import ircr.inference.evaluate as ev
import ircr.inference.predict as infer
from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.inference.model_folder import INFERENCE_DEFAULTS, load_model_folder, save_model_folder
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams

SETTING = {"window": 64, "overlap": 16, "batch_size": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    out = tmp_path_factory.mktemp("m") / "model"
    save_model_folder(out, build_model(cfg, load_pretrained=False), cfg,
                      dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=128,
                      inference=SETTING)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 96}, patch=64)
    return out


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(window, overlap, batch_size) of every sliding-window call, from any caller."""
    seen: list[tuple[int, int, int]] = []
    real = infer.predict_maps

    def spy(model: Any, image: np.ndarray, window: int = 256, overlap: int = 64,
            batch_size: int = 8, **kw: Any) -> Any:
        seen.append((window, overlap, batch_size))
        return real(model, image, window=window, overlap=overlap, batch_size=batch_size, **kw)

    monkeypatch.setattr(infer, "predict_maps", spy)
    monkeypatch.setattr(ev, "predict_maps", spy)
    return seen


def test_folder_stores_and_reloads_the_setting(folder: Path) -> None:
    assert yaml.safe_load((folder / "model.yaml").read_text())["inference"] == SETTING
    assert load_model_folder(folder).inference == SETTING
    seg = ircr.load_model(folder, device="cpu")
    assert (seg.window, seg.overlap, seg.batch_size) == (64, 16, 2)
    seg = ircr.load_model(folder, device="cpu", window=96, batch_size=4)
    assert (seg.window, seg.overlap, seg.batch_size) == (96, 16, 4)


def test_evaluate_segment_and_api_use_the_same_setting(folder: Path, dataset: Path,
                                                        calls: list, capsys) -> None:
    res = ev.evaluate_folder(folder, dataset, split="all", device="cpu", progress=False)
    assert res.info["inference"] == SETTING
    image = np.asarray(ircr.inference.evaluate.PreparedDataset(dataset).load_image(0))
    ircr.load_model(folder, device="cpu").segment(image, mpp=0.25)
    assert set(calls) == {(64, 16, 2)} and len(calls) == 3
    calls.clear()
    assert main(["evaluate", str(folder), str(dataset), "--split", "all", "--device", "cpu",
                 "--no-progress", "--window", "32", "--overlap", "8"]) == 0
    assert "window 32 / overlap 8 px, batch size 2" in capsys.readouterr().out
    assert set(calls) == {(32, 8, 2)}


def test_old_folder_without_setting_loads_with_documented_default(folder: Path,
                                                                  tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = yaml.safe_load((old / "model.yaml").read_text())
    del meta["inference"]
    (old / "model.yaml").write_text(yaml.safe_dump(meta))
    assert load_model_folder(old).inference == INFERENCE_DEFAULTS == {
        "window": 256, "overlap": 64, "batch_size": 8}
    seg = ircr.load_model(old, device="cpu")
    assert (seg.window, seg.overlap, seg.batch_size) == (256, 64, 8)


@pytest.mark.parametrize("bad, match", [({"window": 60}, "window: must be a multiple of 8"),
                                        ({"overlap": 64}, "overlap: must be in"),
                                        ({"stride": 2}, "unknown key 'stride'"),
                                        ("big", "'inference' must be a mapping")])
def test_bad_setting_in_model_yaml(folder: Path, tmp_path: Path, bad: Any, match: str) -> None:
    import shutil

    f = tmp_path / "f"
    shutil.copytree(folder, f)
    meta = yaml.safe_load((f / "model.yaml").read_text())
    meta["inference"] = dict(meta["inference"], **bad) if isinstance(bad, dict) else bad
    (f / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(IrcrError, match=match) as err:
        load_model_folder(f)
    assert "model.yaml" in str(err.value)


def test_override_errors_name_the_option(folder: Path) -> None:
    with pytest.raises(IrcrError, match="^--overlap: must be in \\[0, window=64\\)"):
        ircr.load_model(folder, device="cpu", overlap=64)
    with pytest.raises(IrcrError, match="^--window: must be a multiple of 8"):
        ircr.load_model(folder, device="cpu", window=100)
