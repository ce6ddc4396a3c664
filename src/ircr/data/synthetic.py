"""Synthetic H&E-like tiles with exact instance maps.

A tile is rendered with a Beer-Lambert stain model: every pixel has a haematoxylin and an
eosin concentration, the optical density is their mix with (slightly jittered) stain
colours, and the intensity is ``255 * 10**-OD``. The stroma is eosin with smooth
multi-scale noise, fibres and pale gaps; nuclei are perturbed ellipses (MoNuSeg-like at
0.25 µm/px: median area ~380 px, a few large ones) filled with haematoxylin, chromatin
texture, a darker rim and nucleoli. Some nuclei are placed touching or slightly
overlapping a neighbour; a later nucleus occludes an earlier one, occluded fragments are
dropped, and the image is rendered from the final instance map, so the map is exact. The
image is blurred slightly (soft edges like a real scan) and gets sensor noise.

Used as the embedded default of ``ircr demo`` and in fast tests; registered as the
``synthetic`` dataset (``open_dataset("synthetic", None, n_images=..., ...)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ircr.data.sample import Sample
from ircr.errors import IrcrError

__all__ = ["make_tile", "iter_synthetic", "TILE_OPTIONS"]

# Optical density of each stain at unit concentration (log10 units), from target colours:
# eosin ~ (225, 125, 165), haematoxylin ~ (110, 65, 140) in RGB.
_OD_EOSIN = -np.log10(np.array([225.0, 125.0, 165.0]) / 255.0)
_OD_HAEM = -np.log10(np.array([110.0, 65.0, 140.0]) / 255.0)
_PAD = 40  # canvas margin so nuclei are cut by the tile edge like in real tiles

# make_tile keyword options and their types (also accepted by iter_synthetic / --option).
TILE_OPTIONS: dict[str, type] = {
    "density": float,
    "mean_area": float,
    "area_sigma": float,
    "large_fraction": float,
    "max_elongation": float,
    "touching": float,
    "overlap": float,
    "blur": float,
    "noise": float,
}


@dataclass
class _Nucleus:
    cy: float
    cx: float
    a: float  # semi-axis along the orientation
    b: float
    theta: float
    harm: np.ndarray  # (K, 3): order, amplitude, phase of the boundary wobble

    def radius(self, phi: float) -> float:
        """Approximate boundary distance from the centre in direction ``phi``."""
        psi = phi - self.theta
        base = self.a * self.b / math.hypot(self.b * math.cos(psi), self.a * math.sin(psi))
        wob = sum(amp * math.cos(k * psi + ph) for k, amp, ph in self.harm)
        return base * (1.0 + wob)

    def mask(self, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Bounding-box slices and the boolean mask inside it (None if off-canvas)."""
        r = max(self.a, self.b) * 1.3 + 2
        y0, y1 = max(int(self.cy - r), 0), min(int(self.cy + r) + 2, shape[0])
        x0, x1 = max(int(self.cx - r), 0), min(int(self.cx + r) + 2, shape[1])
        if y1 <= y0 or x1 <= x0:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy, dx = yy - self.cy, xx - self.cx
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v = dx * c + dy * s, -dx * s + dy * c
        rho = np.hypot(u / self.a, v / self.b)
        psi = np.arctan2(v, u)
        bound = np.ones_like(rho)
        for k, amp, ph in self.harm:
            bound += amp * np.cos(k * psi + ph)
        m = rho <= bound
        if not m.any():
            return None
        return (slice(y0, y1), slice(x0, x1)), m


def _blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (per channel) with reflect borders; float32 in, float32 out."""
    return cv2.GaussianBlur(arr, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit std; (H, W) float32."""
    if sigma >= 6:  # large scales: draw at 1/4 resolution and upsample (same statistics)
        small = (max(shape[0] // 4, 4), max(shape[1] // 4, 4))
        n = _blur(rng.standard_normal(small).astype(np.float32), sigma / 4)
        n = cv2.resize(n, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    else:
        n = _blur(rng.standard_normal(shape).astype(np.float32), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def _fibres(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Streaky collagen-like texture in [0, 1]: anisotropic smoothing along one direction."""
    angle = rng.uniform(0, 180)
    noise = rng.standard_normal(shape).astype(np.float32)
    centre = (shape[1] / 2.0, shape[0] / 2.0)
    fwd = cv2.getRotationMatrix2D(centre, angle, 1.0)
    back = cv2.getRotationMatrix2D(centre, -angle, 1.0)
    size = (shape[1], shape[0])
    big = cv2.warpAffine(noise, fwd, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    big = cv2.GaussianBlur(big, (0, 0), sigmaX=7.0, sigmaY=0.8, borderType=cv2.BORDER_REFLECT)
    big = cv2.warpAffine(big, back, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    big = (big - big.mean()) / (big.std() + 1e-8)
    return np.clip(big, 0, None) / 3.0


def _sample_nucleus(
    rng: np.random.Generator, cy: float, cx: float, o: dict[str, float]
) -> _Nucleus:
    area = o["mean_area"] * math.exp(rng.normal(0.0, o["area_sigma"]))
    if rng.random() < o["large_fraction"]:
        area *= rng.uniform(2.0, 3.5)
    area = float(np.clip(area, 60.0, 4000.0))
    elong = 1.0 + (o["max_elongation"] - 1.0) * rng.beta(1.6, 2.2)
    a = math.sqrt(area * elong / math.pi)
    b = math.sqrt(area / (elong * math.pi))
    orders = np.arange(2, 6, dtype=np.float64)
    amps = rng.uniform(0.0, 0.07, size=4) / np.sqrt(orders - 1)
    phases = rng.uniform(0, 2 * math.pi, size=4)
    return _Nucleus(cy, cx, a, b, rng.uniform(0, math.pi), np.stack([orders, amps, phases], 1))


def _place(
    rng: np.random.Generator, canvas: np.ndarray, placed: list[_Nucleus], o: dict[str, float]
) -> bool:
    """Try to add one nucleus to ``canvas`` (int32 ids); returns whether it was placed."""
    h, w = canvas.shape
    near = placed and rng.random() < o["touching"]
    if near:
        ref = placed[int(rng.integers(len(placed)))]
        nuc = _sample_nucleus(rng, 0.0, 0.0, o)
        phi = rng.uniform(0, 2 * math.pi)
        squeeze = rng.uniform(0.72, 0.9) if rng.random() < o["overlap"] else rng.uniform(0.93, 1.02)
        dist = (ref.radius(phi) + nuc.radius(phi + math.pi)) * squeeze
        nuc.cy, nuc.cx = ref.cy + dist * math.sin(phi), ref.cx + dist * math.cos(phi)
    else:
        nuc = _sample_nucleus(rng, rng.uniform(0, h), rng.uniform(0, w), o)
    got = nuc.mask((h, w))
    if got is None:
        return False
    box, m = got
    under = canvas[box][m]
    covered = under[under > 0]
    if covered.size:
        if not near:
            return False
        ids, counts = np.unique(covered, return_counts=True)
        if counts.sum() > 0.25 * m.sum():
            return False
        for i, c in zip(ids, counts):
            if c > 0.25 * np.count_nonzero(canvas == i):
                return False
    region = canvas[box]
    region[m] = len(placed) + 1
    placed.append(nuc)
    return True


def _layout(rng: np.random.Generator, shape: tuple[int, int], o: dict[str, float]) -> np.ndarray:
    """Instance map of the padded canvas: (H, W) int32 with exact, 4-connected instances."""
    canvas = np.zeros(shape, np.int32)
    placed: list[_Nucleus] = []
    target = o["density"] * shape[0] * shape[1]
    drawn = 0.0
    for _ in range(20000):
        if drawn >= target:
            break
        if _place(rng, canvas, placed, o):
            drawn += math.pi * placed[-1].a * placed[-1].b
    # Occlusion may cut an earlier nucleus into pieces: keep its largest 4-connected piece.
    out = np.zeros_like(canvas)
    boxes = ndimage.find_objects(canvas)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        m = canvas[box] == i
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (int(np.argmax(sizes)) + 1)
        if m.sum() >= 30:
            out[box][m] = i
    return out


def _render(rng: np.random.Generator, inst: np.ndarray, o: dict[str, float]) -> np.ndarray:
    """Render the stain concentrations of ``inst`` to a (H, W, 3) uint8 RGB image."""
    shape = inst.shape
    fg = inst > 0
    large = _smooth_noise(rng, shape, 24.0)
    eosin = 0.8 + 0.2 * large + 0.08 * _smooth_noise(rng, shape, 5.0) + 0.35 * _fibres(rng, shape)
    eosin = np.where(large < rng.uniform(-2.2, -1.2), eosin * 0.25, eosin)  # pale gaps
    haem = 0.07 + 0.03 * _smooth_noise(rng, shape, 3.0)
    # cytoplasm: slightly more eosin around nuclei
    dist_out = ndimage.distance_transform_edt(~fg)
    eosin = eosin + 0.18 * np.exp(-dist_out / 4.0)
    # nuclei: per-nucleus darkness, chromatin texture, darker rim, nucleoli
    ids = inst.ravel()
    darkness = np.concatenate([[0.0], rng.uniform(0.6, 1.5, size=int(inst.max()))])
    chrom = _smooth_noise(rng, shape, 1.1)
    dist_in = ndimage.distance_transform_edt(fg)
    rim = np.exp(-np.maximum(dist_in - 1.0, 0.0) / 1.5)
    spots = np.clip(_smooth_noise(rng, shape, 1.5) - 2.2, 0, None)
    d = darkness[ids].reshape(shape)
    nuc_h = d * (1.0 + 0.22 * chrom + 0.25 * rim + 0.6 * spots)
    haem = np.where(fg, nuc_h, haem)
    eosin = np.where(fg, eosin * 0.45, eosin)
    # per-tile stain variation
    od_h = _OD_HAEM * rng.uniform(0.9, 1.1, size=3)
    od_e = _OD_EOSIN * rng.uniform(0.85, 1.15, size=3)
    od = haem[..., None].clip(0, None) * od_h + eosin[..., None].clip(0, None) * od_e
    rgb = 255.0 * np.power(10.0, -od)
    if o["blur"] > 0:
        rgb = _blur(rgb.astype(np.float32), o["blur"])
    rgb += rng.normal(0.0, o["noise"], size=rgb.shape)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _options(opts: dict[str, Any], where: str) -> dict[str, float]:
    defaults = {
        "density": 0.24,
        "mean_area": 380.0,
        "area_sigma": 0.5,
        "large_fraction": 0.05,
        "max_elongation": 2.4,
        "touching": 0.35,
        "overlap": 0.25,
        "blur": 0.9,
        "noise": 3.0,
    }
    out = dict(defaults)
    for key, value in opts.items():
        if key not in TILE_OPTIONS:
            raise IrcrError(
                f"{where}: unknown synthetic option '{key}' (known: {', '.join(TILE_OPTIONS)})"
            )
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise IrcrError(f"{where}: option '{key}' must be a number, got {value!r}") from None
    if not 0.0 < out["density"] <= 0.7:
        raise IrcrError(f"{where}: option 'density' must be in (0, 0.7], got {out['density']}")
    if out["mean_area"] < 30 or out["max_elongation"] < 1.0:
        raise IrcrError(f"{where}: 'mean_area' must be >= 30 and 'max_elongation' >= 1")
    return out


def make_tile(
    rng: np.random.Generator, size: tuple[int, int] | int = (256, 256), **opts: Any
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic H&E-like tile.

    Args:
        rng: numpy Generator (the tile is a pure function of its state).
        size: (height, width) or one int for a square tile.
        **opts: see ``TILE_OPTIONS``: ``density`` (target nuclear area fraction, 0.24),
            ``mean_area`` (median nucleus area in px, 380), ``area_sigma`` (log-normal
            spread, 0.5), ``large_fraction`` (0.05), ``max_elongation`` (2.4), ``touching``
            (probability a nucleus is placed against a neighbour, 0.35), ``overlap``
            (share of those that overlap and occlude, 0.25), ``blur`` (px, 0.9),
            ``noise`` (grey levels, 3).

    Returns:
        image (H, W, 3) uint8 RGB and inst (H, W) int32 (0 = background, ids 1..K).
    """
    o = _options(opts, "make_tile")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise IrcrError(f"make_tile: size must be at least 16x16, got {h}x{w}")
    canvas = _layout(rng, (h + 2 * _PAD, w + 2 * _PAD), o)
    image = _render(rng, canvas, o)[_PAD : _PAD + h, _PAD : _PAD + w]
    crop = canvas[_PAD : _PAD + h, _PAD : _PAD + w]
    # relabel 1..K in raster order of first appearance
    ids = np.unique(crop)
    ids = ids[ids > 0]
    lut = np.zeros(int(canvas.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return np.ascontiguousarray(image), lut[crop]


def iter_synthetic(
    root: Any = None,
    n_images: int = 8,
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    labelled: bool = True,
    **opts: Any,
) -> Iterator[Sample]:
    """Yield ``n_images`` synthetic samples (``root`` is ignored).

    Image ``i`` depends only on ``(seed, i)``, ``size`` and the options, so asking for more
    images never changes the first ones. Meta: ``name`` = ``synth_{i:03d}``, ``source`` =
    ``"synthetic"``, ``mpp`` = 0.25, ``path`` = ``""``. String values (from
    ``--option key=value``) are converted; bad values raise at call time, not at ``next()``.
    """
    where = "dataset 'synthetic'"
    try:
        n = int(n_images)
        s = int(seed)
        if isinstance(size, (tuple, list)):
            hw = (int(size[0]), int(size[1]))
        else:
            hw = (int(size), int(size))
    except (TypeError, ValueError, IndexError):
        raise IrcrError(f"{where}: n_images, size and seed must be integers") from None
    if n < 1:
        raise IrcrError(f"{where}: option 'n_images' must be >= 1, got {n}")
    if min(hw) < 16:
        raise IrcrError(f"{where}: option 'size' must be at least 16, got {size!r}")
    if isinstance(labelled, str):
        labelled = labelled.strip().lower() in ("1", "true", "yes", "on")
    _options(opts, where)  # validate before returning the iterator
    return _generate(n, hw, s, bool(labelled), opts)


def _generate(
    n: int, hw: tuple[int, int], seed: int, labelled: bool, opts: dict[str, Any]
) -> Iterator[Sample]:
    for i in range(n):
        image, inst = make_tile(np.random.default_rng([seed, i]), hw, **opts)
        meta = {"name": f"synth_{i:03d}", "source": "synthetic", "mpp": 0.25, "path": ""}
        yield Sample(image=image, inst=inst if labelled else None, meta=meta)
