"""Instance segmentation metrics: pixel Dice, AJI, AJI+, DQ/SQ/PQ, object F1.

Per image pair (ground truth ``gt``, prediction ``pred``: (H, W) integer instance maps of any
integer dtype (uint64 included, any id value), 0 = background, ids in any order, not
necessarily contiguous, a map may have no background pixel)
:func:`instance_metrics` returns an :class:`InstanceMetrics`; :func:`aggregate` averages per
image (``mode="mean"``, the papers' convention) or pools the raw sums over images
(``mode="pooled"``).

Definitions (reference spec §5, HoVer-Net / MoNuSeg conventions):

* **Dice**: pixel Dice of the binarised maps, ``2|T∩P| / (|T| + |P|)``.
* **AJI** (MoNuSeg): every GT instance takes the prediction of highest IoU (ties go to the
  lowest prediction id; IoU compared exactly); a prediction may be taken by several GT
  instances and then counts several times (the known over-penalisation). GT without any
  overlap add their area to U; predictions never taken add theirs. ``AJI = C / U``.
* **AJI+**: the same sums over a one-to-one matching of maximum total IoU (pairs with IoU 0
  are never matched).
* **PQ**: a pair matches when IoU > 0.5 (strict; such matches are unique).
  ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``, ``PQ = DQ * SQ``.
* **F1** (object level): ``2TP / (2TP + FP + FN)``. ``f1_mode="iou"`` (default) uses the PQ
  matching (IoU > 0.5, so F1 equals DQ); ``f1_mode="centroid"`` matches GT and predicted
  centroids (mean pixel coordinates) at distance <= ``radius`` px one-to-one, TP being the
  largest number of such pairs (maximum bipartite matching); ``f1_mode="glas"`` is the GlaS
  challenge's detection rule (Sirinukunwattana et al. 2017; the F1_obj the IRCR paper cites,
  via VENet): a prediction is a TP when more than half of the GT object it overlaps most
  (ties: lowest id) lies inside it, else an FP; a GT object is an FN when no prediction
  covers more than half of it. Not one-to-one for merges: one prediction covering two
  nuclei entirely is 1 TP, 0 FP, 0 FN. "More than half" (the challenge text says "at least
  50 %"): at exactly half, two halves of one nucleus would both be TPs.

Edge cases (documented values, never NaN):

* GT and prediction both empty: every score is 1.0 (nothing to find, nothing found).
* Exactly one empty: Dice, AJI, AJI+, DQ, SQ, PQ and F1 are 0.0.
* Both non-empty but no match: SQ is 0.0 (as DQ and PQ).

Pooled aggregation uses the raw sums kept in :class:`InstanceMetrics` (Dice intersection and
sizes, AJI/AJI+ C and U, PQ TP/FP/FN/sum IoU, F1 TP/FP/FN) with the same conventions when a
denominator is zero (all images empty -> 1.0).

All pairwise intersections come from one joint bincount over remapped ids (no Python loop
over instances).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from ircr.errors import IrcrError

F1_MODES = ("iou", "centroid", "glas")
_DENSE_PAIRS = 1 << 25  # above this many (n_gt + 1) * (n_pred + 1) cells, go sparse


@dataclass(frozen=True)
class InstanceMetrics:
    """Scores of one (gt, pred) pair plus the raw sums needed to pool over images."""

    dice: float
    aji: float
    aji_plus: float
    dq: float
    sq: float
    pq: float
    f1: float
    tp: int  # object-level counts of the F1 matching (f1_mode)
    fp: int
    fn: int
    n_gt: int
    n_pred: int
    dice_inter: int  # |T ∩ P| foreground pixels
    dice_total: int  # |T| + |P|
    aji_c: int
    aji_u: int
    aji_plus_c: int
    aji_plus_u: int
    pq_tp: int
    pq_fp: int
    pq_fn: int
    pq_iou_sum: float
    f1_mode: str = "iou"

    def as_dict(self) -> dict[str, float | int | str]:
        """All fields as a plain dict (for JSON/CSV writers)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check(m: object, what: str, name: str) -> np.ndarray:
    if not isinstance(m, np.ndarray):
        raise IrcrError(f"{name}: {what} must be a numpy array, got {type(m).__name__}")
    if m.ndim != 2:
        raise IrcrError(f"{name}: {what} must be a 2-D (H, W) instance map, got shape {m.shape}")
    if m.dtype == bool:
        return m.view(np.uint8)
    if m.dtype.kind not in "iu":
        raise IrcrError(f"{name}: {what} must be an integer instance map, got dtype {m.dtype}")
    if m.size and m.dtype.kind == "i" and int(m.min()) < 0:
        raise IrcrError(f"{name}: {what} has negative ids (min {int(m.min())})")
    if m.dtype.kind == "u" and m.dtype.itemsize >= np.dtype(np.intp).itemsize:
        return _as_intp(m)  # uint64: numpy cannot index or bincount with it
    return m


def _as_intp(m: np.ndarray) -> np.ndarray:
    """An unsigned (H, W) map as intp with the same ids, or ids 1..n in the same order when
    some id exceeds the intp range (0 stays background)."""
    if not m.size or int(m.max()) <= np.iinfo(np.intp).max:
        return m.astype(np.intp)
    ids, inv = np.unique(m, return_inverse=True)
    inv = inv.reshape(m.shape).astype(np.intp)
    return inv if ids[0] == 0 else inv + 1


def _relabel(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids -> 1..n keeping their order. Returns (flat labels (intp-compatible), areas (n+1,))."""
    flat = m.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=top + 1)
        present = counts > 0
        present[0] = False
        n = int(present.sum())
        if n == top:  # already 1..n
            return flat, counts
        lut = np.cumsum(present).astype(np.int32 if n < 2**31 else np.int64)
        lut *= present
        return lut[flat], np.concatenate(([counts[0]], counts[present]))
    ids, inv = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel
        inv = inv + 1
        ids = np.concatenate(([0], ids))
    return inv.ravel(), np.bincount(inv.ravel(), minlength=ids.size)


def _pairs(g: np.ndarray, p: np.ndarray, n_p: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All overlapping (gt id, pred id, |intersection|), both ids > 0, sorted by (g, p).

    One pass: each GT id gets a representative prediction (the last one seen over it); the
    pixels agreeing with it are counted by a bincount, the few others by a sort of their
    joint codes. Exact for any maps.
    """
    both = (g > 0) & (p > 0)
    gg, pp = g[both], p[both]
    if gg.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    rep = np.zeros(int(gg.max()) + 1, pp.dtype)
    rep[gg] = pp
    agree = pp == rep[gg]
    cnt = np.bincount(gg[agree])
    gi1 = np.flatnonzero(cnt)
    other = ~agree
    code = gg[other].astype(np.int64) * (n_p + 1) + pp[other]
    u, c = np.unique(code, return_counts=True)
    gi = np.concatenate([gi1, u // (n_p + 1)])
    pj = np.concatenate([rep[gi1].astype(np.int64), u % (n_p + 1)])
    inter = np.concatenate([cnt[gi1], c])
    order = np.lexsort((pj, gi))
    return gi[order], pj[order], inter[order]


def _aji_sums(gi: np.ndarray, pj: np.ndarray, inter: np.ndarray, union: np.ndarray,
              iou: np.ndarray, ag: np.ndarray, ap: np.ndarray) -> tuple[int, int]:
    """AJI C and U (MoNuSeg): best prediction per GT (max IoU, ties -> lowest id)."""
    order = np.lexsort((pj, -iou, gi))  # by gi, then IoU descending, then lowest pred id
    first = np.ones(order.size, bool)
    first[1:] = gi[order][1:] != gi[order][:-1]
    best = order[first]
    paired_g = np.zeros(ag.size, bool)
    paired_g[gi[best]] = True
    used_p = np.zeros(ap.size, bool)
    used_p[pj[best]] = True
    c = int(inter[best].sum())
    u = int(union[best].sum()) + int(ag[1:][~paired_g[1:]].sum()) + int(ap[1:][~used_p[1:]].sum())
    return c, u


def _max_iou_matching(gi: np.ndarray, pj: np.ndarray, iou: np.ndarray, n_g: int,
                      n_p: int) -> np.ndarray:
    """Positions of pairs in a one-to-one matching of maximum total IoU (IoU > 0 pairs only).

    Pairs that are alone in their row and column are matched directly; the rest is solved as
    a full minimum-weight matching on a graph where every node may instead take a private
    dummy partner (LAPJVsp, sparse).
    """
    deg_g = np.bincount(gi, minlength=n_g + 1)
    deg_p = np.bincount(pj, minlength=n_p + 1)
    lone = (deg_g[gi] == 1) & (deg_p[pj] == 1)
    hard = np.flatnonzero(~lone)
    if hard.size == 0:
        return np.flatnonzero(lone)
    rows_u, r = np.unique(gi[hard], return_inverse=True)
    cols_u, c = np.unique(pj[hard], return_inverse=True)
    ng, npr, k = rows_u.size, cols_u.size, hard.size
    # rows: GT (ng) then dummy-pred (npr); cols: pred (npr) then dummy-GT (ng).
    # weight 2 - IoU on real edges, 2 on dummy edges: total = const - sum IoU(matched).
    rr = np.concatenate([r, np.arange(ng), ng + np.arange(npr), ng + c])
    cc = np.concatenate([c, npr + np.arange(ng), np.arange(npr), npr + r])
    ww = np.concatenate([2.0 - iou[hard], np.full(ng + npr + k, 2.0)])
    graph = sparse.csr_matrix((ww, (rr, cc)), shape=(ng + npr, npr + ng))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < ng) & (col_ind < npr)
    keys = r.astype(np.int64) * npr + c  # unique per pair
    order = np.argsort(keys)
    want = row_ind[real].astype(np.int64) * npr + col_ind[real]
    chosen = hard[order[np.searchsorted(keys, want, sorter=order)]]
    return np.sort(np.concatenate([np.flatnonzero(lone), chosen]))


def _centroid_tp(g: np.ndarray, p: np.ndarray, shape: tuple[int, int], ag: np.ndarray,
                 ap: np.ndarray, radius: float) -> int:
    """Largest number of one-to-one GT/pred pairs with centroid distance <= radius."""
    cg, cp = _centroids(g, shape, ag), _centroids(p, shape, ap)
    if cg.shape[0] == 0 or cp.shape[0] == 0:
        return 0
    near = cKDTree(cg).sparse_distance_matrix(cKDTree(cp), radius, output_type="ndarray")
    rows, cols = near["i"], near["j"]  # distance <= radius, zero distances included
    if rows.size == 0:
        return 0
    adj = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(cg.shape[0], cp.shape[0]))
    match = maximum_bipartite_matching(adj, perm_type="column")
    return int((match >= 0).sum())


def _glas_counts(gi: np.ndarray, pj: np.ndarray, inter: np.ndarray, ag: np.ndarray,
                 n_g: int, n_p: int) -> tuple[int, int, int]:
    """GlaS detection counts (TP, FP, FN) from the overlapping pairs (module docstring)."""
    if gi.size == 0:
        return 0, n_p, n_g
    # per prediction: the GT of largest overlap (ties -> lowest GT id)
    order = np.lexsort((gi, -inter, pj))
    first = np.ones(order.size, bool)
    first[1:] = pj[order][1:] != pj[order][:-1]
    best = order[first]
    tp = int((2 * inter[best] > ag[gi[best]]).sum())
    # per GT: is more than half of it inside one prediction?
    covered = np.zeros(ag.size, bool)
    covered[gi[2 * inter > ag[gi]]] = True
    return tp, n_p - tp, n_g - int(covered[1:].sum())


def _centroids(lab: np.ndarray, shape: tuple[int, int], area: np.ndarray) -> np.ndarray:
    """(n, 2) float64 (y, x) mean pixel coordinates of ids 1..n."""
    n = area.size - 1
    if n == 0:
        return np.zeros((0, 2))
    fg = np.flatnonzero(lab)
    ids = lab[fg]
    ys, xs = np.divmod(fg, shape[1])
    cy = np.bincount(ids, weights=ys, minlength=n + 1)[1:]
    cx = np.bincount(ids, weights=xs, minlength=n + 1)[1:]
    a = area[1:].astype(np.float64)
    return np.stack([cy / a, cx / a], axis=1)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den else empty


def instance_metrics(gt: np.ndarray, pred: np.ndarray, f1_mode: str = "iou",
                     radius: float = 12.0, name: str = "instance maps") -> InstanceMetrics:
    """Dice, AJI, AJI+, DQ/SQ/PQ and F1 of one pair of (H, W) integer instance maps.

    ``f1_mode``: ``"iou"`` (IoU > 0.5 one-to-one, equals DQ), ``"centroid"`` (centroids
    within ``radius`` px, one-to-one) or ``"glas"`` (GlaS: more than half of the GT object
    inside the prediction; module docstring). ``name`` (e.g. the image file) prefixes error
    messages.
    """
    g0, p0 = _check(gt, "ground truth", name), _check(pred, "prediction", name)
    if g0.shape != p0.shape:
        raise IrcrError(f"{name}: ground truth {g0.shape} and prediction {p0.shape} "
                        "differ in shape")
    if f1_mode not in F1_MODES:
        raise IrcrError(f"eval.f1_mode: must be one of {F1_MODES}, got {f1_mode!r}")
    if f1_mode == "centroid" and not radius > 0:
        raise IrcrError(f"eval.radius: must be > 0, got {radius}")
    g, ag = _relabel(g0)
    p, ap = _relabel(p0)
    n_g, n_p = ag.size - 1, ap.size - 1
    gi, pj, inter = _pairs(g, p, n_p)
    size_g, size_p = int(ag[1:].sum()), int(ap[1:].sum())
    union = ag[gi] + ap[pj] - inter
    iou = inter / union
    empty = 1.0 if n_g == 0 and n_p == 0 else 0.0

    match = 2 * inter > union  # IoU > 0.5, exactly
    tp = int(match.sum())
    iou_sum = float(iou[match].sum())
    pq_fp, pq_fn = n_p - tp, n_g - tp
    dq = _ratio(tp, tp + 0.5 * pq_fp + 0.5 * pq_fn, empty)
    sq = _ratio(iou_sum, tp, empty)

    aji_c, aji_u = _aji_sums(gi, pj, inter, union, iou, ag, ap)
    sel = _max_iou_matching(gi, pj, iou, n_g, n_p) if gi.size else np.zeros(0, np.int64)
    ajip_c = int(inter[sel].sum())
    ajip_u = int(union[sel].sum()) + size_g + size_p - int(ag[gi[sel]].sum() + ap[pj[sel]].sum())

    if f1_mode == "iou":
        f_tp, f_fp, f_fn = tp, n_p - tp, n_g - tp
    elif f1_mode == "glas":
        f_tp, f_fp, f_fn = _glas_counts(gi, pj, inter, ag, n_g, n_p)
    else:
        f_tp = _centroid_tp(g, p, g0.shape, ag, ap, radius)
        f_fp, f_fn = n_p - f_tp, n_g - f_tp
    dice_inter = int(inter.sum())
    return InstanceMetrics(
        dice=_ratio(2 * dice_inter, size_g + size_p, empty),
        aji=_ratio(aji_c, aji_u, empty), aji_plus=_ratio(ajip_c, ajip_u, empty),
        dq=dq, sq=sq, pq=dq * sq, f1=_ratio(2 * f_tp, 2 * f_tp + f_fp + f_fn, empty),
        tp=f_tp, fp=f_fp, fn=f_fn, n_gt=n_g, n_pred=n_p,
        dice_inter=dice_inter, dice_total=size_g + size_p, aji_c=aji_c, aji_u=aji_u,
        aji_plus_c=ajip_c, aji_plus_u=ajip_u, pq_tp=tp, pq_fp=pq_fp, pq_fn=pq_fn,
        pq_iou_sum=iou_sum, f1_mode=f1_mode,
    )


METRIC_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1")


def aggregate(results: list[InstanceMetrics], mode: str = "mean") -> dict[str, float]:
    """Dataset scores: ``"mean"`` of per-image scores, or ``"pooled"`` from summed counts.

    Returns dice, aji, aji_plus, dq, sq, pq, f1 plus tp, fp, fn (summed) and n_images.
    """
    if not results:
        raise IrcrError("aggregate: no per-image results to aggregate")
    if mode not in ("mean", "pooled"):
        raise IrcrError(f"eval.aggregate: must be 'mean' or 'pooled', got {mode!r}")
    if len({r.f1_mode for r in results}) > 1:
        raise IrcrError("aggregate: results mix F1 modes (iou, centroid, glas)")
    tot = {f.name: sum(getattr(r, f.name) for r in results)
           for f in fields(InstanceMetrics) if f.name not in METRIC_KEYS and f.name != "f1_mode"}
    out: dict[str, float] = {}
    if mode == "mean":
        for k in METRIC_KEYS:
            out[k] = float(np.mean([getattr(r, k) for r in results]))
    else:
        empty = 1.0 if tot["n_gt"] == 0 and tot["n_pred"] == 0 else 0.0
        tp, fp, fn = tot["pq_tp"], tot["pq_fp"], tot["pq_fn"]
        out["dice"] = _ratio(2 * tot["dice_inter"], tot["dice_total"], empty)
        out["aji"] = _ratio(tot["aji_c"], tot["aji_u"], empty)
        out["aji_plus"] = _ratio(tot["aji_plus_c"], tot["aji_plus_u"], empty)
        out["dq"] = _ratio(tp, tp + 0.5 * fp + 0.5 * fn, empty)
        out["sq"] = _ratio(tot["pq_iou_sum"], tp, empty)
        out["pq"] = out["dq"] * out["sq"]
        out["f1"] = _ratio(2 * tot["tp"], 2 * tot["tp"] + tot["fp"] + tot["fn"], empty)
    out.update(tp=float(tot["tp"]), fp=float(tot["fp"]), fn=float(tot["fn"]),
               n_images=float(len(results)))
    return out
