"""MIAC: matching-driven instance-aware consistency (spec §2, paper Eq. 2-3).

Teacher and student instances are matched one-to-one by the Hungarian algorithm on centroid
distances; pairs farther apart than ``radius`` pixels are dropped. For the kept pairs the loss

    L = (1/N) Σ_pairs [ ||F_s·S_i - F_t·T_i||² + β ||B_s·S~_i - B_t·T~_i||² ]

with ||X||² the mean of squares over the pixels (and channels) of one image-sized map, so a
pair's term is (sum over pixels and channels of the squared difference) / (C·H·W), and
N = kept pairs in the batch (loss 0 when N = 0).

Vectorised form. Instances of one map never overlap, so with pair-index maps LS, LT
(pixel -> index of the kept pair its instance belongs to, 0 = none), per pixel p with
a = LS(p), b = LT(p):  Σ_i (F_s S_i(p) - F_t T_i(p))² equals (F_s - F_t)² if a = b ≠ 0 and
[a ≠ 0]·F_s² + [b ≠ 0]·F_t² otherwise. Boundary bands of touching instances DO overlap (a
band reaches 2 px beyond its instance), so the band term uses counts instead: with cs(p) /
ct(p) = number of kept pairs whose student / teacher band covers p and cst(p) = number of
pairs whose two bands both cover p,
Σ_i (B_s S~_i - B_t T~_i)² = cst·(B_s - B_t)² + (cs - cst)·B_s² + (ct - cst)·B_t²
(expand the square over binary S~_i, T~_i). Both terms are then one pass on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from ircr.errors import IrcrError

_SQUARE3 = np.ones((3, 3), dtype=bool)
_BAND_MARGIN = 3  # a band lies within 2 px of its instance; crops keep 3 px of context


def _check_map(inst: np.ndarray, what: str) -> np.ndarray:
    inst = np.asarray(inst)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise IrcrError(f"{what}: expected an (H, W) integer instance map, got {inst.dtype} "
                        f"{inst.shape}")
    return inst


def centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pixel coordinates of every instance.

    Returns (ids (K,) int64 ascending, (K, 2) float64 (row, col)).
    """
    inst = _check_map(inst, "centroids")
    flat = inst.ravel().astype(np.int64)
    rows, cols = np.divmod(np.arange(flat.size), inst.shape[1])
    if flat.size and 0 <= flat.min() and flat.max() <= 4 * flat.size:
        dense = flat  # ids are small non-negative ints: bins by id, no sort (the usual case)
        counts = np.bincount(dense)
        ids = np.flatnonzero(counts)
    else:
        ids, dense = np.unique(flat, return_inverse=True)
        counts = np.bincount(dense, minlength=ids.size)
    n = counts.size
    cy = np.bincount(dense, weights=rows, minlength=n)
    cx = np.bincount(dense, weights=cols, minlength=n)
    if dense is flat:
        cnt: np.ndarray = counts[ids].astype(np.float64)
        cy, cx = cy[ids], cx[ids]
    else:
        cnt = counts.astype(np.float64)
    cy, cx = cy / cnt, cx / cnt
    keep = ids != 0
    return ids[keep].astype(np.int64), np.stack([cy[keep], cx[keep]], axis=1)


def match_instances(t_inst: np.ndarray, s_inst: np.ndarray,
                    radius: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one Hungarian matching of teacher and student instances by centroid distance.

    Returns (pairs (P, 2) int64 of (teacher_id, student_id), distances (P,) float64), keeping
    only pairs with distance <= ``radius`` pixels; sorted by teacher id.
    """
    tid, tc = centroids(t_inst)
    sid, sc = centroids(s_inst)
    if tid.size == 0 or sid.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    cost = np.sqrt(((tc[:, None, :] - sc[None, :, :]) ** 2).sum(axis=2))
    ri, ci = linear_sum_assignment(cost)
    d = cost[ri, ci]
    keep = d <= radius
    return np.stack([tid[ri[keep]], sid[ci[keep]]], axis=1).astype(np.int64), d[keep]


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Band (H, W) bool of a binary mask: Sobel magnitude ≠ 0, dilated by a 3x3 square.

    Sobel uses 'nearest' padding, so the image edge is not a boundary.
    """
    m = np.asarray(mask, dtype=np.float64)
    edge = (ndi.sobel(m, axis=0, mode="nearest") != 0) | (ndi.sobel(m, axis=1, mode="nearest") != 0)
    return np.asarray(ndi.binary_dilation(edge, structure=_SQUARE3))


@dataclass
class PairMaps:
    """Pixel maps of the kept pairs (one image (H, W) or a batch (B, H, W)).

    Attributes:
        lt, ls: int32 pair index (1..P per image) of the teacher / student instance, 0 = none.
        band_t, band_s: uint8 number of kept pairs whose teacher / student band covers a pixel.
        band_ts: uint8 number of kept pairs whose teacher AND student bands both cover it.
        n_pairs: kept pairs in total (the N of the loss).
    """

    lt: np.ndarray
    ls: np.ndarray
    band_t: np.ndarray
    band_s: np.ndarray
    band_ts: np.ndarray
    n_pairs: int


def pair_index_maps(t_inst: np.ndarray, s_inst: np.ndarray, pairs: np.ndarray,
                    bands: bool = True) -> PairMaps:
    """Pair-index and band-count maps of one image for ``pairs`` (P, 2) (teacher_id, student_id).

    Bands are computed per pair on a crop around both instances (3 px of context), which gives
    exactly :func:`boundary_band` of the full-size instance mask. ``bands=False`` leaves the
    band counts 0 (they are then computed on the device by :mod:`ircr.ssl.band_maps`).
    """
    t_inst, s_inst = _check_map(t_inst, "MIAC teacher"), _check_map(s_inst, "MIAC student")
    if t_inst.shape != s_inst.shape:
        raise IrcrError(f"MIAC: teacher {t_inst.shape} and student {s_inst.shape} maps differ")
    h, w = t_inst.shape
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    p = pairs.shape[0]
    out = PairMaps(np.zeros((h, w), np.int32), np.zeros((h, w), np.int32),
                   np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8),
                   np.zeros((h, w), np.uint8), p)
    if p == 0:
        return out
    for side, inst, ids in (("lt", t_inst, pairs[:, 0]), ("ls", s_inst, pairs[:, 1])):
        lut = np.zeros(int(max(inst.max(), ids.max())) + 1, dtype=np.int32)
        lut[ids] = np.arange(1, p + 1, dtype=np.int32)
        setattr(out, side, lut[inst])
    if not bands:
        return out
    t_obj = ndi.find_objects(t_inst.astype(np.int64), max_label=int(pairs[:, 0].max()))
    s_obj = ndi.find_objects(s_inst.astype(np.int64), max_label=int(pairs[:, 1].max()))
    for tid, sid in pairs:
        ts, ss = t_obj[tid - 1], s_obj[sid - 1]
        if ts is None or ss is None:
            raise IrcrError(f"MIAC: pair ({tid}, {sid}) names an instance absent from its map")
        y0 = max(min(ts[0].start, ss[0].start) - _BAND_MARGIN, 0)
        x0 = max(min(ts[1].start, ss[1].start) - _BAND_MARGIN, 0)
        y1 = min(max(ts[0].stop, ss[0].stop) + _BAND_MARGIN, h)
        x1 = min(max(ts[1].stop, ss[1].stop) + _BAND_MARGIN, w)
        bt = boundary_band(t_inst[y0:y1, x0:x1] == tid)
        bs = boundary_band(s_inst[y0:y1, x0:x1] == sid)
        out.band_t[y0:y1, x0:x1] += bt
        out.band_s[y0:y1, x0:x1] += bs
        out.band_ts[y0:y1, x0:x1] += bt & bs
    return out


def batch_pair_maps(t_insts: np.ndarray, s_insts: np.ndarray,
                    radius: float = 1.5) -> tuple[PairMaps, list[np.ndarray]]:
    """Match and build :class:`PairMaps` for a batch of (B, H, W) teacher/student maps.

    Returns (stacked maps with n_pairs = total kept pairs, per-image kept-pair distances).
    """
    t_insts, s_insts = np.asarray(t_insts), np.asarray(s_insts)
    if t_insts.ndim != 3 or t_insts.shape != s_insts.shape:
        raise IrcrError(f"MIAC: expected two (B, H, W) maps of equal shape, got "
                        f"{t_insts.shape} and {s_insts.shape}")
    maps, dists = [], []
    for t, s in zip(t_insts, s_insts):
        pairs, d = match_instances(t, s, radius)
        maps.append(pair_index_maps(t, s, pairs))
        dists.append(d)
    if not maps:
        z, u8 = np.zeros(t_insts.shape, np.int32), np.zeros(t_insts.shape, np.uint8)
        return PairMaps(z, z.copy(), u8, u8.copy(), u8.copy(), 0), dists
    stack = {k: np.stack([getattr(m, k) for m in maps])
             for k in ("lt", "ls", "band_t", "band_s", "band_ts")}
    return PairMaps(n_pairs=sum(m.n_pairs for m in maps), **stack), dists


def _as_bchw(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim != 4:
        raise IrcrError(f"MIAC: {what} must be (B, C, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x


def miac_loss(f_s: torch.Tensor, f_t: torch.Tensor, b_s: torch.Tensor, b_t: torch.Tensor,
              lt: torch.Tensor | np.ndarray, ls: torch.Tensor | np.ndarray,
              band_t: torch.Tensor | np.ndarray, band_s: torch.Tensor | np.ndarray,
              band_ts: torch.Tensor | np.ndarray, beta: float = 0.5,
              n_pairs: int | None = None) -> tuple[torch.Tensor, int]:
    """Vectorised L_MIAC of a batch (see module docstring for the identity).

    Args:
        f_s, f_t: (B, C, H, W) student / teacher features (NP prob + HV).
        b_s, b_t: (B, H, W) or (B, 1, H, W) student / teacher NP probability.
        lt, ls: (B, H, W) pair-index maps (1..P_b per image); band_t, band_s, band_ts: (B, H, W)
            band counts (see :class:`PairMaps`).
        beta: weight of the boundary term.
        n_pairs: N (kept pairs in the batch); default Σ_b max(lt_b).

    Returns:
        (loss scalar tensor, N); the loss is 0 (still a graph-connected tensor) when N = 0.
    """
    if f_s.ndim != 4 or f_s.shape != f_t.shape:
        raise IrcrError(f"MIAC: F_s {tuple(f_s.shape)} and F_t {tuple(f_t.shape)} must be the "
                        "same (B, C, H, W)")
    bsz, c, h, w = f_s.shape
    dev = f_s.device

    def t_(x: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        x = torch.as_tensor(x, device=dev).to(dtype)
        if tuple(x.shape) != (bsz, h, w):
            raise IrcrError(f"MIAC: map of shape {tuple(x.shape)}, expected {(bsz, h, w)}")
        return x

    a, b = t_(ls, torch.int64), t_(lt, torch.int64)
    if n_pairs is None:
        n_pairs = int(b.flatten(1).amax(dim=1).sum().item()) if bsz else 0
    if n_pairs == 0:
        return f_s.sum() * 0.0, 0
    same = ((a == b) & (a != 0)).unsqueeze(1).to(f_s.dtype)
    ins, int_ = (a != 0).unsqueeze(1).to(f_s.dtype), (b != 0).unsqueeze(1).to(f_s.dtype)
    f_term = same * (f_s - f_t) ** 2 + (1 - same) * (ins * f_s**2 + int_ * f_t**2)
    bs, bt = _as_bchw(b_s, "B_s"), _as_bchw(b_t, "B_t")
    cs, ct, cst = (t_(x, f_s.dtype).unsqueeze(1) for x in (band_s, band_t, band_ts))
    b_term = cst * (bs - bt) ** 2 + (cs - cst) * bs**2 + (ct - cst) * bt**2
    total = f_term.sum() / (c * h * w) + beta * b_term.sum() / (bs.shape[1] * h * w)
    return total / n_pairs, n_pairs


def miac_loss_naive(f_s: torch.Tensor, f_t: torch.Tensor, b_s: torch.Tensor, b_t: torch.Tensor,
                    t_insts: np.ndarray, s_insts: np.ndarray, radius: float = 1.5,
                    beta: float = 0.5) -> tuple[torch.Tensor, int]:
    """Literal per-pair Eq. 3 (one full-size mask per pair); reference for the tests only."""
    terms, n = [], 0
    bs, bt = _as_bchw(b_s, "B_s"), _as_bchw(b_t, "B_t")
    for i in range(f_s.shape[0]):
        pairs, _ = match_instances(t_insts[i], s_insts[i], radius)
        for tid, sid in pairs:
            sm = torch.as_tensor(s_insts[i] == sid, dtype=f_s.dtype)
            tm = torch.as_tensor(t_insts[i] == tid, dtype=f_s.dtype)
            sb = torch.as_tensor(boundary_band(s_insts[i] == sid), dtype=f_s.dtype)
            tb = torch.as_tensor(boundary_band(t_insts[i] == tid), dtype=f_s.dtype)
            f = ((f_s[i] * sm - f_t[i] * tm) ** 2).mean()
            bterm = ((bs[i] * sb - bt[i] * tb) ** 2).mean()
            terms.append(f + beta * bterm)
            n += 1
    if n == 0:
        return f_s.sum() * 0.0, 0
    return torch.stack(terms).sum() / n, n
