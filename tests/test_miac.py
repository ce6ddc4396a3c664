"""MIAC: centroids, Hungarian matching, boundary bands, vectorised loss == naive per-pair loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from ircr.errors import IrcrError
from ircr.ssl.matching import (
    batch_pair_maps,
    boundary_band,
    centroids,
    match_instances,
    miac_loss,
    miac_loss_naive,
    pair_index_maps,
)

torch.set_num_threads(1)


def _loss(fs, ft, bs, bt, t, s, radius=1.5, beta=0.5):
    maps, _ = batch_pair_maps(t, s, radius)
    return miac_loss(fs, ft, bs, bt, maps.lt, maps.ls, maps.band_t, maps.band_s, maps.band_ts,
                     beta=beta)


def _random_maps(rng: np.random.Generator, b: int, size: int, n: int) -> tuple[np.ndarray, ...]:
    """Teacher maps of touching blobs (watershed-like Voronoi cells of random seeds, masked)
    and student maps = teacher shifted by 0-2 px, with some instances dropped / relabelled."""
    t_maps, s_maps = [], []
    for _ in range(b):
        seeds = np.zeros((size, size), np.int32)
        ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
        seeds[ys, xs] = np.arange(1, n + 1)
        _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        vor = seeds[iy, ix]
        fg = ndi.gaussian_filter(rng.random((size, size)), 2) > 0.5
        t = np.where(fg, vor, 0).astype(np.int32)
        dy, dx = rng.integers(-2, 3, 2)
        s = np.roll(t, (int(dy), int(dx)), axis=(0, 1))
        drop = rng.choice(np.arange(1, n + 1), n // 5, replace=False)
        s[np.isin(s, drop)] = 0
        perm = np.r_[0, rng.permutation(n) + 100]  # student ids differ from teacher ids
        t_maps.append(t)
        s_maps.append(perm[s].astype(np.int32))
    return np.stack(t_maps), np.stack(s_maps)


def test_centroids_by_hand() -> None:
    inst = np.zeros((6, 8), np.int32)
    inst[1:3, 1:4] = 5  # rows 1-2, cols 1-3 -> (1.5, 2)
    inst[4, 6] = 2
    ids, c = centroids(inst)
    assert ids.tolist() == [2, 5]
    assert np.allclose(c, [[4, 6], [1.5, 2]])
    ids, c = centroids(np.zeros((3, 3), np.int32))
    assert ids.size == 0 and c.shape == (0, 2)


def test_matching_radius_and_empty_sides() -> None:
    t = np.zeros((40, 40), np.int32)
    s = np.zeros((40, 40), np.int32)
    t[5:10, 5:10] = 1
    s[6:11, 5:10] = 7  # centroid 1 px away: kept
    t[20:25, 20:25] = 2
    s[20:25, 23:28] = 8  # 3 px away: dropped at r = 1.5, kept at r = 3
    t[30:33, 30:33] = 3  # unmatched teacher
    pairs, d = match_instances(t, s, radius=1.5)
    assert pairs.tolist() == [[1, 7]] and np.allclose(d, [1.0])
    pairs, d = match_instances(t, s, radius=3.0)
    assert pairs.tolist() == [[1, 7], [2, 8]] and np.allclose(d, [1.0, 3.0])
    for a, b in ((t, np.zeros_like(s)), (np.zeros_like(t), s)):
        p, dd = match_instances(a, b)
        assert p.shape == (0, 2) and dd.size == 0


def test_hungarian_is_one_to_one() -> None:
    t = np.zeros((30, 30), np.int32)
    s = np.zeros((30, 30), np.int32)
    t[10:13, 10:13] = 1  # centroid (11, 11)
    t[10:13, 12:15] = 2  # centroid (11, 13)
    s[10:13, 11:14] = 9  # centroid (11, 12): 1 px from both; only one may take it
    pairs, _ = match_instances(t, s, radius=1.5)
    assert pairs.shape == (1, 2) and pairs[0, 1] == 9


def test_boundary_band_of_square_by_hand() -> None:
    m = np.zeros((15, 15), bool)
    m[5:10, 5:10] = True
    band = boundary_band(m)
    # Sobel is non-zero within 1 px of the edge (rows 4..5 and 9..10 etc.), dilation adds 1 px:
    expect = np.zeros_like(m)
    expect[3:12, 3:12] = True
    expect[7, 7] = False  # the centre pixel is 2 px from both inner band rings -> not in band
    assert np.array_equal(band, expect)
    assert not boundary_band(np.ones((6, 6), bool)).any()  # image edge is not a boundary


def test_pair_maps_and_band_counts_equal_full_size_bands() -> None:
    rng = np.random.default_rng(3)
    t, s = _random_maps(rng, 1, 64, 25)
    pairs, _ = match_instances(t[0], s[0], radius=3.0)
    assert pairs.shape[0] > 5
    m = pair_index_maps(t[0], s[0], pairs)
    ct = sum(boundary_band(t[0] == a).astype(int) for a, _ in pairs)
    cs = sum(boundary_band(s[0] == b).astype(int) for _, b in pairs)
    cts = sum((boundary_band(t[0] == a) & boundary_band(s[0] == b)).astype(int) for a, b in pairs)
    assert np.array_equal(m.band_t, ct) and np.array_equal(m.band_s, cs)
    assert np.array_equal(m.band_ts, cts)
    assert m.band_t.max() >= 2  # bands of touching instances overlap: counts are needed
    for k, (a, b) in enumerate(pairs, start=1):
        assert np.array_equal(m.lt == k, t[0] == a) and np.array_equal(m.ls == k, s[0] == b)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b, size = 3, 48
    t, s = _random_maps(rng, b, size, int(rng.integers(5, 30)))
    fs = torch.rand(b, 3, size, size, dtype=torch.float64, requires_grad=True)
    ft = torch.rand(b, 3, size, size, dtype=torch.float64)
    bs = torch.rand(b, size, size, dtype=torch.float64, requires_grad=True)
    bt = torch.rand(b, size, size, dtype=torch.float64)
    radius = float(rng.choice([3.0, 4.0]))  # shifts up to 2 px per axis
    lv, nv = _loss(fs, ft, bs, bt, t, s, radius)
    ln, nn_ = miac_loss_naive(fs, ft, bs, bt, t, s, radius)
    assert nv == nn_ and nv > 0
    assert torch.allclose(lv, ln, rtol=1e-10, atol=1e-14)
    gv = torch.autograd.grad(lv, (fs, bs))
    gn = torch.autograd.grad(ln, (fs, bs))
    for x, y in zip(gv, gn):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-14)


def test_zero_when_identical_and_unmatched_values_do_not_matter() -> None:
    rng = np.random.default_rng(7)
    t, _ = _random_maps(rng, 2, 48, 15)
    f = torch.rand(2, 3, 48, 48)
    bmap = torch.rand(2, 48, 48)
    loss, n = _loss(f, f.clone(), bmap, bmap.clone(), t, t.copy())
    assert n > 0 and loss.item() == 0.0
    # a student-only instance far from everything: its outputs must not change the loss
    t2 = np.zeros((1, 40, 40), np.int32)
    s2 = np.zeros((1, 40, 40), np.int32)
    t2[0, 5:12, 5:12] = 1
    s2[0, 5:12, 6:13] = 4
    s2[0, 28:35, 28:35] = 9  # unmatched
    fs, ft = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    bs, bt = torch.rand(1, 40, 40), torch.rand(1, 40, 40)
    l1, _ = _loss(fs, ft, bs, bt, t2, s2)
    fs2, bs2 = fs.clone(), bs.clone()
    fs2[..., 25:38, 25:38] = 5.0
    bs2[..., 25:38, 25:38] = -3.0
    l2, _ = _loss(fs2, ft, bs2, bt, t2, s2)
    assert torch.allclose(l1, l2)


def test_single_pair_by_hand() -> None:
    """Identical 1-pair maps, F_s = 1, F_t = 0, B_s = B_t: loss = area * C / (C*H*W)."""
    t = np.zeros((1, 20, 20), np.int32)
    t[0, 5:9, 5:10] = 3  # 20 px
    fs, ft = torch.ones(1, 3, 20, 20), torch.zeros(1, 3, 20, 20)
    bmap = torch.full((1, 20, 20), 0.5)
    loss, n = _loss(fs, ft, bmap, bmap, t, t.copy())
    assert n == 1 and loss.item() == pytest.approx(20 * 3 / (3 * 400))


def test_far_pairs_dropped_and_empty_gives_zero() -> None:
    t = np.zeros((1, 30, 30), np.int32)
    s = np.zeros((1, 30, 30), np.int32)
    t[0, 5:10, 5:10] = 1
    s[0, 5:10, 10:15] = 2  # 5 px away
    fs = torch.rand(1, 3, 30, 30, requires_grad=True)
    loss, n = _loss(fs, torch.rand(1, 3, 30, 30), torch.rand(1, 30, 30), torch.rand(1, 30, 30),
                    t, s, radius=1.5)
    assert n == 0 and loss.item() == 0.0
    loss.backward()  # still a graph-connected tensor
    empty = np.zeros((2, 16, 16), np.int32)
    loss, n = _loss(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16),
                    torch.rand(2, 16, 16), empty, empty)
    assert n == 0 and loss.item() == 0.0


def test_bad_shapes() -> None:
    with pytest.raises(IrcrError, match="integer instance map"):
        centroids(np.zeros((4, 4), np.float32))
    with pytest.raises(IrcrError, match="MIAC"):
        batch_pair_maps(np.zeros((1, 4, 4), np.int32), np.zeros((1, 4, 5), np.int32))
    z = np.zeros((1, 8, 8), np.int32)
    with pytest.raises(IrcrError, match="MIAC"):
        miac_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), torch.rand(1, 8, 8),
                  torch.rand(1, 8, 8), z, z, z, z, z)
