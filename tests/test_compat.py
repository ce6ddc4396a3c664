"""ircr.compat: the private third-party paths are taken with the installed versions and equal
their public fallbacks on a real MoNuSeg tile; every fallback works on its own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import regionprops
from torch import nn

from ircr import compat
from ircr.data.targets import hover_targets
from ircr.features import nucleus_features
from ircr.models import ModelConfig, build_model
from ircr.postproc import wbis, wbis_reference

# The versions this module was checked against. A new version fails here on purpose: run this
# file, then update the pin (a private path that went away only costs speed: the probes fall
# back to the public APIs, which the fallback tests below keep working).
PINNED = {"skimage": ("0.26",), "torch": ("2.14",)}


@pytest.fixture(autouse=True)
def _fresh_probes() -> Iterator[None]:
    """Probes are cached per process: recompute them around each test."""
    for f in (compat.skimage_raw_watershed, compat.watershed_seeds_by_value,
              compat.perimeter_weights_match, compat.batchnorm_base):
        f.cache_clear()
    yield
    for f in (compat.skimage_raw_watershed, compat.watershed_seeds_by_value,
              compat.perimeter_weights_match, compat.batchnorm_base):
        f.cache_clear()


@pytest.fixture(scope="module")
def tile(monuseg_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real MoNuSeg tile's ground truth and a blurred, noisy NP/HV prediction of it."""
    gt = np.array(Image.open(sorted((monuseg_root / "labels_inst").glob("*.png"))[0]))
    gt = gt.astype(np.int32)[:400, :400]
    npt, hv = hover_targets(gt, crop=None, min_px=30)
    rng = np.random.default_rng(0)
    prob = np.clip(ndi.gaussian_filter(npt.astype(np.float32), 1.5)
                   + rng.normal(0, 0.05, npt.shape), 0, 1).astype(np.float32)
    hv = (ndi.gaussian_filter(hv, (0, 1.0, 1.0)) + rng.normal(0, 0.05, hv.shape))
    return gt, prob, hv.astype(np.float32)


def test_installed_versions_take_the_private_paths() -> None:
    assert skimage.__version__.startswith(PINNED["skimage"]), skimage.__version__
    assert torch.__version__.startswith(PINNED["torch"]), torch.__version__
    assert compat.skimage_raw_watershed() is not None
    assert compat.watershed_seeds_by_value() is True
    assert compat.perimeter_weights_match() is True
    from torch.nn.modules.batchnorm import _BatchNorm

    assert compat.batchnorm_base() == (_BatchNorm,)


def test_private_watershed_equals_public_on_a_real_tile(
        tile: tuple[np.ndarray, np.ndarray, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, prob, hv = tile
    private = wbis(prob, hv)
    monkeypatch.setattr(compat, "skimage_raw_watershed", lambda: None)
    public = wbis(prob, hv)
    monkeypatch.setattr(compat, "watershed_seeds_by_value", lambda: False)
    plain = wbis(prob, hv)
    assert private.max() > 50  # a real map with many nuclei
    assert np.array_equal(private, public) and np.array_equal(public, plain)
    assert np.array_equal(private, wbis_reference(prob, hv))


def test_copied_perimeter_table_equals_skimage_on_a_real_tile(
        tile: tuple[np.ndarray, np.ndarray, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    gt = tile[0]
    image = np.zeros((*gt.shape, 3), np.uint8)
    fast = nucleus_features(image, gt)["perimeter"]
    monkeypatch.setattr(compat, "perimeter_weights_match", lambda: False)
    public = nucleus_features(image, gt)["perimeter"]
    by_regionprops = np.array([r.perimeter for r in regionprops(gt)])
    assert fast.size > 50
    np.testing.assert_allclose(fast, public, rtol=1e-12)
    np.testing.assert_allclose(public, by_regionprops, rtol=1e-12)


def test_batchnorm_test_private_equals_public() -> None:
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))
    mods = [*model.modules(), nn.BatchNorm1d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3)]
    public = compat._public_batchnorm_types()
    got = [compat.is_batchnorm(m) for m in mods]
    assert got == [isinstance(m, public) for m in mods] and sum(got) > 5


def test_fallbacks_when_the_private_pieces_are_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage.segmentation._watershed_cy", None)
    assert compat.skimage_raw_watershed() is None  # import fails: the public call is used
    import torch.nn.modules.batchnorm as bn

    monkeypatch.delattr(bn, "_BatchNorm")
    assert compat.batchnorm_base() == compat._public_batchnorm_types()
    assert compat.is_batchnorm(nn.BatchNorm2d(4)) and not compat.is_batchnorm(nn.Conv2d(1, 1, 1))
    monkeypatch.setattr(compat, "PERIMETER_WEIGHTS", np.zeros(50))  # skimage changed its table
    assert compat.perimeter_weights_match() is False
    lab = np.zeros((12, 12), np.int32)
    lab[2:7, 3:9], lab[8:11, 1:4] = 1, 2
    np.testing.assert_allclose(compat.perimeters_public(lab, 2),
                               [r.perimeter for r in regionprops(lab)])
    rng = np.random.default_rng(1)
    prob = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0)
    hv = rng.normal(0, 0.1, (2, 12, 12)).astype(np.float32)
    assert np.array_equal(wbis(prob, hv), wbis_reference(prob, hv))
