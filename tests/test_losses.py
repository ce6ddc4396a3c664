"""HoVer-Net losses against hand-computed values (reference-algorithms.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from ircr.errors import IrcrError
from ircr.losses import (
    LossConfig,
    categorical_ce,
    hovernet_loss,
    hv_gradients,
    hv_msge,
    sobel_kernels,
    soft_dice,
)
from ircr.models import ModelConfig, build_model

torch.set_num_threads(1)


def test_sobel_kernels_by_hand() -> None:
    kx, ky = sobel_kernels(5)
    assert kx[2].tolist() == pytest.approx([-0.5, -1.0, 0.0, 1.0, 0.5])
    assert kx[0, 0].item() == pytest.approx(-2 / 8)  # u = -2, v = -2
    assert kx[1, 2].item() == 0.0  # u = 0
    assert ky[0, 2].item() == pytest.approx(-0.5)  # v = -2, u = 0
    assert torch.allclose(ky, kx.T)


def _column_ramp(h: int = 12, w: int = 12, slope: float = 1.0) -> torch.Tensor:
    return (torch.arange(w, dtype=torch.float32) * slope).expand(h, w).clone()


def test_gradient_directions_are_the_intended_ones() -> None:
    ramp = _column_ramp()  # varies only along columns
    g = hv_gradients(torch.stack([ramp, ramp])[None])
    inner = (slice(2, -2), slice(2, -2))
    # x channel: sum over the 5x5 of u^2 / (u^2 + v^2) = 4 + 2 + 3.2 + 0.8 + 2 = 12
    assert torch.allclose(g[0, 0][inner], torch.full((8, 8), 12.0))
    # y channel (d/d row) of a map constant along rows is 0
    assert torch.allclose(g[0, 1][inner], torch.zeros(8, 8), atol=1e-5)
    g_rows = hv_gradients(torch.stack([ramp.T, ramp.T])[None])
    assert torch.allclose(g_rows[0, 1][inner], torch.full((8, 8), 12.0))
    assert torch.allclose(g_rows[0, 0][inner], torch.zeros(8, 8), atol=1e-5)


def test_msge_values() -> None:
    target = torch.stack([_column_ramp(), _column_ramp().T])[None]
    nuclei = torch.zeros(1, 12, 12)
    nuclei[0, 2:-2, 2:-2] = 1.0
    assert hv_msge(target.clone(), target, nuclei).item() == pytest.approx(0.0, abs=1e-10)
    pred = target.clone()
    pred[0, 0] = _column_ramp(slope=1.5)
    # gradient error 12 * 0.5 = 6 on channel 0 only; mean over pixels and 2 channels: 36 / 2
    assert hv_msge(pred, target, nuclei).item() == pytest.approx(18.0, rel=1e-5)
    # background pixels do not count
    pred[0, 0, :, :2] = 100.0
    nuclei_far = torch.zeros(1, 12, 12)
    nuclei_far[0, 2:-2, 6:-2] = 1.0
    assert hv_msge(pred, target, nuclei_far).item() == pytest.approx(18.0, rel=1e-5)


def test_cross_entropy_by_hand() -> None:
    mask = torch.ones(1, 1, 2)
    target = torch.tensor([[[0, 1]]])
    assert categorical_ce(torch.zeros(1, 2, 1, 2), target, mask).item() == pytest.approx(
        math.log(2.0)
    )
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    p0 = 1 / (1 + math.exp(-1.0))  # pixel 0, class 0
    p1 = 1 / (1 + math.exp(-2.0))  # pixel 1, class 1
    expected = -(math.log(p0) + math.log(p1)) / 2
    assert categorical_ce(logits, target, mask).item() == pytest.approx(expected, rel=1e-6)
    wrong = torch.tensor([[[[-50.0, 50.0]], [[50.0, -50.0]]]])
    # clamp at 1e-7: -log(1e-7) = 16.118
    assert categorical_ce(wrong, target, mask).item() == pytest.approx(-math.log(1e-7), rel=1e-4)


def test_soft_dice_by_hand() -> None:
    target = torch.tensor([[[0, 1]]])
    s = 1e-3
    # p = 0.5 everywhere: per channel inter 0.5, sums 1 + 1
    expected = 2 * (1 - (2 * 0.5 + s) / (2.0 + s))
    assert soft_dice(torch.zeros(1, 2, 1, 2), target, torch.ones(1, 1, 2)).item() == (
        pytest.approx(expected, rel=1e-6)
    )
    # sums run over the whole batch, not per image
    two = torch.tensor([[[0, 0]], [[1, 1]]])
    p_logits = torch.zeros(2, 2, 1, 2)
    expected2 = 2 * (1 - (2 * 1.0 + s) / (2.0 + 2.0 + s))
    assert soft_dice(p_logits, two, torch.ones(2, 1, 2)).item() == pytest.approx(expected2)


def _perfect(n: int = 2, h: int = 16, w: int = 16) -> tuple[dict, torch.Tensor, torch.Tensor]:
    np_t = torch.zeros(n, h, w, dtype=torch.uint8)
    np_t[:, 4:12, 4:12] = 1
    hv_t = torch.zeros(n, 2, h, w)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    hv_t[:, 0, 4:12, 4:12] = (xs - 3.5) / 3.5
    hv_t[:, 1, 4:12, 4:12] = (ys - 3.5) / 3.5
    fg = np_t > 0
    logits = torch.stack([torch.where(fg, -20.0, 20.0), torch.where(fg, 20.0, -20.0)], 1)
    return {"np": logits, "hv": hv_t.clone()}, np_t, hv_t


def test_perfect_prediction_is_near_zero() -> None:
    out, np_t, hv_t = _perfect()
    total, parts = hovernet_loss(out, np_t, hv_t, LossConfig())
    assert set(parts) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "total"}
    assert parts["np_ce"] < 1e-6 and parts["np_dice"] < 1e-6
    assert parts["hv_mse"] == 0.0 and parts["hv_msge"] == 0.0
    assert total.item() < 1e-5


def test_weights_mse_and_valid_mask() -> None:
    out, np_t, hv_t = _perfect()
    out["hv"] = torch.zeros_like(hv_t)
    out["hv"][:, 0] = 1.0
    hv_t = torch.zeros_like(hv_t)
    _, parts = hovernet_loss(out, np_t, hv_t)
    assert parts["hv_mse"] == pytest.approx(0.5)  # error 1 on one of two channels
    cfg = LossConfig(np_ce=0, np_dice=0, hv_mse=2.0, hv_msge=0)
    total, parts = hovernet_loss(out, np_t, hv_t, cfg)
    assert total.item() == pytest.approx(1.0) and parts["total"] == pytest.approx(1.0)
    # masking out the wrong pixels removes their error
    out["hv"][:, 0, :, 8:] = 0.0
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, :, 8:] = True
    _, parts = hovernet_loss(out, np_t, hv_t, valid_mask=valid)
    assert parts["hv_mse"] == 0.0


def test_nc_branch_terms_and_errors() -> None:
    out, np_t, hv_t = _perfect()
    tp_t = np_t.long() * 2  # class 2 inside, background 0
    out["tp"] = torch.full((2, 3, 16, 16), -20.0)
    out["tp"][:, 0] = torch.where(tp_t == 0, 20.0, -20.0)
    out["tp"][:, 2] = torch.where(tp_t == 2, 20.0, -20.0)
    _, parts = hovernet_loss(out, np_t, hv_t, tp_target=tp_t)
    assert parts["tp_ce"] < 1e-6
    # channel 1 is absent from both prediction and target: its Dice term is 1 - s/s = 0
    assert parts["tp_dice"] < 1e-6
    with pytest.raises(IrcrError, match="tp_target"):
        hovernet_loss(out, np_t, hv_t, tp_target=tp_t + 5)
    _, parts = hovernet_loss(out, np_t, hv_t)  # no type labels: NC terms left out
    assert "tp_ce" not in parts


def test_shape_errors() -> None:
    out, np_t, hv_t = _perfect()
    with pytest.raises(IrcrError, match="np_target shape"):
        hovernet_loss(out, np_t[:, :8], hv_t)
    with pytest.raises(IrcrError, match="hv_target shape"):
        hovernet_loss(out, np_t, hv_t[:, :1])
    with pytest.raises(IrcrError, match="'np' and 'hv'"):
        hovernet_loss({"np": out["np"]}, np_t, hv_t)


def test_tiny_model_learns_a_nucleus() -> None:
    """End to end: a few Adam steps on one image reduce the loss and every term is finite."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))
    _, np_t, hv_t = _perfect(n=1, h=32, w=32)
    image = torch.full((1, 3, 32, 32), 220.0)
    image[:, :, 4:12, 4:12] = 60.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        total, parts = hovernet_loss(model(image), np_t, hv_t)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(parts["total"])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
