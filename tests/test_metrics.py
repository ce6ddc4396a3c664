"""Metrics on small maps with values computed by hand, edge cases, errors, and a slow oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from ircr.errors import IrcrError
from ircr.metrics import aggregate, instance_metrics


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-12


def test_one_prediction_over_two_nuclei_aji_over_penalisation() -> None:
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.int32)
    pred = np.full((2, 4), 5, np.int32)  # no background pixel at all
    m = instance_metrics(gt, pred)
    # both GT pick the prediction (IoU 4/8 each): C = 4 + 4, U = 8 + 8 (counted twice)
    assert (m.aji_c, m.aji_u) == (8, 16) and _close(m.aji, 0.5)
    # one-to-one: one GT matched (C 4, U 8), the other unmatched adds its 4 px
    assert (m.aji_plus_c, m.aji_plus_u) == (4, 12) and _close(m.aji_plus, 1 / 3)
    # IoU exactly 0.5 is not a PQ match (strict)
    assert (m.pq_tp, m.pq_fp, m.pq_fn) == (0, 1, 2)
    assert m.dq == 0.0 and m.sq == 0.0 and m.pq == 0.0 and m.f1 == 0.0
    assert m.dice == 1.0


def _tie_maps(id_a: int, id_b: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((3, 12), np.int32)
    gt[0:2, 0:10] = 4  # 20 px
    pred = np.zeros_like(gt)
    pred[0, 0:5] = id_a  # 5 px inside: IoU 5/20 = 0.25
    pred[1, 4:10] = id_b  # 6 px inside ...
    pred[2, 4:8] = id_b  # ... + 4 outside: IoU 6/24 = 0.25
    return gt, pred


def test_aji_tie_goes_to_lowest_prediction_id() -> None:
    m = instance_metrics(*_tie_maps(2, 9))  # A has the lower id: C 5, U 20 + |B| 10
    assert (m.aji_c, m.aji_u) == (5, 30)
    m = instance_metrics(*_tie_maps(9, 2))  # B has the lower id: C 6, U 24 + |A| 5
    assert (m.aji_c, m.aji_u) == (6, 29)


def test_pq_threshold_is_strict_and_sq_averages_matches() -> None:
    gt = np.zeros((2, 8), np.int32)
    gt[0, 0:4] = 1
    gt[1, 0:4] = 2
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1  # IoU 2/4 = 0.5 -> no match
    pred[1, 0:3] = 1  # IoU 3/4 -> match
    m = instance_metrics(gt, pred.astype(np.uint16) * np.array([[1], [3]], np.uint16))
    assert (m.pq_tp, m.pq_fp, m.pq_fn) == (1, 1, 1)
    assert _close(m.dq, 1 / 2) and _close(m.sq, 0.75) and _close(m.pq, 0.375)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1) and _close(m.f1, 0.5)
    assert _close(m.dice, 2 * 5 / (8 + 5))


def test_ids_need_not_be_contiguous_dtype_free() -> None:
    gt = np.array([[0, 7, 7, 0], [1_000_000, 1_000_000, 0, 0]], np.int64)
    pred = np.array([[0, 3, 3, 0], [2**40, 2**40, 2**40, 0]], np.int64)
    ref = instance_metrics(np.array([[0, 1, 1, 0], [2, 2, 0, 0]]),
                           np.array([[0, 1, 1, 0], [2, 2, 2, 0]]))
    got = instance_metrics(gt, pred)
    assert got == ref
    assert _close(got.aji, (2 + 2) / (2 + 3))
    assert instance_metrics(gt.astype(bool), pred.astype(bool)).n_gt == 1


def test_empty_cases_have_documented_values() -> None:
    z = np.zeros((4, 4), np.int32)
    one = z.copy()
    one[1:3, 1:3] = 3
    both = instance_metrics(z, z)
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1"):
        assert getattr(both, k) == 1.0
    assert (both.tp, both.fp, both.fn) == (0, 0, 0)
    for gt, pred in ((z, one), (one, z)):
        m = instance_metrics(gt, pred)
        for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1"):
            assert getattr(m, k) == 0.0, k
    assert instance_metrics(z, one).fp == 1 and instance_metrics(one, z).fn == 1
    # both non-empty but disjoint
    other = np.zeros((4, 4), np.int32)
    other[0, 0] = 1
    m = instance_metrics(one, other)
    assert m.sq == 0.0 and m.aji == 0.0 and m.aji_u == 5


def test_aggregate_mean_and_pooled_by_hand() -> None:
    gt = np.zeros((4, 4), np.int32)
    gt[0:2, 0:2] = 1
    perfect = instance_metrics(gt, gt)
    missed = instance_metrics(gt, np.zeros_like(gt))
    mean = aggregate([perfect, missed], "mean")
    pooled = aggregate([perfect, missed], "pooled")
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1"):
        assert _close(mean[k], 0.5), k
    assert _close(pooled["dice"], 2 * 4 / 12) and _close(pooled["aji"], 4 / 8)
    assert _close(pooled["dq"], 2 / 3) and _close(pooled["sq"], 1.0)
    assert _close(pooled["pq"], 2 / 3) and _close(pooled["f1"], 2 / 3)
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["n_images"]) == (1, 0, 1, 2)
    empty = instance_metrics(np.zeros_like(gt), np.zeros_like(gt))
    assert aggregate([empty, empty], "pooled")["aji"] == 1.0


def test_centroid_f1_radius_inclusive_and_maximum_matching() -> None:
    gt = np.zeros((5, 30), np.int32)
    pred = np.zeros_like(gt)
    gt[2, 2] = 1
    pred[2, 14] = 1  # 12 px away
    assert instance_metrics(gt, pred, "centroid", radius=12.0).tp == 1
    assert instance_metrics(gt, pred, "centroid", radius=11.9).tp == 0
    # GT at x=10 and x=0, predictions at x=5 and x=16, radius 6: nearest-first greedy pairs
    # (10, 5) and leaves one out; the maximum matching pairs (0, 5) and (10, 16).
    gt = np.zeros((1, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 10], gt[0, 0] = 1, 2
    pred[0, 5], pred[0, 16] = 1, 2
    m = instance_metrics(gt, pred, "centroid", radius=6.0)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0) and m.f1 == 1.0
    assert m.pq_tp == 0  # the IoU matching is unaffected


@pytest.mark.parametrize(
    ("gt", "pred", "kw", "msg"),
    [
        (np.zeros((3, 3)), np.zeros((3, 3), np.int32), {}, "integer instance map"),
        (np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32), {}, "differ in shape"),
        (np.zeros((3, 3, 1), np.int32), np.zeros((3, 3, 1), np.int32), {}, "2-D"),
        (np.full((2, 2), -1), np.zeros((2, 2), np.int64), {}, "negative ids"),
        ([[1]], np.zeros((1, 1), np.int32), {}, "numpy array"),
        (np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), {"f1_mode": "x"}, "f1_mode"),
        (np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32),
         {"f1_mode": "centroid", "radius": 0}, "radius"),
    ],
)
def test_bad_input_is_one_line_error(gt: object, pred: np.ndarray, kw: dict, msg: str) -> None:
    with pytest.raises(IrcrError, match=msg) as e:
        instance_metrics(gt, pred, name="img.png", **kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_aggregate_errors() -> None:
    with pytest.raises(IrcrError, match="no per-image"):
        aggregate([])
    m = instance_metrics(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    with pytest.raises(IrcrError, match="mean' or 'pooled"):
        aggregate([m], "median")
    c = instance_metrics(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32), "centroid")
    with pytest.raises(IrcrError, match="mix F1 modes"):
        aggregate([m, c])


# --- slow, independent oracle (loop per nucleus, dense IoU matrix) --------------------------


def _oracle(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [i for i in np.unique(pred) if i]
    inter = np.zeros((len(g_ids), len(p_ids)))
    union = np.zeros_like(inter)
    for a, gi in enumerate(g_ids):
        gm = gt == gi
        for b, pj in enumerate(p_ids):
            pm = pred == pj
            inter[a, b] = np.sum(gm & pm)
            union[a, b] = np.sum(gm | pm)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    g_area = [np.sum(gt == i) for i in g_ids]
    p_area = [np.sum(pred == j) for j in p_ids]
    c = u = 0.0
    used: set[int] = set()
    for a in range(len(g_ids)):
        if len(p_ids) == 0 or iou[a].max() == 0:
            u += g_area[a]
            continue
        b = int(np.argmax(iou[a]))  # first max = lowest id
        c, u = c + inter[a, b], u + union[a, b]
        used.add(b)
    u += sum(p_area[b] for b in range(len(p_ids)) if b not in used)
    match = iou > 0.5
    tp = int(match.sum())
    r, cidx = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    keep = iou[r, cidx] > 0
    fg_i = np.sum((gt > 0) & (pred > 0))
    return {
        "aji": c / u, "pq_tp": tp, "sq_sum": float(iou[match].sum()),
        "max_iou_total": float(iou[r[keep], cidx[keep]].sum()),
        "dice": 2 * fg_i / (np.sum(gt > 0) + np.sum(pred > 0)),
    }


def _random_map(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    seeds = rng.uniform(0, shape[0], size=(n, 2))
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    lab = np.argmin(d, axis=0) + 1
    lab[np.min(d, axis=0) > rng.uniform(9, 40)] = 0
    return (lab * rng.integers(1, 50, size=n + 1)[lab]).astype(np.int32)  # scrambled ids


def test_against_loop_per_nucleus_oracle_on_random_maps() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        gt = _random_map(rng, (48, 48), int(rng.integers(3, 25)))
        if rng.random() < 0.2:  # unrelated prediction
            pred = _random_map(rng, (48, 48), 3)
        else:  # shifted ground truth
            pred = np.roll(gt, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
        pred = np.where(rng.random(gt.shape) < 0.05, 0, pred)
        m, o = instance_metrics(gt, pred), _oracle(gt, pred)
        assert abs(m.aji - o["aji"]) < 1e-12
        assert m.pq_tp == o["pq_tp"] and abs(m.pq_iou_sum - o["sq_sum"]) < 1e-9
        assert abs(m.dice - o["dice"]) < 1e-12
        # AJI+ optimum: same total IoU as the dense Hungarian solution
        total = _matched_iou_total(gt, pred)
        assert abs(total - o["max_iou_total"]) < 1e-9


def _matched_iou_total(gt: np.ndarray, pred: np.ndarray) -> float:
    from ircr import metrics as M

    g, ag = M._relabel(gt)
    p, ap = M._relabel(pred)
    gi, pj, inter = M._pairs(g, p, ap.size - 1)
    if gi.size == 0:
        return 0.0
    iou = inter / (ag[gi] + ap[pj] - inter)
    sel = M._max_iou_matching(gi, pj, iou, ag.size - 1, ap.size - 1)
    assert np.unique(gi[sel]).size == sel.size and np.unique(pj[sel]).size == sel.size
    return float(iou[sel].sum())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8,
                                   np.int16, np.int32, np.int64])
def test_every_integer_dtype_gives_the_hand_computed_scores(dtype: type) -> None:
    """Issue 28.15: uint64 maps raised IndexError. Two nuclei: A (4 px) against A' (6 px,
    covering A), B (4 px) predicted exactly. By hand: Dice 2*8/(8+10), AJI (4+4)/(6+4),
    SQ (4/6 + 1)/2, both matched at IoU > 0.5."""
    gt = np.zeros((8, 8), dtype)
    gt[1:3, 1:3], gt[5:7, 5:7] = 1, 2
    pred = np.zeros((8, 8), dtype)
    for ids in ((2, 1), (7, 3)):  # contiguous ids are used as they are, others remapped
        pred[1:3, 1:4], pred[5:7, 5:7] = ids
        m = instance_metrics(gt, pred)
        assert _close(m.dice, 16 / 18) and _close(m.aji, 0.8) and _close(m.aji_plus, 0.8)
        assert (m.pq_tp, m.n_gt, m.n_pred) == (2, 2, 2) and _close(m.sq, (4 / 6 + 1) / 2)


def test_uint64_ids_beyond_the_int64_range_keep_their_meaning() -> None:
    gt = np.zeros((8, 8), np.uint64)
    gt[1:3, 1:3], gt[5:7, 5:7] = 1, 2**64 - 1
    pred = np.zeros((8, 8), np.uint64)
    pred[1:3, 1:4], pred[5:7, 5:7] = 2**63 + 7, 2**63
    m = instance_metrics(gt, pred)
    assert _close(m.dice, 16 / 18) and _close(m.aji, 0.8) and m.pq_tp == 2
    # no background pixel: every pixel is a nucleus, ids above 2**63 included
    full = np.full((2, 2), 2**64 - 2, np.uint64)
    assert instance_metrics(full, full).aji == 1.0
    # ties between predictions over one nucleus go to the lowest id, as with small ids
    gt2 = np.array([[1, 1, 1, 1]], np.uint64)
    big = np.array([[2**63 + 9, 2**63 + 9, 2**63 + 5, 2**63 + 5]], np.uint64)
    small = np.array([[9, 9, 5, 5]], np.uint64)
    assert instance_metrics(gt2, big) == instance_metrics(gt2, small)
