"""WBIS: watershed-based instance segmentation (HoVer-Net post-processing, reference spec §4).

``wbis(prob, hv)`` turns an NP foreground probability (H, W) and HV maps (2, H, W)
(channel 0 = x along columns, channel 1 = y along rows) into an int32 instance map with ids
1..K (0 = background). The steps are those of the spec:

1. ``B = prob >= threshold``; drop 4-connected components with fewer than ``min_size`` pixels.
2. Min-max-normalise x and y separately to [0, 1] (float32).
3. Sobel (ksize ``ksize``, float64, reflect-101 border): d/dx of x, d/dy of y.
4. ``S' = 1 - minmax(S)`` (float32); ``E = max(Sx', Sy')`` inside B, 0 outside.
   With ``gradient_range: fixed`` steps 2-4 use fixed ranges instead (:func:`fixed_unit`):
   ``S' = 1 - clip((Sobel(x) / (2 K) - lo) / (hi - lo), 0, 1)`` with ``K`` the Sobel response
   of a unit step (:func:`sobel_step_response`) and ``lo``/``hi`` the channel's
   ``gradient_low``/``gradient_high`` (default -0.5/0.5), so a pixel's energy depends only on
   the HV values within ``ksize // 2`` px and not on the extent of the map (slide tiles; see
   docs/benchmarks.md, "Slide tiles give the same instances").
5. Elevation ``D = -GaussianBlur((1 - E) * B, 3x3, sigma 0)`` (float64).
6. Markers: ``(B - (E >= marker_threshold)) >= 0``, fill holes, opening with an elliptical
   ``open_ksize`` kernel, 4-connected labels, drop components < ``marker_min_size`` pixels.
7. Marker-controlled watershed of D inside B (4-connectivity); output ids remapped to 1..K in
   the order of the markers' first pixel in raster order.
8. Not HoVer-Net's, off by default: with ``min_prob`` > 0, instances whose mean ``prob`` is
   below it are dropped and the rest renumbered in order (:mod:`ircr.postproc.confidence`).

``scale`` adapts the kernels to other resolutions (s = 0.5 at 20x): ``ksize = int(20 s + 1)``
and ``marker_min_size = ceil(10 s^2)`` (when those are left at their defaults); the
foreground ``min_size`` stays as given.

:func:`wbis_reference` is the plain step-by-step pipeline, kept as the oracle. :func:`wbis`
gives identical output, about 2.4x faster (docs/benchmarks.md), by: one labelling pass for
the foreground, no float64 where the values are the same in float32, fill-holes as one flood
fill from the border, small-marker removal and id remapping on the marker pixels only, and,
mostly, a smaller watershed. A foreground component holding one marker is that marker's
region whatever the flooding order, so only components with two or more markers are
flooded, only from marker pixels that touch floodable pixels, each component with its own
small heap (skimage's raveled flood on zero-bordered arrays built in place, when
:func:`ircr.compat.skimage_raw_watershed` finds it matching the public call; else the public
call). This is exact because
skimage floods by (value, age) with unique ages for all but the seeds; seeds of equal value
in one component are popped in heap order, so those ties are analysed (``_tie_harmless``)
and, when their order could matter, the plain watershed call decides. A probe
(:func:`ircr.compat.watershed_seeds_by_value`) checks that the installed skimage orders seeds
by value (0.2x does); otherwise the plain call is always used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ircr import compat
from ircr.config import bounded
from ircr.errors import IrcrError
from ircr.postproc.confidence import drop_unconfident
from ircr.postproc.gradient_range import check_bounds, fixed_unit
from ircr.postproc.gradient_range import sobel_step_response as sobel_step_response  # re-export

_FOUR = ndi.generate_binary_structure(2, 1)


@dataclass
class WBISParams:
    """Parameters of WBIS (defaults: HoVer-Net at 40x, 0.25 um/px).

    ``ksize`` and ``marker_min_size`` are the values at ``scale == 1``; with another scale
    the effective values are ``int(20 * scale + 1)`` and ``ceil(10 * scale**2)`` when the
    defaults are kept (see :meth:`effective`).

    ``gradient_range``: ``"tile"`` min-max-normalises HV and its Sobel response over each
    call, as HoVer-Net does (reference spec §4), so an instance can change with the extent of
    the map it is cut from; ``"fixed"`` uses fixed ranges (:func:`fixed_unit`), so a map
    segmented whole or in overlapping tiles gives the same instances.
    ``gradient_low``/``gradient_high`` (x, y; used by ``fixed`` only): the Sobel response of
    ``(HV + 1) / 2``, in units of ``K``, mapped to 0 and 1 (min-max would map the map's own
    extremes there; ``scripts/calibrate_gradient_range.py`` measures typical ones).
    ``min_prob``: instances whose mean ``prob`` is below it are dropped (step 8; 0 = off, as
    HoVer-Net; :mod:`ircr.postproc.confidence`).
    """

    threshold: float = bounded(0.5, 0, 1)
    min_size: int = bounded(10, 0, 10**7)
    ksize: int = 21
    marker_threshold: float = bounded(0.4, 0, 1)
    marker_min_size: int = bounded(10, 0, 10**7)
    open_ksize: int = bounded(5, 1, 255)
    scale: float = bounded(1.0, 0, 100, lo_open=True)
    gradient_range: Literal["tile", "fixed"] = "tile"
    gradient_low: tuple[float, ...] = (-0.5, -0.5)
    gradient_high: tuple[float, ...] = (0.5, 0.5)
    min_prob: float = bounded(0.0, 0, 1)

    def effective(self) -> WBISParams:
        """Return a copy with ``ksize``/``marker_min_size`` scaled and values validated."""
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise IrcrError(f"postproc.scale: must be a positive number, got {self.scale}")
        for key in ("threshold", "marker_threshold", "min_prob"):  # NaN fails the comparison
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise IrcrError(f"postproc.{key}: must be in [0, 1], got {getattr(self, key)}")
        ksize, mms = self.ksize, self.marker_min_size
        if self.scale != 1.0:
            if ksize == 21:
                ksize = int(20 * self.scale + 1)
            if mms == 10:
                mms = math.ceil(10 * self.scale**2)
        if ksize % 2 == 0:
            ksize += 1  # OpenCV needs an odd aperture
        if ksize < 1 or ksize > 31:
            raise IrcrError(f"postproc.ksize: must be an odd number in 1..31, got {ksize}")
        if self.open_ksize < 1:
            raise IrcrError(f"postproc.open_ksize: must be >= 1, got {self.open_ksize}")
        if self.min_size < 0 or mms < 0:
            raise IrcrError("postproc.min_size/marker_min_size: must be >= 0")
        if self.gradient_range not in ("tile", "fixed"):
            raise IrcrError(f"postproc.gradient_range: must be 'tile' or 'fixed', got "
                            f"{self.gradient_range!r}")
        check_bounds(self.gradient_low, self.gradient_high)
        return WBISParams(self.threshold, self.min_size, ksize, self.marker_threshold,
                          mms, self.open_ksize, 1.0, self.gradient_range,
                          tuple(self.gradient_low), tuple(self.gradient_high), self.min_prob)

    def bounds(self) -> tuple[tuple[float, float], ...] | None:
        """``((lo_x, hi_x), (lo_y, hi_y))`` for ``fixed``; None for ``tile`` (min-max)."""
        if self.gradient_range != "fixed":
            return None
        return tuple(zip(self.gradient_low, self.gradient_high))


def check_inputs(prob: np.ndarray, hv: np.ndarray, name: str = "wbis") -> None:
    """Raise :class:`IrcrError` unless prob is (H, W) and hv is (2, H, W), both finite."""
    if not isinstance(prob, np.ndarray) or prob.ndim != 2:
        raise IrcrError(f"{name}: prob must be a 2-D (H, W) array, got "
                        f"{getattr(prob, 'shape', type(prob).__name__)}")
    if prob.size == 0:
        raise IrcrError(f"{name}: prob is empty (shape {prob.shape})")
    if not isinstance(hv, np.ndarray) or hv.shape != (2, *prob.shape):
        raise IrcrError(f"{name}: hv must have shape (2, {prob.shape[0]}, {prob.shape[1]}), "
                        f"got {getattr(hv, 'shape', type(hv).__name__)}")
    for arr, what in ((prob, "prob"), (hv, "hv")):
        if arr.dtype.kind not in "fiub":
            raise IrcrError(f"{name}: {what} must be numeric, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise IrcrError(f"{name}: {what} contains NaN or infinite values")


def _minmax01(a: np.ndarray) -> np.ndarray:
    """``cv2.normalize(a, None, 0, 1, NORM_MINMAX, CV_32F)``: min-max to [0, 1] as float32."""
    out = cv2.normalize(a, None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)  # type: ignore[call-overload]
    return np.asarray(out)


def _remove_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labels of ``lab`` with fewer than ``min_size`` pixels (HN semantics: < drops)."""
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    out = lab.copy()
    out[small[lab]] = 0
    return out


def _ellipse(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def wbis_reference(prob: np.ndarray, hv: np.ndarray,
                   params: WBISParams | None = None) -> np.ndarray:
    """Plain step-by-step WBIS (the oracle for :func:`wbis`); (H, W) int32, ids 1..K."""
    check_inputs(prob, hv)
    p = (params or WBISParams()).effective()
    blb = (prob >= p.threshold).astype(np.int32)
    blb = ndi.label(blb, structure=_FOUR)[0]
    blb = _remove_small(blb, p.min_size)
    blb = (blb > 0).astype(np.int32)

    bx, by = p.bounds() or ((0.0, 0.0), (0.0, 0.0))
    if p.gradient_range == "fixed":
        sx = 1 - fixed_unit(cv2.Sobel(hv[0].astype(np.float32), cv2.CV_64F, 1, 0,
                                      ksize=p.ksize), p.ksize, *bx)
        sy = 1 - fixed_unit(cv2.Sobel(hv[1].astype(np.float32), cv2.CV_64F, 0, 1,
                                      ksize=p.ksize), p.ksize, *by)
    else:
        hx = _minmax01(hv[0].astype(np.float32))
        hy = _minmax01(hv[1].astype(np.float32))
        sx = 1 - _minmax01(cv2.Sobel(hx, cv2.CV_64F, 1, 0, ksize=p.ksize))
        sy = 1 - _minmax01(cv2.Sobel(hy, cv2.CV_64F, 0, 1, ksize=p.ksize))

    energy = np.maximum(sx, sy)
    energy = energy - (1 - blb)
    energy[energy < 0] = 0
    dist = -np.asarray(cv2.GaussianBlur((1.0 - energy) * blb, (3, 3), 0))

    eb = (energy >= p.marker_threshold).astype(np.int32)
    marker = blb - eb
    marker[marker < 0] = 0
    filled = ndi.binary_fill_holes(marker).astype(np.uint8)
    opened = cv2.morphologyEx(filled, cv2.MORPH_OPEN, _ellipse(p.open_ksize))
    labels = _remove_small(ndi.label(opened, structure=_FOUR)[0], p.marker_min_size)
    out = watershed(dist, markers=labels, mask=blb)
    return drop_unconfident(_remap(out.astype(np.int32)), prob, p.min_prob)


def _remap(lab: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids of ``lab`` to 1..K keeping their order; int32."""
    ids = np.unique(lab)
    ids = ids[ids != 0]
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[lab]


# ---------------------------------------------------------------------------------------------
# Optimised implementation
# ---------------------------------------------------------------------------------------------




def _foreground(prob: np.ndarray, p: WBISParams) -> tuple[np.ndarray, np.ndarray, int]:
    """Step 1: B (H, W) bool, its 4-connected labels (int32; small ones zeroed), label count."""
    fg = np.greater_equal(prob, p.threshold)
    n, lab = cv2.connectedComponents(fg.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n > 1 and p.min_size > 1:
        small = np.bincount(lab.ravel(), minlength=n) < p.min_size
        small[0] = False
        if small.any():
            lut = np.arange(n, dtype=np.int32)
            lut[small] = 0
            lab = lut[lab]
            fg = lab > 0
    return fg, lab, n


def _energy(hv: np.ndarray, ksize: int,
            bounds: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """Steps 2-5: the energy E (H, W) float32, equal to the spec's E inside B.

    Outside B the spec's E is 0 and it is only ever used multiplied by B, so it is left as
    is. ``max(1 - a, 1 - b) == 1 - min(a, b)`` exactly in float32 (rounding is monotone).
    ``bounds``: per channel (low, high) of the ``gradient_range: fixed`` rule
    (:func:`fixed_unit`), no min-max; None: min-max.
    """
    nrm = []
    for ch, (dx, dy) in ((0, (1, 0)), (1, (0, 1))):
        src = hv[ch] if hv.dtype == np.float32 else hv[ch].astype(np.float32)
        if bounds is not None:
            nrm.append(fixed_unit(cv2.Sobel(src, cv2.CV_64F, dx, dy, ksize=ksize), ksize,
                                  *bounds[ch]))
            continue
        n = _minmax01(src)
        s = cv2.Sobel(n, cv2.CV_64F, dx, dy, ksize=ksize)
        nrm.append(_minmax01(s))
    e = np.minimum(nrm[0], nrm[1], out=nrm[0])
    np.subtract(1, e, out=e)
    return np.maximum(e, 0, out=e)  # the spec clips E - (1 - B) at 0


def _elevation(energy: np.ndarray, blb: np.ndarray) -> np.ndarray:
    """Step 6: D = -GaussianBlur((1 - E) * B) as float64 with a zero border, (H+2, W+2)."""
    d = np.subtract(1.0, energy, dtype=np.float64)
    np.multiply(d, blb, out=d)
    h, w = d.shape
    dpad = np.zeros((h + 2, w + 2))
    inner = dpad[1:-1, 1:-1]
    if cv2.GaussianBlur(d, (3, 3), 0, dst=inner) is not inner:  # pragma: no cover
        inner[...] = cv2.GaussianBlur(d, (3, 3), 0)
    np.negative(inner, out=inner)
    return dpad


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """binary_fill_holes (4-connected background) of a uint8 0/1 map via one flood fill."""
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    cv2.floodFill(pad, None, (0, 0), 2, flags=4)
    return np.not_equal(pad[1:-1, 1:-1], 2).view(np.uint8)


def _marker_labels(energy: np.ndarray, blb: np.ndarray, p: WBISParams) -> tuple[np.ndarray, int]:
    """Step 7.1-7.5: marker labels (H, W) int32 in raster order of first pixel (small kept)."""
    m = np.less(energy, np.float64(p.marker_threshold))
    np.logical_and(m, blb, out=m)
    filled = _fill_holes(m.view(np.uint8))
    opened = cv2.morphologyEx(filled, cv2.MORPH_OPEN, _ellipse(p.open_ksize))
    lab, n = ndi.label(opened, structure=_FOUR)
    return lab, int(n)


_MAX_TIE_GROUPS = 16


def _tie_groups(comp: np.ndarray, vals: np.ndarray) -> list[np.ndarray]:
    """Positions (into comp/vals) of seeds sharing a component and an elevation value."""
    s = np.sort(vals)
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    if dup.size == 0:
        return []
    pos = np.flatnonzero(np.isin(vals, dup))
    order = np.lexsort((vals[pos], comp[pos]))
    pos = pos[order]
    c, v = comp[pos], vals[pos]
    brk = np.flatnonzero((c[1:] != c[:-1]) | (v[1:] != v[:-1])) + 1
    return [g for g in np.split(pos, brk) if g.size > 1]


def _dilate4(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def _tie_harmless(rc: np.ndarray, v: float, free: np.ndarray, d: np.ndarray) -> bool:
    """True if the pop order of equal-key seeds ``rc`` (k, 2) cannot change the flood.

    When a seed pops, it claims its free neighbours and, before the next seed of key (v, 0)
    pops, every free pixel reachable through values < v, plus their free rim. If these
    regions (computed from the initial state, a superset) are disjoint and share no value,
    every order gives the same labels and the items left on the heap never compare on age
    across regions.
    """
    low_lab = ndi.label(free & (d < v), structure=_FOUR)[0]
    seen = np.zeros(free.shape, np.int32)
    values: list[np.ndarray] = []
    h, w = free.shape
    for r, c in rc:
        nbr = np.zeros(free.shape, bool)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= rr < h and 0 <= cc < w and free[rr, cc]:
                nbr[rr, cc] = True
        ids = np.unique(low_lab[nbr])
        ids = ids[ids > 0]
        region = nbr | (_dilate4(np.isin(low_lab, ids)) & free) if ids.size else nbr
        seen += region
        values.append(np.unique(d[region]))
    if seen.max(initial=0) > 1:
        return False
    allv = np.concatenate(values)
    return bool(np.unique(allv).size == allv.size)


def _seeds(markers: np.ndarray, n: int, blb: np.ndarray,
           mms: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of kept marker pixels inside B and their ids remapped to 1..K (int32)."""
    flat = markers.ravel()
    idx = np.flatnonzero(flat)
    v = flat[idx]
    keep = np.bincount(v, minlength=n + 1) >= mms
    sel = keep[v] & blb.ravel()[idx]
    idx, v = idx[sel], v[sel]
    present = np.zeros(n + 1, bool)
    present[v] = True
    lut = np.cumsum(present, dtype=np.int32)
    return idx, lut[v]


def _ties_ok(comp: np.ndarray, sidx: np.ndarray, vals: np.ndarray, blab: np.ndarray,
             free: np.ndarray, dist: np.ndarray) -> bool:
    """True if every group of equal-valued seeds of one component is harmless.

    ``sidx`` are the seeds' flat indices into (H, W); ``free`` is the (H+2, W+2) padded map
    of floodable pixels.
    """
    groups = _tie_groups(comp, vals)
    if len(groups) > _MAX_TIE_GROUPS:
        return False
    boxes = ndi.find_objects(blab) if groups else []
    w = blab.shape[1]
    for g in groups:
        c = int(comp[g[0]])
        box = boxes[c - 1]
        if box is None:
            return False
        r0, c0 = box[0].start, box[1].start
        fbox = free[box[0].start + 1:box[0].stop + 1, box[1].start + 1:box[1].stop + 1]
        fr = (blab[box] == c) & fbox
        rc = np.stack(np.divmod(sidx[g], w), axis=1) - (r0, c0)
        if not _tie_harmless(rc, float(vals[g[0]]), fr, dist[box]):
            return False
    return True


def _pad_index(idx: np.ndarray, w: int) -> np.ndarray:
    """Flat indices into (H, W) -> flat indices into the (H+2, W+2) zero-bordered array."""
    return idx + 2 * (idx // w) + (w + 3)


def _flood_each(raw: Callable[..., None], dpad: np.ndarray, seeds: np.ndarray,
                scomp: np.ndarray, free: np.ndarray, out: np.ndarray) -> None:
    """``raw`` (skimage's raveled flood) once per component (small heaps); in place on ``out``.

    ``dpad`` (H+2, W+2) float64; ``seeds`` flat indices into it (raster order) with their
    components ``scomp``; ``free`` flat bool, the pixels to flood; ``out`` flat int32 labels.
    Components never touch, and within one the pops keep their relative (value, age) order,
    so this equals one call with all seeds, at half the cost (the heap stays in cache).
    """
    wp = dpad.shape[1]
    order = np.argsort(scomp, kind="stable")
    seeds, cs = seeds[order], scomp[order]
    cuts = np.flatnonzero(cs[1:] != cs[:-1]) + 1
    img, mask = dpad.ravel(), free.view(np.int8)
    offs, strides = np.array([-wp, -1, 1, wp], np.intp), np.array([wp, 1], np.intp)
    for part in np.split(seeds, cuts):
        raw(img, part, offs, mask, strides, 0.0, out, False)


def _flood(dist: np.ndarray, idx: np.ndarray, mval: np.ndarray, blab: np.ndarray,
           nb: int, dpad: np.ndarray | None = None) -> np.ndarray | None:
    """Step 8, identical to ``watershed(D, markers, mask=B)``; None when that is not certain.

    A B component holding one marker is that marker's region whatever the flooding order, so
    only components with two or more markers are flooded, and only from marker pixels that
    touch floodable pixels. skimage pops seeds of equal (value, age) in heap order, so this
    is exact when no two seeds of one component share a value; otherwise None is returned.
    ``dpad`` is D with a one-pixel border, (H+2, W+2) float64, if the caller has it.
    """
    comp = blab.ravel()[idx]
    rep = np.zeros(nb, np.int32)
    rep[comp] = mval
    multi = np.zeros(nb, bool)
    multi[comp[mval != rep[comp]]] = True
    if not multi.any():
        return np.take(rep, blab)
    rep[multi] = -1
    h, w = blab.shape
    wp = w + 2
    outp = np.zeros((h + 2, wp), np.int32)  # the flood's label image, zero border
    inner = outp[1:-1, 1:-1]
    np.take(rep, blab, out=inner, mode="clip")
    free = outp < 0  # pixels of multi-marker components (markers removed below)
    np.maximum(outp, 0, out=outp)
    sel = multi[comp]
    midx = idx[sel]
    pm = _pad_index(midx, w)
    of, ff = outp.ravel(), free.ravel()
    of[pm] = mval[sel]
    ff[pm] = False
    nbr = np.zeros_like(ff)  # pixels with a free 4-neighbour
    nbr[1:] = ff[:-1]
    nbr[:-1] |= ff[1:]
    nbr[wp:] |= ff[:-wp]
    nbr[:-wp] |= ff[wp:]
    touch = nbr[pm]
    seeds = pm[touch]  # raster order, as skimage's flatnonzero(markers)
    sidx = midx[touch]
    scomp = comp[sel][touch]
    if not _ties_ok(scomp, sidx, dist.ravel()[sidx], blab, free, dist):
        return None
    raw = compat.skimage_raw_watershed()
    if raw is not None:
        if dpad is None:
            dpad = np.zeros((h + 2, wp))
            dpad[1:-1, 1:-1] = dist
        _flood_each(raw, dpad, seeds, scomp, ff, of)
    else:  # public call: markers on the seeds only, mask = floodable pixels and seeds
        mk = np.zeros((h, w), np.int32)
        mk.ravel()[sidx] = of[seeds]
        fi = free[1:-1, 1:-1]
        ws = watershed(dist, markers=mk, mask=fi | (mk > 0))
        np.copyto(inner, ws, where=fi, casting="unsafe")
    return np.ascontiguousarray(inner)


def wbis(prob: np.ndarray, hv: np.ndarray, params: WBISParams | None = None) -> np.ndarray:
    """NP probability (H, W) + HV (2, H, W) -> instance map (H, W) int32, ids 1..K.

    Identical output to :func:`wbis_reference` (the spec's step-by-step pipeline), faster.
    """
    check_inputs(prob, hv)
    p = (params or WBISParams()).effective()
    blb, blab, nb = _foreground(prob, p)
    energy = _energy(hv, p.ksize, p.bounds())
    dpad = _elevation(energy, blb)
    dist = dpad[1:-1, 1:-1]
    markers, nm = _marker_labels(energy, blb, p)
    idx, mval = _seeds(markers, nm, blb, p.marker_min_size)
    by_value = compat.watershed_seeds_by_value()
    out = _flood(dist, idx, mval, blab, nb, dpad) if by_value else None
    if out is None:  # equal-valued seeds: let the plain call decide, exactly as the spec
        mk = np.zeros(markers.shape, np.int32)
        mk.ravel()[idx] = mval
        out = watershed(dist, markers=mk, mask=blb).astype(np.int32, copy=False)
    return drop_unconfident(out, prob, p.min_prob)
