"""Two augmented views of each H&E tile, with the exact map between them (for dense terms).

A view is an affine warp of the tile -- a square crop (scale), a multiple of 90 degrees and a
flip -- followed by photometric changes that keep H&E meaning: HED stain jitter (each stain's
optical density scaled and shifted, Tellez et al. 2018), mild brightness/contrast and Gaussian
blur. No hue rotation or saturation jitter: they turn haematoxylin into other colours.

Geometry is one 2x3 matrix per view, ``theta``, mapping normalised view coordinates
(x, y in [-1, 1], ``align_corners=False``) to normalised tile coordinates; the view is rendered
with ``grid_sample`` from it, and :func:`correspondence` composes two of them, so the
position of every feature cell of view A inside view B is exact, not estimated.
All randomness is drawn from the numpy generator passed in (deterministic for a seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ircr.errors import IrcrError

__all__ = ["ViewConfig", "ViewParams", "sample_views", "render_views", "correspondence",
           "hed_jitter", "RGB_FROM_HED", "HED_FROM_RGB"]

#: stain vectors of Ruifrok & Johnston (haematoxylin, eosin, DAB), rows = stains, cols = RGB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


@dataclass
class ViewConfig:
    """View sampling (defaults: H&E self-supervision at the tile's own pixel size).

    Attributes:
        size: view side in pixels (a multiple of 32 suits every encoder).
        scale: range of the crop side as a fraction of the tile side (the crop is resized to
            ``size``: 0.5 = up to 2x zoom).
        flip, rot90: random horizontal flip, random multiple of 90 degrees.
        hed_sigma: stain scale factor drawn in [1 - s, 1 + s] per stain (0 = off).
        hed_bias: stain shift drawn in [-b, b] (optical density units) per stain.
        brightness: shift drawn in [-b, b] x 255; contrast: factor in [1 - c, 1 + c].
        blur_p: probability of a Gaussian blur with sigma drawn in ``blur_sigma``.
    """

    size: int = 224
    scale: list[float] | None = None
    flip: bool = True
    rot90: bool = True
    hed_sigma: float = 0.05
    hed_bias: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    blur_p: float = 0.3
    blur_sigma: list[float] | None = None

    def scale_range(self) -> tuple[float, float]:
        """(min, max) crop fraction; default (0.5, 1.0)."""
        s = self.scale or [0.5, 1.0]
        return float(s[0]), float(s[1])

    def sigma_range(self) -> tuple[float, float]:
        """(min, max) blur sigma in view pixels; default (0.1, 1.5)."""
        s = self.blur_sigma or [0.1, 1.5]
        return float(s[0]), float(s[1])

    def validate(self, where: str = "views") -> None:
        """One-line errors for impossible values."""
        lo, hi = self.scale_range()
        if self.size < 32 or self.size % 8:
            raise IrcrError(f"{where}: views.size must be a multiple of 8, >= 32, got {self.size}")
        if self.scale is not None and len(self.scale) != 2 or not 0.05 <= lo <= hi <= 1.0:
            raise IrcrError(f"{where}: views.scale must be [min, max] in (0.05, 1], "
                            f"got {self.scale}")
        s0, s1 = self.sigma_range()
        if self.blur_sigma is not None and len(self.blur_sigma) != 2 or not 0 < s0 <= s1:
            raise IrcrError(f"{where}: views.blur_sigma must be [min, max] > 0")
        for key in ("hed_sigma", "hed_bias", "brightness", "contrast", "blur_p"):
            v = float(getattr(self, key))
            if not 0.0 <= v <= 1.0:
                raise IrcrError(f"{where}: views.{key} must be in [0, 1], got {v}")


@dataclass
class ViewParams:
    """Per-view parameters of a batch (n views): geometry and photometry, numpy arrays."""

    theta: np.ndarray  # (n, 2, 3) float64: view -> tile normalised coordinates
    hed_scale: np.ndarray  # (n, 3)
    hed_shift: np.ndarray  # (n, 3)
    brightness: np.ndarray  # (n,)
    contrast: np.ndarray  # (n,)
    blur: np.ndarray  # (n,) sigma, 0 = none


def _theta(rng: np.random.Generator, cfg: ViewConfig) -> np.ndarray:
    lo, hi = cfg.scale_range()
    s = float(rng.uniform(lo, hi))
    cx, cy = rng.uniform(-(1 - s), 1 - s, size=2) if s < 1 else (0.0, 0.0)
    k = int(rng.integers(4)) if cfg.rot90 else 0
    flip = bool(rng.random() < 0.5) if cfg.flip else False
    rot = np.array([[0, -1], [1, 0]], dtype=np.float64)
    a = np.linalg.matrix_power(rot, k) @ np.diag([-1.0 if flip else 1.0, 1.0]) * s
    return np.concatenate([a, [[cx], [cy]]], axis=1)


def sample_views(rng: np.random.Generator, n: int, cfg: ViewConfig) -> ViewParams:
    """Draw the parameters of ``n`` views (in a fixed order: same rng state, same views)."""
    theta = np.stack([_theta(rng, cfg) for _ in range(n)]) if n else np.zeros((0, 2, 3))
    hed_scale = rng.uniform(1 - cfg.hed_sigma, 1 + cfg.hed_sigma, size=(n, 3))
    hed_shift = rng.uniform(-cfg.hed_bias, cfg.hed_bias, size=(n, 3))
    brightness = rng.uniform(-cfg.brightness, cfg.brightness, size=n) * 255.0
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, size=n)
    s0, s1 = cfg.sigma_range()
    blur = np.where(rng.random(n) < cfg.blur_p, rng.uniform(s0, s1, size=n), 0.0)
    return ViewParams(theta, hed_scale, hed_shift, brightness, contrast, blur)


def hed_jitter(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Scale/shift each stain's optical density: (N, 3, H, W) 0..255 -> same.

    OD = -log((I + 1) / 256); stains = OD @ HED_FROM_RGB; stains' = stains * scale + shift;
    I' = 256 exp(-stains' @ RGB_FROM_HED) - 1. scale 1, shift 0 is the identity.
    """
    to_hed = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    to_rgb = torch.as_tensor(RGB_FROM_HED, dtype=x.dtype, device=x.device)
    od = -torch.log((x.clamp(0, 255) + 1.0) / 256.0)
    stains = torch.einsum("nchw,cs->nshw", od, to_hed)
    stains = stains * scale[:, :, None, None] + shift[:, :, None, None]
    od2 = torch.einsum("nshw,sc->nchw", stains, to_rgb)
    return 256.0 * torch.exp(-od2) - 1.0


def _blur(x: Tensor, sigmas: np.ndarray) -> Tensor:
    out = x.clone()
    for i, s in enumerate(sigmas):
        if s <= 0:
            continue
        r = max(1, int(np.ceil(3 * s)))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * float(s) ** 2))
        k = (k / k.sum()).to(x.dtype)
        img = F.pad(x[i:i + 1], (r, r, r, r), mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i:i + 1] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return out


def render_views(tiles: Tensor, params: ViewParams, size: int) -> Tensor:
    """Render views: tiles (N, 3, T, T) float 0..255 (view i from tile i) -> (N, 3, size, size).

    Geometry by bilinear ``grid_sample`` (reflection padding), then HED jitter, contrast about
    the view mean, brightness, blur; clamped to 0..255.
    """
    n = tiles.shape[0]
    dev, dt = tiles.device, tiles.dtype
    theta = torch.as_tensor(params.theta, dtype=dt, device=dev)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x = F.grid_sample(tiles, grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)

    def col(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dt, device=dev)

    x = hed_jitter(x, col(params.hed_scale), col(params.hed_shift))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * col(params.contrast).view(n, 1, 1, 1) + mean
    x = x + col(params.brightness).view(n, 1, 1, 1)
    return _blur(x.clamp(0, 255), params.blur).clamp(0, 255)


def correspondence(theta_a: Tensor, theta_b: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Where each cell centre of view A's (h, w) feature grid lies in view B.

    Args:
        theta_a, theta_b: (N, 2, 3) view -> tile maps of the two views.

    Returns:
        grid (N, h, w, 2) normalised (x, y) coordinates in view B (for ``grid_sample`` with
        ``align_corners=False``) and valid (N, h, w) bool: the point lies inside view B.
    """
    dt, dev = theta_a.dtype, theta_a.device
    ys = (torch.arange(h, dtype=dt, device=dev) + 0.5) * 2 / h - 1
    xs = (torch.arange(w, dtype=dt, device=dev) + 0.5) * 2 / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy], -1).view(1, h * w, 2)
    tile = pts @ theta_a[:, :, :2].transpose(1, 2) + theta_a[:, None, :, 2]
    inv = torch.linalg.inv(theta_b[:, :, :2])
    in_b = (tile - theta_b[:, None, :, 2]) @ inv.transpose(1, 2)
    grid = in_b.view(-1, h, w, 2)
    valid = (grid.abs() <= 1.0).all(-1)
    return grid, valid
