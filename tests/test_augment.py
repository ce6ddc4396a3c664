"""Augmentation: exact geometry, image/label alignment, photometric ops, views, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from ircr.config import from_dict
from ircr.data.augment import (
    AugmentConfig,
    Geometry,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    apply_geometry,
    augment_labelled,
    photometric,
    sample_geometry,
    shift_hue,
    strong_view,
    weak_view,
)
from ircr.errors import IrcrError

OFF = dict(blur=False, median_blur=False, noise=False, hue=0.0, saturation=0.0, brightness=0.0,
           contrast=(1.0, 1.0))


def _labels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random rectangles with ids 1..40 (later ones on top)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    for k in range(1, 41):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        lab[y:y + rng.integers(5, 20), x:x + rng.integers(5, 20)] = k
    return lab


def _lut() -> np.ndarray:
    return np.random.default_rng(9).integers(0, 256, (41, 3), dtype=np.uint8)


def test_identity_is_exact_centre_crop() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (540, 540, 3), dtype=np.uint8)
    lab = _labels(540, 540)
    out_img, out_lab = apply_geometry(img, lab, Geometry(), (256, 256))
    np.testing.assert_array_equal(out_img, img[142:398, 142:398])
    np.testing.assert_array_equal(out_lab, lab[142:398, 142:398])
    assert out_lab is not None and out_lab.dtype == np.int32
    odd, _ = apply_geometry(img, None, Geometry(), (255, 257))
    np.testing.assert_array_equal(odd, img[142:397, 141:398])
    flip, _ = apply_geometry(img, None, Geometry(flip_h=True, flip_v=True), (256, 256))
    np.testing.assert_array_equal(flip, img[142:398, 142:398][::-1, ::-1])


def test_hand_computed_rotation_scale_translation() -> None:
    a = np.arange(81, dtype=np.int32).reshape(9, 9)
    _, rot = apply_geometry(None, a, Geometry(rotate=90.0), (9, 9))
    np.testing.assert_array_equal(rot, np.rot90(a, -1))  # out[i, j] = a[8 - j, i]
    _, big = apply_geometry(None, a, Geometry(scale_x=2.0, scale_y=2.0), (9, 9))
    assert big is not None
    assert big[4, 4] == a[4, 4] and big[4, 6] == a[4, 5] and big[8, 8] == a[6, 6]
    wide = np.pad(a, ((0, 0), (0, 1)))  # 9 x 10: translate 0.1 of the width = 1 pixel
    _, moved = apply_geometry(None, wide, Geometry(translate_x=0.1), (9, 10))
    assert moved is not None
    np.testing.assert_array_equal(moved[:, 1:], wide[:, :-1])
    assert (moved[:, 0] == 0).all()  # outside the input is 0


@pytest.mark.parametrize("seed", range(8))
def test_random_geometry_keeps_image_and_labels_aligned(seed: int) -> None:
    lab = _labels(300, 300, seed)
    lut = _lut()
    img = lut[lab]  # the colour encodes the label
    cfg = AugmentConfig()
    geom = sample_geometry(np.random.default_rng(seed), cfg)
    out_img, out_lab = apply_geometry(img, lab, geom, (160, 160))
    assert out_img is not None and out_lab is not None
    inside = out_img.any(axis=2) | (out_lab > 0)
    np.testing.assert_array_equal(out_img[inside], lut[out_lab][inside])
    assert set(np.unique(out_lab)) <= set(np.unique(lab))
    # the same call on another map of the input frame gives an aligned result
    _, other = apply_geometry(None, lab * 7 + 3, geom, (160, 160))
    _, ones = apply_geometry(None, np.ones_like(lab), geom, (160, 160))
    assert other is not None and ones is not None
    np.testing.assert_array_equal(other, np.where(ones > 0, out_lab * 7 + 3, 0))


def test_linear_image_interp_stays_aligned() -> None:
    lab = _labels(200, 200, 3)
    img = np.where(lab[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
    geom = Geometry(rotate=33.0, scale_x=1.1, scale_y=0.9, shear=4.0)
    lin, out_lab = apply_geometry(img, lab, geom, (120, 120), image_interp="linear")
    assert lin is not None and out_lab is not None
    fg = lin[..., 0] > 110
    assert ((out_lab > 0) == fg).mean() > 0.97  # only boundary pixels may differ


def test_sample_geometry_ranges_and_switch() -> None:
    cfg = AugmentConfig()
    rng = np.random.default_rng(1)
    gs = [sample_geometry(rng, cfg) for _ in range(400)]
    assert all(0.8 <= g.scale_x <= 1.2 and 0.8 <= g.scale_y <= 1.2 for g in gs)
    assert all(abs(g.rotate) <= 179 and abs(g.shear) <= 5 for g in gs)
    assert all(abs(g.translate_x) <= 0.01 and abs(g.translate_y) <= 0.01 for g in gs)
    assert 0.4 < np.mean([g.flip_h for g in gs]) < 0.6
    assert 0.4 < np.mean([g.flip_v for g in gs]) < 0.6
    assert max(abs(g.rotate) for g in gs) > 150
    assert sample_geometry(rng, AugmentConfig(geometric=False)) == Geometry()


def test_contrast_brightness_saturation_hue_by_hand() -> None:
    img = np.array([[[100, 10, 0], [200, 30, 255]]], np.uint8)
    # channel means 150, 20, 127.5; (x - m) * f + m
    np.testing.assert_array_equal(adjust_contrast(img, 1.2), [[[90, 8, 0], [210, 32, 255]]])
    np.testing.assert_array_equal(adjust_contrast(img, 0.5), [[[125, 15, 64], [175, 25, 191]]])
    np.testing.assert_array_equal(adjust_brightness(img, 26), [[[126, 36, 26], [226, 56, 255]]])
    gray = adjust_saturation(img, 0.0)
    assert (gray == gray[..., :1]).all()
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(shift_hue(red, 60), [[[0, 255, 0]]])  # 60 units = 120 deg


def test_photometric_contrast_is_not_a_noop() -> None:
    img = np.random.default_rng(2).integers(60, 190, (64, 64, 3), dtype=np.uint8)
    cfg = AugmentConfig(**{**OFF, "contrast": (1.25, 1.25)})
    out = photometric(img, np.random.default_rng(0), cfg)
    ratio = out.reshape(-1, 3).std(0) / img.reshape(-1, 3).std(0)
    np.testing.assert_allclose(ratio, 1.25, atol=0.01)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), img.reshape(-1, 3).mean(0), atol=0.6)
    assert np.array_equal(photometric(img, np.random.default_rng(0), AugmentConfig(**OFF)), img)
    assert np.array_equal(photometric(img, np.random.default_rng(0),
                                      AugmentConfig(photometric=False)), img)


def _shift_of(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Integer translation maximising the cross-correlation of two gray images."""
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    cc = np.fft.ifft2(fa * np.conj(fb)).real
    dy, dx = np.unravel_index(np.argmax(cc), cc.shape)
    h, w = a.shape
    return (int(dy) if dy <= h // 2 else int(dy) - h, int(dx) if dx <= w // 2 else int(dx) - w)


def test_views_are_pixel_aligned_and_uint8() -> None:
    lab = _labels(128, 128, 5)
    img = _lut()[lab]
    cfg = AugmentConfig()
    for seed in range(5):
        rng = np.random.default_rng(seed)
        weak, strong = weak_view(img, rng), strong_view(img, rng, cfg)
        full = photometric(img, rng, cfg)
        for v in (weak, strong, full):
            assert v.dtype == np.uint8 and v.shape == img.shape
            assert _shift_of(v.mean(axis=2), img.mean(axis=2).astype(np.float64)) == (0, 0)
        assert np.abs(weak.astype(int) - img).std() < 0.03 * 255  # light noise only
    np.testing.assert_array_equal(weak_view(img, np.random.default_rng(0), noise_std=0.0), img)
    np.testing.assert_array_equal(strong_view(img, np.random.default_rng(0),
                                              AugmentConfig(**OFF)), img)


def test_seeding_reproduces() -> None:
    img = np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    lab = _labels(300, 300, 4)
    cfg = AugmentConfig()
    a = augment_labelled(img, lab, np.random.default_rng(42), cfg, (128, 128))
    b = augment_labelled(img, lab, np.random.default_rng(42), cfg, (128, 128))
    c = augment_labelled(img, lab, np.random.default_rng(43), cfg, (128, 128))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    s1 = strong_view(img, np.random.default_rng(7), cfg)
    np.testing.assert_array_equal(s1, strong_view(img, np.random.default_rng(7), cfg))


def test_config_validation() -> None:
    cfg = from_dict(AugmentConfig, {"scale": [0.9, 1.1], "image_interp": "linear"})
    assert cfg.scale == (0.9, 1.1) and cfg.image_interp == "linear"
    with pytest.raises(IrcrError, match="scale"):
        from_dict(AugmentConfig, {"scale": [1.2, 0.8]})
    with pytest.raises(IrcrError, match="blur_ksizes"):
        from_dict(AugmentConfig, {"blur_ksizes": [2]})
    with pytest.raises(IrcrError, match="flip_p"):
        from_dict(AugmentConfig, {"flip_p": 1.5})
