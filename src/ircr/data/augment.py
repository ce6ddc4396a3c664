"""Geometric and photometric augmentation with HoVer-Net's ranges (reference-algorithms §6).

Geometry: one affine (per-axis scale, shear, rotation about the centre of the input window,
translation) that also centre-crops the input window to ``out_shape``, followed by
horizontal/vertical flips of the output. Pixel centres are at integer coordinates; output
pixel p samples the input at ``A^-1(p)`` rounded to the nearest pixel (for labels, and for
the image with ``image_interp="nearest"``, HoVer-Net's setting), so the same call applied to
any other label map of the input frame gives an aligned result. Outside the input is 0. The
identity geometry is an exact centre crop with offset ``((H - h) // 2, (W - w) // 2)``.

Photometric (image only, uint8 in/out, never moves a pixel): HoVer-Net's "one of" Gaussian
blur / median blur / additive Gaussian noise, then hue, saturation, brightness and contrast
in random order. Contrast is ``(x - mean_c) * f + mean_c`` per channel, clipped after the
scaling: HoVer-Net clips the input instead, which makes its contrast step a no-op; we apply
it as intended (documented deviation). :func:`weak_view` and :func:`strong_view` are the
teacher/student views of the semi-supervised methods (ircr-method §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ircr.errors import IrcrError

_INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass
class AugmentConfig:
    """Augmentation switches and ranges (defaults = HoVer-Net, contrast fixed).

    A colour-jitter step is off when its range is 0 (``hue``, ``saturation``,
    ``brightness``) or ``contrast`` is ``(1, 1)``.
    """

    geometric: bool = True
    scale: tuple[float, float] = (0.8, 1.2)  # per axis, independent
    rotate: float = 179.0  # degrees, uniform in [-rotate, rotate]
    shear: float = 5.0  # degrees
    translate: float = 0.01  # fraction of the input window per axis
    flip_p: float = 0.5  # probability of each of the horizontal and vertical flips
    image_interp: Literal["nearest", "linear", "cubic"] = "nearest"  # labels: always nearest
    photometric: bool = True  # master switch of photometric() (not of the views)
    blur: bool = True  # Gaussian blur in the "one of" group (and in strong_view)
    median_blur: bool = True
    noise: bool = True  # additive Gaussian noise ("one of" group and strong_view)
    blur_ksizes: tuple[int, ...] = (1, 3, 5)  # odd kernel sizes (1 = no blur)
    noise_std: float = 0.05  # max noise std as a fraction of 255 (std ~ U(0, noise_std))
    noise_per_channel_p: float = 0.5  # probability of independent noise per channel
    hue: float = 8.0  # shift in OpenCV 8-bit hue units (0..179), uniform in [-hue, hue]
    saturation: float = 0.2  # factor 1 + U(-s, s) towards/away from gray
    brightness: float = 26.0  # additive, uniform in [-b, b] (0..255 scale)
    contrast: tuple[float, float] = (0.75, 1.25)  # factor range around the channel mean

    def validate(self, where: str = "augment") -> None:
        """Raise IrcrError for impossible ranges (called by ``ircr.config.from_dict``)."""
        def bad(key: str, why: str) -> IrcrError:
            return IrcrError(f"{where}: augmentation option '{key}' {why}")

        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise bad("scale", f"must be [lo, hi] with 0 < lo <= hi, got {list(self.scale)}")
        if len(self.contrast) != 2 or not 0 <= self.contrast[0] <= self.contrast[1]:
            got = list(self.contrast)
            raise bad("contrast", f"must be [lo, hi] with 0 <= lo <= hi, got {got}")
        for key in ("rotate", "shear", "translate", "noise_std", "hue", "saturation", "brightness"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        for key in ("flip_p", "noise_per_channel_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "must be a probability in [0, 1]")
        if not self.blur_ksizes or any(k < 1 or k % 2 == 0 for k in self.blur_ksizes):
            raise bad("blur_ksizes", f"must be odd sizes >= 1, got {list(self.blur_ksizes)}")
        if self.image_interp not in ("nearest", "linear", "cubic"):
            raise bad("image_interp", "must be 'nearest', 'linear' or 'cubic'")


@dataclass(frozen=True)
class Geometry:
    """One sampled geometric transform (angles in degrees, translation as input fraction)."""

    scale_x: float = 1.0
    scale_y: float = 1.0
    rotate: float = 0.0
    shear: float = 0.0
    translate_x: float = 0.0
    translate_y: float = 0.0
    flip_h: bool = False
    flip_v: bool = False

    def matrix(self, in_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
        """(2, 3) float64 affine mapping input (x, y) to output (x, y), before the flips."""
        (hi, wi), (ho, wo) = in_shape[:2], out_shape[:2]
        c_in = np.array([(wi - 1) / 2.0, (hi - 1) / 2.0])
        c_out = c_in - np.array([(wi - wo) // 2, (hi - ho) // 2], dtype=np.float64)
        t, s = math.radians(self.rotate), math.tan(math.radians(self.shear))
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        lin = rot @ np.array([[1.0, s], [0.0, 1.0]]) @ np.diag([self.scale_x, self.scale_y])
        shift = np.array([self.translate_x * wi, self.translate_y * hi])
        return np.hstack([lin, (c_out + shift - lin @ c_in)[:, None]])


def sample_geometry(rng: np.random.Generator, cfg: AugmentConfig) -> Geometry:
    """Draw a :class:`Geometry` from the ranges of ``cfg`` (identity if not ``cfg.geometric``)."""
    if not cfg.geometric:
        return Geometry()
    lo, hi = cfg.scale
    return Geometry(
        scale_x=float(rng.uniform(lo, hi)), scale_y=float(rng.uniform(lo, hi)),
        rotate=float(rng.uniform(-cfg.rotate, cfg.rotate)),
        shear=float(rng.uniform(-cfg.shear, cfg.shear)),
        translate_x=float(rng.uniform(-cfg.translate, cfg.translate)),
        translate_y=float(rng.uniform(-cfg.translate, cfg.translate)),
        flip_h=bool(rng.random() < cfg.flip_p), flip_v=bool(rng.random() < cfg.flip_p),
    )


def _nearest_index(inv: np.ndarray, in_shape: tuple[int, int], out_shape: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input (row, col) indices for every output pixel and the in-bounds mask."""
    ho, wo = out_shape
    ys, xs = np.mgrid[0:ho, 0:wo].astype(np.float64)
    xi = np.floor(inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] + 0.5).astype(np.int64)
    yi = np.floor(inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] + 0.5).astype(np.int64)
    ok = (xi >= 0) & (xi < in_shape[1]) & (yi >= 0) & (yi < in_shape[0])
    return np.where(ok, yi, 0), np.where(ok, xi, 0), ok


def _gather(arr: np.ndarray, idx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    yi, xi, ok = idx
    out = arr[yi, xi]
    out[~ok] = 0
    return out


def _flip(arr: np.ndarray, geom: Geometry) -> np.ndarray:
    if geom.flip_h:
        arr = arr[:, ::-1]
    if geom.flip_v:
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def apply_geometry(
    image: np.ndarray | None,
    inst: np.ndarray | None,
    geom: Geometry,
    out_shape: tuple[int, int],
    image_interp: Literal["nearest", "linear", "cubic"] = "nearest",
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Warp an input window and centre-crop it to ``out_shape``.

    Args:
        image: (H, W, 3) uint8 or None.
        inst: (H, W) label map of any integer (or float) dtype, or None; nearest sampling.
        geom: from :func:`sample_geometry` (``Geometry()`` = exact centre crop).
        out_shape: (h, w) of the output; may exceed (H, W) (outside is 0).
        image_interp: image interpolation; ``"nearest"`` keeps image and labels on exactly
            the same sampling grid.

    Returns:
        (image (h, w, 3) uint8 or None, inst (h, w) same dtype or None).
    """
    ref = image if image is not None else inst
    if ref is None:
        return None, None
    in_shape = (int(ref.shape[0]), int(ref.shape[1]))
    if image is not None and inst is not None and inst.shape[:2] != in_shape:
        raise ValueError(f"image {image.shape[:2]} and label {inst.shape[:2]} sizes differ")
    ho, wo = int(out_shape[0]), int(out_shape[1])
    fwd = geom.matrix(in_shape, (ho, wo))
    inv = cv2.invertAffineTransform(fwd)
    idx = _nearest_index(inv, in_shape, (ho, wo))
    img_out = lab_out = None
    if image is not None:
        if image_interp == "nearest":
            img_out = _gather(image, idx)
        else:
            img_out = cv2.warpAffine(
                np.ascontiguousarray(image), inv, (wo, ho),
                flags=_INTERP[image_interp] | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
            )
        img_out = _flip(img_out, geom)
    if inst is not None:
        lab_out = _flip(_gather(inst, idx), geom)
    return img_out, lab_out


# ----------------------------------------------------------------------------- photometric


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, kx: int, ky: int) -> np.ndarray:
    """Gaussian blur with odd kernel sizes (kx, ky), sigma from the size, replicate border."""
    if kx <= 1 and ky <= 1:
        return image.copy()
    return cv2.GaussianBlur(image, (kx, ky), 0, borderType=cv2.BORDER_REPLICATE)


def median_blur(image: np.ndarray, k: int) -> np.ndarray:
    """Median blur with odd kernel size ``k`` (1 = unchanged)."""
    return image.copy() if k <= 1 else cv2.medianBlur(np.ascontiguousarray(image), k)


def add_gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: float,
                       per_channel: bool = True) -> np.ndarray:
    """Add N(0, std) noise (std in 0..255 units); one draw per pixel (and channel)."""
    if std <= 0:
        return image.copy()
    shape = image.shape if per_channel else image.shape[:2] + (1,)
    return _u8(image.astype(np.float32) + rng.normal(0.0, std, size=shape).astype(np.float32))


def shift_hue(image: np.ndarray, shift: int) -> np.ndarray:
    """Rotate hue by ``shift`` OpenCV hue units (0..179 scale)."""
    if shift == 0:
        return image.copy()
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """``image * f + gray * (1 - f)`` (f = 1 unchanged, 0 gray)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    return _u8(image.astype(np.float32) * factor + gray * (1.0 - factor))


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` to every value (0..255 scale)."""
    return _u8(image.astype(np.float32) + delta)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale each channel around its mean: ``(x - mean_c) * f + mean_c``, then clip."""
    x = image.astype(np.float32)
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
    return _u8((x - mean) * factor + mean)


def _one_of(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    ops = [n for n, on in (("blur", cfg.blur), ("median", cfg.median_blur),
                           ("noise", cfg.noise)) if on]
    if not ops:
        return image
    op = ops[int(rng.integers(len(ops)))]
    ks = cfg.blur_ksizes
    if op == "blur":
        return gaussian_blur(image, int(rng.choice(ks)), int(rng.choice(ks)))
    if op == "median":
        return median_blur(image, int(rng.choice(ks)))
    std = float(rng.uniform(0.0, cfg.noise_std)) * 255.0
    per_channel = bool(rng.random() < cfg.noise_per_channel_p)
    return add_gaussian_noise(image, rng, std, per_channel=per_channel)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Hue, saturation, brightness, contrast (those switched on) in random order."""
    ops = [n for n, on in (("hue", cfg.hue > 0), ("saturation", cfg.saturation > 0),
                           ("brightness", cfg.brightness > 0),
                           ("contrast", tuple(cfg.contrast) != (1.0, 1.0))) if on]
    out = image
    for i in rng.permutation(len(ops)):
        op = ops[int(i)]
        if op == "hue":
            out = shift_hue(out, int(round(rng.uniform(-cfg.hue, cfg.hue))))
        elif op == "saturation":
            out = adjust_saturation(out, 1.0 + float(rng.uniform(-cfg.saturation, cfg.saturation)))
        elif op == "brightness":
            out = adjust_brightness(out, float(rng.uniform(-cfg.brightness, cfg.brightness)))
        else:
            out = adjust_contrast(out, float(rng.uniform(*cfg.contrast)))
    return out


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """HoVer-Net intensity augmentation: one of blur/median/noise, then colour jitter.

    (H, W, 3) uint8 -> (H, W, 3) uint8; unchanged copy if ``cfg.photometric`` is False.
    """
    if not cfg.photometric:
        return image.copy()
    return np.ascontiguousarray(colour_jitter(_one_of(image, rng, cfg), rng, cfg))


def weak_view(image: np.ndarray, rng: np.random.Generator, noise_std: float = 0.02) -> np.ndarray:
    """Teacher view: Gaussian noise with std ``noise_std * 255`` per pixel and channel only."""
    return add_gaussian_noise(image, rng, float(noise_std) * 255.0, per_channel=True)


def strong_view(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Student view: noise (std ~ U(0, noise_std)), colour jitter, then Gaussian blur.

    Each part follows its switch in ``cfg`` (``noise``, hue/saturation/brightness/contrast
    ranges, ``blur`` with a kernel drawn from ``blur_ksizes``); no geometric change.
    """
    out = image
    if cfg.noise:
        out = add_gaussian_noise(out, rng, float(rng.uniform(0.0, cfg.noise_std)) * 255.0)
    out = colour_jitter(out, rng, cfg)
    if cfg.blur:
        k = int(rng.choice(cfg.blur_ksizes))
        out = gaussian_blur(out, k, k)
    return np.ascontiguousarray(out) if out is not image else image.copy()


def augment_labelled(
    image: np.ndarray, inst: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
    out_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Supervised augmentation: sampled geometry on (image, inst), then photometric(image).

    image (H, W, 3) uint8, inst (H, W) int32 context window -> (h, w, 3), (h, w).
    """
    geom = sample_geometry(rng, cfg)
    img, lab = apply_geometry(image, inst, geom, out_shape, cfg.image_interp)
    assert img is not None and lab is not None
    return photometric(img, rng, cfg), lab
