"""PIAC: U mask (hand prior and the real CPM-15 prior on MoNuSeg), loss by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ircr.errors import IrcrError
from ircr.features import nucleus_features
from ircr.ssl.piac import piac_loss, u_mask, u_mask_batch
from ircr.ssl.prior import PRIOR_FEATURES, MorphPrior, load_prior

torch.set_num_threads(1)
SPEC_CLUSTER_REJECTED = {"mean": 0.53, "geometric": 0.58}  # spec §3 table


def _hand_prior(area_hi: float) -> MorphPrior:
    """Area density 1 on [0, area_hi], 0 above; every other feature density 1."""
    g = np.stack([np.linspace(-1e3, 1e3, 64) for _ in PRIOR_FEATURES])
    d = np.ones_like(g)
    g[0] = np.linspace(0, 4 * area_hi, 64)
    d[0] = (g[0] <= area_hi).astype(float)
    return MorphPrior(g, d, np.ones(5), {}, combine="geometric")


def _read(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    img = np.ascontiguousarray(tifffile.imread(root / "images" / f"{name}.tif")[..., :3])
    return img, np.array(Image.open(root / "labels_inst" / f"{name}.png")).astype(np.int64)


def _merge_touching(lab: np.ndarray, min_members: int = 3) -> np.ndarray:
    """Merge groups of >= min_members 8-adjacent touching nuclei into one instance each."""
    h, w = lab.shape
    src, dst = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = lab[0:h - dy, max(0, -dx):w - max(0, dx)]
        b = lab[dy:h, max(0, dx):w - max(0, -dx)]
        m = (a > 0) & (b > 0) & (a != b)
        src.append(a[m])
        dst.append(b[m])
    n = int(lab.max()) + 1
    s, d = np.concatenate(src), np.concatenate(dst)
    _, comp = connected_components(coo_matrix((np.ones(s.size), (s, d)), shape=(n, n)),
                                   directed=False)
    size = np.bincount(comp[np.unique(lab[lab > 0])], minlength=comp.max() + 1)
    lut = np.where(size[comp] >= min_members, comp + 1, 0)
    lut[0] = 0
    return lut[lab]


def test_u_mask_with_hand_prior() -> None:
    inst = np.zeros((64, 64), np.int32)
    inst[5:10, 5:10] = 1  # 25 px: plausible
    inst[20:40, 20:40] = 2  # 400 px: implausible area
    inst[44:64, 40:60] = 3  # 400 px but touches the patch border: never scored
    img = np.full((64, 64, 3), 128, np.uint8)
    prior = _hand_prior(100.0)
    u = u_mask(img, inst, prior, tau=0.2, w=2.0)
    expect = np.full((64, 64), 2.0, np.float32)
    expect[20:40, 20:40] = 0.0
    assert u.dtype == np.float32 and np.array_equal(u, expect)
    masks = u_mask_batch(np.stack([img, img]), np.stack([inst, np.zeros_like(inst)]), prior,
                         tau=0.2, w=3.0)
    assert np.array_equal(masks.u[0], expect * 1.5) and np.all(masks.u[1] == 3.0)
    assert masks.n_instances.tolist() == [3, 0] and masks.n_scored.tolist() == [2, 0]
    assert masks.n_rejected.tolist() == [1, 0]
    assert masks.rejected_fraction.tolist() == [0.5, 0.0]
    with pytest.raises(IrcrError, match="piac"):
        u_mask_batch(img, inst, prior, tau=0.2)


def test_piac_loss_by_hand() -> None:
    fs = torch.ones(2, 3, 4, 4, requires_grad=True)
    ft = torch.zeros(2, 3, 4, 4)
    u = torch.zeros(2, 4, 4)
    u[0, :2] = 2.0  # image 0: half the pixels weighted 2 -> mean (2*1)^2 * 1/2 = 2
    u[1] = 1.0  # image 1: mean 1
    loss = piac_loss(fs, ft, u)
    assert loss.item() == pytest.approx((2.0 + 1.0) / 2)
    loss.backward()
    assert fs.grad is not None and fs.grad[0, :, 2:].abs().sum() == 0  # U = 0: no gradient
    assert piac_loss(fs, fs.detach(), np.full((2, 4, 4), 2.0, np.float32)).item() == 0.0
    with pytest.raises(IrcrError, match="U"):
        piac_loss(fs, ft, torch.ones(2, 4, 5))
    with pytest.raises(IrcrError, match="same"):
        piac_loss(fs, ft[:, :2], u)


def test_geometric_rejects_bar_and_square_on_real_tissue(monuseg_root: Path) -> None:
    img, _ = _read(monuseg_root, "TCGA-18-5592-01Z-00-DX1")
    patch = img[300:556, 300:556]
    inst = np.zeros((256, 256), np.int32)
    inst[20:23, 40:100] = 1  # 60 x 3 px bar
    inst[60:210, 60:210] = 2  # 150 px-wide square
    prior = load_prior(combine="geometric")
    _, scores = prior.score(patch, inst)
    assert np.all(scores < 0.2), scores
    u = u_mask(patch, inst, prior, tau=0.2, w=2.0)
    assert np.all(u[inst > 0] == 0.0) and np.all(u[inst == 0] == 2.0)


def test_mean_rejects_merged_cluster_of_real_nuclei(monuseg_root: Path) -> None:
    img, lab = _read(monuseg_root, "TCGA-KB-A93J-01A-01-TS1")
    merged = _merge_touching(lab)
    prior = load_prior(combine="mean")
    f = nucleus_features(img, merged)
    ok = (~f["touches_border"]) & (f["bbox"][:, 2] - f["bbox"][:, 0] < 200) \
        & (f["bbox"][:, 3] - f["bbox"][:, 1] < 200)
    scores = prior.score_features(f)
    cand = np.flatnonzero(ok & (scores < 0.35))
    assert cand.size > 0
    k = int(cand[0])
    cid = int(f["id"][k])
    members = np.unique(lab[merged == cid])
    assert members.size >= 3  # really a cluster of >= 3 annotated nuclei
    y0, x0, y1, x1 = f["bbox"][k]
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    py = int(np.clip(cy - 128, 0, lab.shape[0] - 256))
    px = int(np.clip(cx - 128, 0, lab.shape[1] - 256))
    patch = img[py:py + 256, px:px + 256]
    inst = (merged[py:py + 256, px:px + 256] == cid).astype(np.int32)
    u = u_mask(patch, inst, prior, tau=0.35, w=2.0)
    assert np.all(u[inst > 0] == 0.0) and np.all(u[inst == 0] == 2.0)
    # the same nuclei, not merged, are plausible and kept
    sep = np.where(inst > 0, lab[py:py + 256, px:px + 256], 0)
    _, sep_scores = prior.score(patch, sep)
    assert (sep_scores >= 0.35).mean() >= 0.5


def test_merged_clusters_rejection_rate_matches_spec(monuseg_root: Path) -> None:
    prior = load_prior()
    rows = []
    for img_path in sorted((monuseg_root / "images").glob("*.tif")):
        img, lab = _read(monuseg_root, img_path.stem)
        f = nucleus_features(img, _merge_touching(lab))
        sub = {k: v[~f["touches_border"]] for k, v in f.items()}
        rows.append(np.stack([prior.score_features(sub, "mean") < 0.35,
                              prior.score_features(sub, "geometric") < 0.2], axis=1))
    rejected = np.concatenate(rows).mean(axis=0)
    assert rejected[0] == pytest.approx(SPEC_CLUSTER_REJECTED["mean"], abs=0.08)
    assert rejected[1] == pytest.approx(SPEC_CLUSTER_REJECTED["geometric"], abs=0.08)


def test_one_keep_rule_for_piac_and_prior_score() -> None:
    """Kept = score >= tau, or touching the border (then never judged, score may be NaN)."""
    from ircr.ssl.prior import prior_keeps

    keep = prior_keeps(np.array([0.1, 0.35, 0.5, np.nan, 0.0]),
                       np.array([False, False, False, True, True]), 0.35)
    assert keep.tolist() == [False, True, True, True, True]
