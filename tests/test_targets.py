"""HoVer-Net NP/HV targets (reference-algorithms.md §1.2-1.3, pad-first, with context)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ircr.data.targets import hover_targets, split_fragments
from ircr.errors import IrcrError


def _literal_hv(inst: np.ndarray, crop: tuple[int, int, int, int], min_px: int = 30):
    """Step-by-step transcription of §1.2 (one instance at a time, padded by 2 px first)."""
    y0, x0, h, w = crop
    # 1. split fragments: first component keeps the id, others get new ids
    fixed = inst.copy()
    next_id = int(inst.max()) + 1
    for i in np.unique(inst)[1:]:
        lab, n = ndimage.label(inst == i)
        for k in range(2, n + 1):
            fixed[lab == k] = next_id
            next_id += 1
    # 2. ids with >= min_px pixels inside the crop
    ids, counts = np.unique(fixed[y0 : y0 + h, x0 : x0 + w], return_counts=True)
    kept = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_px]
    padded = np.pad(fixed, 2)
    x_map = np.zeros(padded.shape, np.float32)
    y_map = np.zeros(padded.shape, np.float32)
    for i in kept:
        rr, cc = np.nonzero(padded == i)
        r0, r1, c0, c1 = rr.min() - 2, rr.max() + 3, cc.min() - 2, cc.max() + 3
        m = (padded[r0:r1, c0:c1] == i).astype(np.uint8)
        com = ndimage.center_of_mass(m)
        cy, cx = int(com[0] + 0.5), int(com[1] + 0.5)
        gx, gy = np.meshgrid(np.arange(1, m.shape[1] + 1), np.arange(1, m.shape[0] + 1))
        gx = (gx - cx).astype(np.float32)
        gy = (gy - cy).astype(np.float32)
        gx[m == 0] = 0
        gy[m == 0] = 0
        for g in (gx, gy):
            if g.min() < 0:
                g[g < 0] /= -g[g < 0].min()
            if g.max() > 0:
                g[g > 0] /= g[g > 0].max()
        x_map[r0:r1, c0:c1][m > 0] = gx[m > 0]
        y_map[r0:r1, c0:c1][m > 0] = gy[m > 0]
    hv = np.stack([x_map[2:-2, 2:-2], y_map[2:-2, 2:-2]])
    return hv[:, y0 : y0 + h, x0 : x0 + w]


def test_single_square_known_values() -> None:
    inst = np.zeros((40, 40), np.int32)
    inst[10:15, 20:25] = 7  # 5x5, centre of mass (12, 22)
    npt, hv = hover_targets(inst, min_px=1)
    assert npt.dtype == np.uint8 and hv.dtype == np.float32 and hv.shape == (2, 40, 40)
    assert npt.sum() == 25
    # x = c + 1 - 22 over columns 20..24 = -1, 0, 1, 2, 3 -> sides scaled by 1 and 3
    expected = np.array([-1.0, 0.0, 1 / 3, 2 / 3, 1.0], np.float32)
    for r in range(10, 15):
        np.testing.assert_allclose(hv[0, r, 20:25], expected, rtol=1e-6)
    for c in range(20, 25):
        np.testing.assert_allclose(hv[1, 10:15, c], expected, rtol=1e-6)
    assert hv[:, inst == 0].max() == 0 and hv[:, inst == 0].min() == 0


def test_top_left_edge_instance_gets_hv() -> None:
    inst = np.zeros((32, 32), np.int32)
    inst[0:8, 0:8] = 1  # starts at row 0 / column 0: dropped by the unpadded reference
    _, hv = hover_targets(inst)
    assert np.abs(hv[:, :8, :8]).max() == 1.0
    assert hv[0, 0, 0] == -1.0 and hv[1, 0, 0] == -1.0 and hv[0, 7, 7] == 1.0


def test_cut_nucleus_keeps_full_extent_values() -> None:
    inst = np.zeros((64, 64), np.int32)
    inst[20:40, 10:30] = 3  # 20x20, crossing the crop's left edge at column 16
    crop = (8, 16, 48, 48)
    _, hv_full = hover_targets(inst)
    npt, hv_crop = hover_targets(inst, crop=crop)
    assert npt.shape == (48, 48) and hv_crop.shape == (2, 48, 48)
    np.testing.assert_array_equal(hv_crop, hv_full[:, 8:56, 16:64])
    # the visible left edge (column 16) is not -1: normalised on the full extent
    assert -1.0 < hv_crop[0, 20, 0] < 0.0
    # computing on the crop alone would renormalise it
    _, hv_alone = hover_targets(inst[8:56, 16:64])
    assert hv_alone[0, 20, 0] == -1.0


def test_fragments_are_split_for_hv_only() -> None:
    inst = np.zeros((30, 60), np.int32)
    inst[5:15, 5:15] = 4
    inst[5:15, 40:50] = 4  # second fragment of the same id
    assert split_fragments(inst).max() == 2
    npt, hv = hover_targets(inst, min_px=1)
    left, right = hv[0, 5:15, 5:15], hv[0, 5:15, 40:50]
    # each fragment spans -1..1 on its own, identical pattern
    np.testing.assert_array_equal(left, right)
    assert left.min() == -1.0 and left.max() == 1.0
    assert npt.sum() == 200


def test_min_px_rule_counts_pixels_inside_crop() -> None:
    inst = np.zeros((40, 40), np.int32)
    inst[5:15, 0:10] = 1  # 100 px, 20 of them inside the crop (cols 8..9)
    inst[20:30, 20:30] = 2  # 100 px inside
    npt, hv = hover_targets(inst, crop=(0, 8, 40, 32), min_px=30)
    assert npt[5:15, 0:2].all()  # still foreground
    assert not hv[:, 5:15, 0:2].any()  # but no HV
    assert hv[:, 20:30, 12:22].any()
    _, hv2 = hover_targets(inst, crop=(0, 8, 40, 32), min_px=20)
    assert hv2[:, 5:15, 0:2].any()


def test_touching_instances_have_separate_fields() -> None:
    inst = np.zeros((20, 30), np.int32)
    inst[5:15, 5:15] = 1
    inst[5:15, 15:25] = 2
    _, hv = hover_targets(inst, min_px=1)
    assert hv[0, 10, 14] == 1.0 and hv[0, 10, 15] == -1.0


def test_matches_literal_transcription_on_random_maps() -> None:
    rng = np.random.default_rng(3)
    for trial in range(6):
        inst = np.zeros((96, 96), np.int32)
        for i in range(1, 30):
            cy, cx = rng.integers(-4, 100, size=2)
            ry, rx = rng.integers(2, 9, size=2)
            yy, xx = np.ogrid[:96, :96]
            inst[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
        crop = (0, 0, 96, 96) if trial == 0 else (10, 17, 64, 70)
        _, hv = hover_targets(inst, crop=crop)
        np.testing.assert_array_equal(hv, _literal_hv(inst, crop))


def test_large_map_small_crop_equals_context_crop() -> None:
    rng = np.random.default_rng(0)
    inst = np.zeros((400, 400), np.int32)
    yy, xx = np.ogrid[:400, :400]
    for i in range(1, 200):
        cy, cx = rng.integers(0, 400, size=2)
        r = rng.integers(3, 12)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    inst[40:260, 150:170] = 999  # a long object crossing far past the crop margin
    crop = (180, 140, 64, 64)
    _, hv_big = hover_targets(inst, crop=crop, min_px=1)
    _, hv_all = hover_targets(inst, min_px=1)
    np.testing.assert_array_equal(hv_big, hv_all[:, 180:244, 140:204])
    _, hv_big = hover_targets(inst, crop=crop)
    np.testing.assert_array_equal(hv_big, _literal_hv(inst, crop))


def test_empty_and_bad_inputs() -> None:
    npt, hv = hover_targets(np.zeros((8, 8), np.int32))
    assert not npt.any() and not hv.any()
    with pytest.raises(IrcrError, match="2-D"):
        hover_targets(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(IrcrError, match="integer"):
        hover_targets(np.zeros((4, 4), np.float32))
    with pytest.raises(IrcrError, match="does not fit"):
        hover_targets(np.zeros((8, 8), np.int32), crop=(4, 4, 8, 8))


def test_speed_dense_256_crop() -> None:
    """Dense map (~100 nuclei in the crop): well under 20 ms per 256x256 crop."""
    rng = np.random.default_rng(1)
    inst = np.zeros((352, 352), np.int32)
    yy, xx = np.ogrid[:352, :352]
    for i in range(1, 220):
        cy, cx = rng.integers(0, 352, size=2)
        r = rng.integers(5, 12)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    crop = (48, 48, 256, 256)
    assert len(np.unique(inst[48:304, 48:304])) > 100
    hover_targets(inst, crop=crop)
    t0 = time.perf_counter()
    for _ in range(10):
        hover_targets(inst, crop=crop)
    per_call = (time.perf_counter() - t0) / 10
    assert per_call < 0.05  # generous for a shared 2-core CI machine; ~5 ms measured
