"""Model-family plug-ins (inference/family.py): a second family, written only against the
documented contract, is saved, loaded, evaluated and used by ``ircr segment`` on tiles and
slides; folders without ``family:`` stay HoVer-Net."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from scipy import ndimage
from torch import nn

import ircr
from ircr.data.prepare import prepare_samples
from ircr.data.sample import Sample
from ircr.engine.packaged import resolve_model
from ircr.errors import IrcrError
from ircr.inference.evaluate import evaluate_folder
from ircr.inference.family import (
    FAMILIES,
    InferenceSetting,
    ModelFamily,
    Prediction,
    family_names,
    get_family,
    register_family,
)
from ircr.inference.model_folder import load_model_folder, save_model_folder
from test_wsi import write_pyramid

DARK, LIGHT = 60, 230


@dataclass
class DarkConfig:
    level: float = 150.5  # grey level below which a pixel is nucleus


@dataclass
class DarkPost:
    threshold: float = 0.5


class DarkNet(nn.Module):
    """1x1 convolution: logit = (level - mean grey) / 5."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(-1.0 / 15.0)
            self.conv.bias.fill_(level / 5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DarkFamily(ModelFamily):
    """Foreground = dark pixels, instances = 8-connected components."""

    name = "dark-test"
    config_class = DarkConfig
    postproc_class = DarkPost

    def build(self, cfg: Any) -> nn.Module:
        return DarkNet(cfg.level)

    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            prob = torch.sigmoid(model(x.to(setting.device or "cpu")))[0, 0]
        return Prediction(prob=prob.cpu().numpy().astype(np.float32))

    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        params = self.parse_postproc(postproc)
        lab, _ = ndimage.label(pred.prob > params.threshold, structure=np.ones((3, 3)))
        return lab.astype(np.int32)


@pytest.fixture
def family() -> Iterator[DarkFamily]:
    register_family(DarkFamily)
    yield FAMILIES["dark-test"]  # type: ignore[misc]
    FAMILIES.pop("dark-test")


def discs(shape: tuple[int, int], seed: int, n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Light image with dark, well separated discs; returns (image, instance map)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(400):
        r = int(rng.integers(4, 9))
        cy, cx = int(rng.integers(r, shape[0] - r)), int(rng.integers(r, shape[1] - r))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if inst[ndimage.binary_dilation(disc, iterations=3)].any():
            continue
        k += 1
        inst[disc] = k
        if k == n:
            break
    image = np.full((*shape, 3), LIGHT, np.uint8)
    image[inst > 0] = DARK
    return image, inst


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal foreground and a one-to-one id correspondence."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


@pytest.fixture
def folder(family: DarkFamily, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    save_model_folder(out, DarkNet(150.5), DarkConfig(), {"threshold": 0.5}, mpp=0.25,
                      patch_size=64, family="dark-test",
                      inference={"window": 64, "overlap": 16, "batch_size": 2})
    return out


def test_registry_and_unknown_family(family: DarkFamily, tmp_path: Path) -> None:
    assert {"hovernet", "dark-test"} <= set(family_names())
    assert get_family().name == "hovernet" and get_family("dark-test") is family
    with pytest.raises(IrcrError, match="unknown model family 'maskrcnn-x'"):
        get_family("maskrcnn-x")
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Other", (DarkFamily,), {}))


def test_folder_records_and_loads_the_family(folder: Path) -> None:
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert meta["family"] == "dark-test" and meta["model"] == {"level": 150.5}
    loaded = load_model_folder(folder)
    assert loaded.family.name == "dark-test" and isinstance(loaded.model, DarkNet)
    assert float(loaded.model.conv.bias.detach()) == pytest.approx(150.5 / 5)
    meta["family"] = "nope"
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(IrcrError, match=r"model\.yaml: family: unknown model family 'nope'"):
        load_model_folder(folder)


def test_folders_without_family_are_hovernet(tmp_path: Path) -> None:
    """A folder written before families existed (no ``family`` key) loads as HoVer-Net."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(resolve_model(None), old)
    meta = yaml.safe_load((old / "model.yaml").read_text(encoding="utf-8"))
    meta.pop("family", None)
    (old / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    assert load_model_folder(old).family.name == "hovernet"


def test_segment_tile_and_slide_go_through_the_family(folder: Path, tmp_path: Path) -> None:
    image, truth = discs((300, 420), seed=1)
    seg = ircr.load_model(folder, device="cpu", tile=128, margin=32)
    assert seg.family.name == "dark-test"
    res = seg.segment(image, mpp=0.25)
    assert same_partition(truth, res.inst) and len(res) == truth.max()
    assert np.all(res.table["np_prob_mean"] > 0.9)
    path = tmp_path / "slide.tif"
    big, big_truth = discs((640, 512), seed=2, n=60)
    write_pyramid(path, big, 0.25, levels=1)
    summary = seg.process(path, tmp_path / "out", tissue=False)
    labels = tifffile.imread(tmp_path / "out" / "slide_labels.tif")
    assert summary["kind"] == "slide" and summary["n_nuclei"] == big_truth.max()
    assert same_partition(big_truth, labels)


def test_evaluate_goes_through_the_family(folder: Path, tmp_path: Path) -> None:
    samples = []
    for i in range(2):
        image, inst = discs((160, 192), seed=10 + i)
        samples.append(Sample(image, inst, {"name": f"d{i}", "source": "discs", "mpp": 0.25,
                                            "path": f"d{i}.png"}))
    ds = tmp_path / "ds"
    prepare_samples(samples, ds, source="discs", patch=64, val_fraction=0.5)
    res = evaluate_folder(folder, ds, split="all", device="cpu", progress=False)
    assert [r["n_pred"] for r in res.per_image] == [int(s.inst.max()) for s in samples]
    assert res.mean["aji"] == 1.0 and res.mean["dice"] == 1.0
