"""Metrics on real MoNuSeg labels with known perturbations.

Every expected value comes from counting pixels of the ground truth and of the perturbation
(np.bincount), never from the metric code: dropping nuclei, merging touching pairs and
eroding each nucleus all have closed-form AJI / AJI+ / PQ / F1 / Dice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ircr.metrics import aggregate, instance_metrics

DENSE = "TCGA-HE-7130-01Z-00-DX1"
TILES = [DENSE, "TCGA-18-5592-01Z-00-DX1", "TCGA-G2-A2EK-01A-02-TSB", "TCGA-KB-A93J-01A-01-TS1"]


def _load(root: Path, name: str) -> np.ndarray:
    return np.array(Image.open(root / "labels_inst" / f"{name}.png"))


@pytest.fixture(scope="module")
def labels(monuseg_root: Path) -> dict[str, np.ndarray]:
    return {n: _load(monuseg_root, n) for n in TILES}


def _areas(m: np.ndarray) -> dict[int, int]:
    c = np.bincount(m.ravel().astype(np.int64))
    return {int(i): int(c[i]) for i in np.flatnonzero(c) if i}


def test_identity_gives_one_everywhere(monuseg_root: Path) -> None:
    files = sorted((monuseg_root / "labels_inst").glob("*.png"))
    assert len(files) == 30
    for f in files:
        gt = np.array(Image.open(f))
        assert gt.dtype == np.uint16
        m = instance_metrics(gt, gt, name=f.name)
        for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1"):
            assert getattr(m, k) == 1.0, (f.name, k)
        assert m.fp == 0 and m.fn == 0 and m.tp == m.n_gt == len(_areas(gt))


def test_dropping_20_percent_gives_count_derived_values(labels: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    for name, gt in labels.items():
        area = _areas(gt)
        ids = np.array(sorted(area))
        n, k = ids.size, round(0.2 * ids.size)
        drop = rng.choice(ids, k, replace=False)
        pred = np.where(np.isin(gt, drop), 0, gt)
        a_all, a_drop = sum(area.values()), sum(area[int(i)] for i in drop)
        m = instance_metrics(gt, pred, name=name)
        assert (m.tp, m.fp, m.fn) == (n - k, 0, k)
        assert m.f1 == pytest.approx(2 * (n - k) / (2 * (n - k) + k), abs=1e-12)
        assert m.dq == pytest.approx(m.f1, abs=1e-12) and m.sq == pytest.approx(1.0)
        assert m.aji == pytest.approx((a_all - a_drop) / a_all, abs=1e-12)
        assert m.aji_plus == pytest.approx(m.aji, abs=1e-12)
        assert m.dice == pytest.approx(2 * (a_all - a_drop) / (2 * a_all - a_drop), abs=1e-12)


def _touching_pairs(gt: np.ndarray) -> list[tuple[int, int]]:
    """Disjoint pairs of 4-adjacent nuclei (greedy, deterministic)."""
    g = gt.astype(np.int64)
    cand = set()
    for a, b in ((g[:, :-1], g[:, 1:]), (g[:-1], g[1:])):
        sel = (a > 0) & (b > 0) & (a != b)
        cand |= {(min(x, y), max(x, y)) for x, y in zip(a[sel].tolist(), b[sel].tolist())}
    used: set[int] = set()
    pairs = []
    for x, y in sorted(cand):
        if x not in used and y not in used:
            pairs.append((x, y))
            used |= {x, y}
    return pairs


def test_merging_touching_pairs_lowers_aji_as_predicted(labels: dict[str, np.ndarray]) -> None:
    gt = labels[DENSE]
    area = _areas(gt)
    pairs = _touching_pairs(gt)
    assert len(pairs) > 50
    lut = np.arange(int(gt.max()) + 1)
    for a, b in pairs:
        lut[b] = a
    pred = lut[gt]
    m = instance_metrics(gt, pred)
    total = sum(area.values())
    s_pair = sum(area[a] + area[b] for a, b in pairs)
    s_min = sum(min(area[a], area[b]) for a, b in pairs)
    # AJI: both nuclei pick the merged prediction -> its area enters U twice
    assert m.aji == pytest.approx(total / (total + s_pair), abs=1e-12)
    # AJI+: the merged prediction matches the larger nucleus only
    assert m.aji_plus == pytest.approx((total - s_min) / (total + s_min), abs=1e-12)
    n, p = len(area), len(pairs)
    unequal = [(a, b) for a, b in pairs if area[a] != area[b]]
    tp = n - 2 * p + len(unequal)  # IoU(larger, merged) = big / (big + small) > 0.5 iff unequal
    assert (m.pq_tp, m.pq_fp, m.pq_fn) == (tp, n - p - tp, n - tp)
    iou = (n - 2 * p) + sum(max(area[a], area[b]) / (area[a] + area[b]) for a, b in unequal)
    assert m.pq_iou_sum == pytest.approx(iou, abs=1e-9)
    assert m.dice == 1.0 and m.aji < 0.95


def _erode4(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, mode="edge")
    keep = np.ones(m.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        keep &= p[dy : dy + m.shape[0], dx : dx + m.shape[1]] == m
    return np.where(keep, m, 0)


def test_eroding_lowers_sq_keeps_dq_when_iou_stays_high(labels: dict[str, np.ndarray]) -> None:
    for name, gt in labels.items():
        pred = _erode4(gt)
        a, e = _areas(gt), _areas(pred)
        ratio = {i: e.get(i, 0) / a[i] for i in a}  # eroded is a subset: IoU = |e| / |g|
        tp = sum(r > 0.5 for r in ratio.values())
        fp = sum(0 < r <= 0.5 for r in ratio.values())
        m = instance_metrics(gt, pred, name=name)
        assert (m.pq_tp, m.pq_fp, m.pq_fn) == (tp, fp, len(a) - tp)
        assert m.sq == pytest.approx(sum(r for r in ratio.values() if r > 0.5) / tp, abs=1e-12)
        assert m.sq < 1.0
        assert m.aji == pytest.approx(sum(e.values()) / sum(a.values()), abs=1e-12)
    # erode only nuclei of >= 100 px: every IoU stays above 0.5, so DQ stays 1 and SQ drops
    gt = labels[DENSE]
    a = _areas(gt)
    big = np.isin(gt, [i for i, v in a.items() if v >= 100])
    pred = np.where(big, _erode4(gt), gt)
    e = _areas(pred)
    assert all(e[i] / a[i] > 0.5 for i in a)
    m = instance_metrics(gt, pred)
    assert m.dq == 1.0 and m.f1 == 1.0 and m.aji_plus == m.aji
    assert m.sq == pytest.approx(np.mean([e[i] / a[i] for i in a]), abs=1e-12) and m.sq < 0.99


def test_splitting_nuclei_lowers_aji_and_dq(labels: dict[str, np.ndarray]) -> None:
    gt = labels["TCGA-18-5592-01Z-00-DX1"].astype(np.int32)
    ys, xs = np.nonzero(gt)
    ids = gt[ys, xs]
    cx = np.bincount(ids, weights=xs) / np.maximum(np.bincount(ids), 1)
    pred = gt.copy()
    right = xs > cx[ids]
    pred[ys[right], xs[right]] += 100_000
    m = instance_metrics(gt, pred)
    assert m.n_pred > m.n_gt and m.dice == 1.0
    assert m.aji < 0.7 and m.dq < 0.8 and m.fp > 0


def test_pooled_equals_metrics_of_the_concatenated_images(labels: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    gts, preds, res = [], [], []
    for i, (name, gt) in enumerate(labels.items()):
        pred = np.roll(_erode4(gt), int(rng.integers(-2, 3)), axis=1).astype(np.int64)
        pred[rng.random(gt.shape) < 0.02] = 0
        offset = 10_000_000 * (i + 1)
        gts.append(np.where(gt > 0, gt.astype(np.int64) + offset, 0))
        preds.append(np.where(pred > 0, pred + offset, 0))
        res.append(instance_metrics(gt, pred, name=name))
    whole = instance_metrics(np.hstack(gts), np.hstack(preds))
    pooled = aggregate(res, "pooled")
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1"):
        assert pooled[k] == pytest.approx(getattr(whole, k), abs=1e-12), k
    mean = aggregate(res, "mean")
    assert mean["aji"] == pytest.approx(np.mean([r.aji for r in res]))
    assert mean["aji"] != pytest.approx(pooled["aji"], abs=1e-6)
