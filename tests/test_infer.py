"""Sliding-window inference: blending, padding, cropping, batching, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.inference.predict import blend_weight, predict_batch, predict_maps
from ircr.models import ModelConfig, build_model

torch.set_num_threads(1)


class PixelModel(nn.Module):
    """Position-independent per-pixel model: NP logit from red, HV from green/blue."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.modes: list[bool] = []
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.modes.append(self.training)
        self.batches.append(int(x.shape[0]))
        logit = (x[:, 0] / 255.0 * 4.0 - 2.0) * self.scale
        np_logits = torch.stack([torch.zeros_like(logit), logit], 1)
        return {"np": np_logits, "hv": x[:, 1:3] / 255.0 * 2.0 - 1.0}


def expected_maps(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = image.astype(np.float64)
    prob = 1.0 / (1.0 + np.exp(-(x[..., 0] / 255.0 * 4.0 - 2.0)))
    hv = np.moveaxis(x[..., 1:3] / 255.0 * 2.0 - 1.0, -1, 0)
    return prob, hv


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("hw", "window", "overlap"),
    [
        ((100, 130), 32, 8),
        ((64, 64), 32, 0),
        ((20, 30), 64, 16),
        ((1, 50), 16, 4),
        ((97, 41), 40, 20),
    ],
)
def test_pixelwise_model_is_reproduced_exactly(
    hw: tuple[int, int], window: int, overlap: int
) -> None:
    image = random_image(*hw)
    model = PixelModel()
    prob, hv = predict_maps(model, image, window=window, overlap=overlap, batch_size=3)
    assert prob.shape == hw and hv.shape == (2, *hw)
    assert prob.dtype == np.float32 and hv.dtype == np.float32
    exp_prob, exp_hv = expected_maps(image)
    np.testing.assert_allclose(prob, exp_prob, atol=1e-5)
    np.testing.assert_allclose(hv, exp_hv, atol=1e-5)
    assert max(model.batches) <= 3


def test_model_runs_in_eval_mode_and_mode_is_restored() -> None:
    model = PixelModel().train()
    predict_maps(model, random_image(40, 40), window=32, overlap=8)
    assert model.modes and not any(model.modes)
    assert model.training


def test_blend_weight_partition_of_unity() -> None:
    w = blend_weight(32, 8)
    assert w.shape == (32, 32) and (w > 0).all() and w.max() == pytest.approx(1.0)
    row = w[16]
    np.testing.assert_allclose(row[24:] + row[:8], 1.0, atol=1e-6)  # adjacent tiles' ramps
    assert row[0] < row[4] < row[8] == pytest.approx(1.0)
    assert (blend_weight(16, 0) == 1).all()


def test_blending_weights_edges_less() -> None:
    """A model whose output depends on the tile position: tile edges count less than centres."""

    class EdgeModel(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            n, _, h, w = x.shape
            hv = torch.zeros(n, 2, h, w)
            hv[:, :, :, :4] = 1.0  # left edge of every tile claims 1, elsewhere 0
            return {"np": torch.zeros(n, 2, h, w), "hv": hv}

    _, hv = predict_maps(EdgeModel(), random_image(64, 200), window=32, overlap=16)
    # away from the image border every pixel is covered by a tile interior with weight ~1;
    # the left-edge claims get the small ramp weights only (at most 0.113 for px 3 of a
    # 16 px raised-cosine ramp; a uniform average would give 0.5)
    assert hv[0, :, 40:160].max() < 0.12
    assert np.allclose(predict_maps(EdgeModel(), random_image(64, 64), 32, 16)[0], 0.5)


def test_real_tiny_network_and_amp() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))
    image = random_image(70, 90)
    prob, hv = predict_maps(model, image, window=64, overlap=16, batch_size=4)
    assert prob.shape == (70, 90) and hv.shape == (2, 70, 90)
    assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    prob_bf16, hv_bf16 = predict_maps(model, image, window=64, overlap=16, amp=True)
    # a random-init net has large activations; bf16 keeps ~3 significant digits
    assert np.abs(prob_bf16 - prob).mean() < 0.03
    assert np.abs(hv_bf16 - hv).mean() < 0.03 * np.abs(hv).mean()


def test_predict_batch_pads_to_multiple_of_8() -> None:
    patches = np.stack([random_image(30, 36, seed=s) for s in range(5)])
    probs, hvs = predict_batch(PixelModel(), patches, batch_size=2)
    assert probs.shape == (5, 30, 36) and hvs.shape == (5, 2, 30, 36)
    for i in range(5):
        exp_prob, exp_hv = expected_maps(patches[i])
        np.testing.assert_allclose(probs[i], exp_prob, atol=1e-5)
        np.testing.assert_allclose(hvs[i], exp_hv, atol=1e-5)


def test_bad_inputs() -> None:
    model = PixelModel()
    with pytest.raises(IrcrError, match="uint8"):
        predict_maps(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(IrcrError, match=r"\(H, W, 3\)"):
        predict_maps(model, np.zeros((32, 32), np.uint8))
    with pytest.raises(IrcrError, match="multiple of 8"):
        predict_maps(model, random_image(32, 32), window=30)
    with pytest.raises(IrcrError, match="overlap"):
        predict_maps(model, random_image(32, 32), window=32, overlap=32)
    with pytest.raises(IrcrError, match="batch_size"):
        predict_maps(model, random_image(32, 32), window=32, overlap=8, batch_size=0)
    with pytest.raises(IrcrError, match="patches"):
        predict_batch(model, np.zeros((2, 32, 32, 3), np.int32))


def test_real_monuseg_image(monuseg_root: Path) -> None:
    """A whole 1000x1000 MoNuSeg tile: tiling/blending reproduces a per-pixel model exactly,
    and a tiny real network runs on a crop with finite, in-range output."""
    from ircr.io.image import read_image

    image = read_image(monuseg_root / "images" / "TCGA-18-5592-01Z-00-DX1.tif")
    assert image.shape == (1000, 1000, 3)
    prob, hv = predict_maps(PixelModel(), image, window=256, overlap=64, batch_size=8)
    exp_prob, exp_hv = expected_maps(image)
    np.testing.assert_allclose(prob, exp_prob, atol=1e-5)
    np.testing.assert_allclose(hv, exp_hv, atol=1e-5)
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))
    prob, hv = predict_maps(model, image[:150, :230], window=128, overlap=32)
    assert prob.shape == (150, 230) and np.isfinite(hv).all() and 0 <= prob.min() <= prob.max() <= 1
