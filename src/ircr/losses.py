"""HoVer-Net supervised losses (reference-algorithms.md §3).

NP: 2-class categorical cross-entropy (softmax, clamp to [1e-7, 1 - 1e-7]) + soft Dice summed
over both channels with sums over the whole batch (smooth 1e-3). HV: MSE over all pixels +
MSGE (5x5 Sobel-like gradients in the intended directions: d(x_map)/d(column) for channel 0,
d(y_map)/d(row) for channel 1; averaged over GT nuclear pixels and both channels). The
optional NC branch uses the same CE + Dice over ``nr_types`` channels.

All losses are computed in float32 (safe under autocast). ``valid_mask`` (N, H, W) restricts
every term to valid pixels (e.g. to ignore padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ircr.errors import IrcrError

EPS = 1e-7
DICE_SMOOTH = 1e-3


@dataclass
class LossConfig:
    """Weights of the supervised loss terms (official HoVer-Net PyTorch config: all 1)."""

    np_ce: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 1.0
    hv_msge: float = 1.0
    tp_ce: float = 1.0
    tp_dice: float = 1.0


def sobel_kernels(size: int = 5) -> tuple[Tensor, Tensor]:
    """HoVer-Net's gradient kernels K_x, K_y of shape (size, size), float32.

    ``K_x[v, u] = u / (u^2 + v^2)`` and ``K_y[v, u] = v / (u^2 + v^2)`` for column offset u and
    row offset v in [-size//2, size//2]; the centre is 0. Row v=0 of K_x (size 5) is
    [-0.5, -1, 0, 1, 0.5].
    """
    r = size // 2
    offs = torch.arange(-r, r + 1, dtype=torch.float64)
    v, u = torch.meshgrid(offs, offs, indexing="ij")  # v: row offset, u: column offset
    denom = u * u + v * v + 1e-15
    return (u / denom).float(), (v / denom).float()


def hv_gradients(hv: Tensor) -> Tensor:
    """(N, 2, H, W) HV maps -> (N, 2, H, W): d(ch0)/d(column), d(ch1)/d(row).

    Cross-correlation with the 5x5 kernels and zero padding of 2.
    """
    kx, ky = sobel_kernels(5)
    weight = torch.stack([kx, ky])[:, None].to(device=hv.device, dtype=hv.dtype)
    return F.conv2d(hv, weight, padding=2, groups=2)


def _as_mask(valid_mask: Tensor | None, like: Tensor) -> Tensor:
    """(N, H, W) float mask of valid pixels (all ones when None)."""
    if valid_mask is None:
        return torch.ones(like.shape[0], *like.shape[2:], device=like.device, dtype=torch.float32)
    return valid_mask.to(device=like.device, dtype=torch.float32)


def categorical_ce(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid pixels of -log p_target; p = softmax clamped to [1e-7, 1 - 1e-7].

    logits (N, C, H, W); target (N, H, W) int class ids; mask (N, H, W) float.
    """
    prob = torch.softmax(logits.float(), dim=1)
    prob = prob / prob.sum(dim=1, keepdim=True)
    prob = prob.clamp(EPS, 1.0 - EPS)
    logp = torch.log(prob).gather(1, target.long()[:, None]).squeeze(1)
    return -(logp * mask).sum() / mask.sum().clamp_min(1.0)


def soft_dice(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sum over channels c of 1 - (2 sum p_c y_c + s) / (sum p_c + sum y_c + s), s = 1e-3.

    Sums run over the whole batch (N, H, W) restricted to ``mask``. Range [0, C].
    """
    prob = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), prob.shape[1]).permute(0, 3, 1, 2).float()
    m = mask[:, None]
    inter = (prob * onehot * m).sum(dim=(0, 2, 3))
    total = (prob * m).sum(dim=(0, 2, 3)) + (onehot * m).sum(dim=(0, 2, 3))
    return (1.0 - (2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)).sum()


def hv_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid pixels and both channels of (pred - target)^2; (N, 2, H, W) each."""
    sq = (pred.float() - target.float()) ** 2
    return (sq * mask[:, None]).sum() / (2.0 * mask.sum()).clamp_min(1.0)


def hv_msge(pred: Tensor, target: Tensor, nuclei: Tensor) -> Tensor:
    """Gradient MSE averaged over GT nuclear pixels (``nuclei`` (N, H, W) float) and both
    channels: sum M (G_pred - G_true)^2 / (2 sum M + 1e-8)."""
    diff = hv_gradients(pred.float()) - hv_gradients(target.float())
    return (diff**2 * nuclei[:, None]).sum() / (2.0 * nuclei.sum() + 1e-8)


def _check_shapes(out: dict[str, Tensor], np_target: Tensor, hv_target: Tensor) -> None:
    if "np" not in out or "hv" not in out:
        raise IrcrError(f"loss: model output needs 'np' and 'hv', got {sorted(out)}")
    n, _, h, w = out["np"].shape
    if tuple(np_target.shape) != (n, h, w):
        raise IrcrError(f"loss: np_target shape {tuple(np_target.shape)} != {(n, h, w)}")
    if tuple(hv_target.shape) != (n, 2, h, w):
        raise IrcrError(f"loss: hv_target shape {tuple(hv_target.shape)} != {(n, 2, h, w)}")


def hovernet_loss(
    out: dict[str, Tensor],
    np_target: Tensor,
    hv_target: Tensor,
    cfg: LossConfig | None = None,
    valid_mask: Tensor | None = None,
    tp_target: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted HoVer-Net loss.

    Args:
        out: model output {"np": (N,2,H,W) logits, "hv": (N,2,H,W)[, "tp": (N,C,H,W)]}.
        np_target: (N, H, W) {0, 1} (long or uint8).
        hv_target: (N, 2, H, W) float in [-1, 1].
        cfg: term weights (default all 1).
        valid_mask: optional (N, H, W) bool/float; only these pixels count.
        tp_target: optional (N, H, W) class ids for the NC branch; the NC terms are added only
            when both ``out["tp"]`` and ``tp_target`` are given.

    Returns:
        (total loss tensor with grad, {"np_ce", "np_dice", "hv_mse", "hv_msge"[, "tp_ce",
        "tp_dice"], "total"} as floats).
    """
    cfg = cfg or LossConfig()
    _check_shapes(out, np_target, hv_target)
    mask = _as_mask(valid_mask, out["np"])
    nuclei = (np_target > 0).float() * mask
    terms: dict[str, tuple[float, Tensor]] = {
        "np_ce": (cfg.np_ce, categorical_ce(out["np"], (np_target > 0).long(), mask)),
        "np_dice": (cfg.np_dice, soft_dice(out["np"], (np_target > 0).long(), mask)),
        "hv_mse": (cfg.hv_mse, hv_mse(out["hv"], hv_target, mask)),
        "hv_msge": (cfg.hv_msge, hv_msge(out["hv"], hv_target, nuclei)),
    }
    if "tp" in out and tp_target is not None:
        n_types = out["tp"].shape[1]
        if tp_target.min() < 0 or tp_target.max() >= n_types:
            raise IrcrError(f"loss: tp_target has class ids outside 0..{n_types - 1}")
        terms["tp_ce"] = (cfg.tp_ce, categorical_ce(out["tp"], tp_target, mask))
        terms["tp_dice"] = (cfg.tp_dice, soft_dice(out["tp"], tp_target, mask))
    total = sum((w * t for w, t in terms.values()), start=torch.zeros((), device=mask.device))
    values = torch.stack([t.detach() for _, t in terms.values()] + [total.detach()]).tolist()
    parts = dict(zip([*terms, "total"], values))
    return total, parts
