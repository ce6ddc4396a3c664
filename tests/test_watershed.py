"""WBIS on synthetic maps: parameters, errors, splitting, exactness of the fast path, batch."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ircr import compat
from ircr.config import from_dict
from ircr.data.targets import hover_targets
from ircr.engine.tiling import Tile, stitch_image
from ircr.errors import IrcrError
from ircr.metrics import instance_metrics
from ircr.postproc import WBISParams, wbis, wbis_batch, wbis_reference
from ircr.postproc import batch as batch_mod
from ircr.postproc import watershed as W


def _discs(shape: tuple[int, int], centres: list[tuple[int, int, int]]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(centres, 1):
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return inst


def _random_inst(rng: np.random.Generator, size: int = 128, n: int = 30) -> np.ndarray:
    cs = [(int(rng.integers(0, size)), int(rng.integers(0, size)), int(rng.integers(4, 11)))
          for _ in range(n)]
    return _discs((size, size), cs)


def _noisy(rng: np.random.Generator, inst: np.ndarray, sigma: float
           ) -> tuple[np.ndarray, np.ndarray]:
    npt, hv = hover_targets(inst)
    prob = ndi.gaussian_filter(npt.astype(np.float32), 1.2) + rng.normal(0, sigma, npt.shape)
    hv = ndi.gaussian_filter(hv, (0, 1, 1)) + rng.normal(0, sigma, hv.shape)
    return np.clip(prob, 0, 1).astype(np.float32), hv.astype(np.float32)


def test_params_scale_and_validation() -> None:
    p = WBISParams().effective()
    assert (p.ksize, p.marker_min_size, p.min_size) == (21, 10, 10)
    p = WBISParams(scale=0.5).effective()
    assert (p.ksize, p.marker_min_size, p.min_size) == (11, 3, 10)  # int(20 s + 1), ceil(10 s^2)
    assert WBISParams(ksize=15, scale=0.5).effective().ksize == 15  # explicit value wins
    for bad in (WBISParams(scale=0), WBISParams(ksize=33), WBISParams(open_ksize=0)):
        with pytest.raises(IrcrError, match="postproc"):
            bad.effective()


@pytest.mark.parametrize(
    ("prob", "hv", "msg"),
    [
        (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32), "2-D"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.float32), "shape"),
        (np.full((8, 8), np.nan, np.float32), np.zeros((2, 8, 8), np.float32), "NaN"),
        (np.zeros((8, 8), "U1"), np.zeros((2, 8, 8), np.float32), "numeric"),
        (np.zeros((0, 8), np.float32), np.zeros((2, 0, 8), np.float32), "empty"),
    ],
)
def test_bad_inputs(prob: np.ndarray, hv: np.ndarray, msg: str) -> None:
    for fn in (wbis, wbis_reference):
        with pytest.raises(IrcrError, match=msg):
            fn(prob, hv)


def test_two_touching_nuclei_are_split_with_ids_1_to_k() -> None:
    inst = _discs((64, 64), [(32, 22, 11), (32, 41, 10)])  # overlapping discs: they touch
    npt, hv = hover_targets(inst)
    assert ndi.label(npt)[1] == 1  # one foreground blob
    out = wbis(npt.astype(np.float32), hv)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1, 2}
    m = instance_metrics(inst, out)
    assert m.pq_tp == 2 and m.aji > 0.9


def test_empty_and_small_foreground() -> None:
    z = np.zeros((40, 40), np.float32)
    hv = np.zeros((2, 40, 40), np.float32)
    assert not wbis(z, hv).any() and wbis(z, hv).dtype == np.int32
    prob = z.copy()
    prob[5:8, 5:8] = 1.0  # 9 px < min_size 10: dropped
    assert not wbis(prob, hv).any()
    ones = np.ones((40, 40), np.float32)  # no background at all
    assert np.array_equal(wbis(ones, hv), wbis_reference(ones, hv))


def test_fill_holes_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    for p in (0.3, 0.5, 0.7):
        m = (rng.random((60, 70)) < p).astype(np.uint8)
        assert np.array_equal(W._fill_holes(m).astype(bool), ndi.binary_fill_holes(m))


@pytest.mark.parametrize(
    "params",
    [None, WBISParams(scale=0.5), WBISParams(threshold=0.3, marker_threshold=0.5),
     WBISParams(min_size=40, marker_min_size=25, open_ksize=3, ksize=11),
     WBISParams(gradient_range="fixed"), WBISParams(gradient_range="fixed", scale=0.5),
     WBISParams(gradient_range="fixed", gradient_low=(-0.3, -0.4), gradient_high=(0.4, 0.5))],
)
def test_fast_equals_reference_on_synthetic(params: WBISParams | None) -> None:
    rng = np.random.default_rng(1)
    for k in range(6):
        inst = _random_inst(rng)
        prob, hv = _noisy(rng, inst, sigma=(0.0, 0.05, 0.2)[k % 3])
        assert np.array_equal(wbis(prob, hv, params), wbis_reference(prob, hv, params))
    prob64, hv64 = prob.astype(np.float64), hv.astype(np.float64)  # other dtypes too
    assert np.array_equal(wbis(prob64, hv64, params), wbis_reference(prob64, hv64, params))


def _flood_case(rng: np.random.Generator, levels: int) -> tuple[np.ndarray, tuple]:
    blb = ndi.binary_opening(rng.random((40, 40)) < 0.8)
    blab = ndi.label(blb)[0].astype(np.int32)
    dist = -np.round(rng.random(blb.shape) * levels) / levels  # many equal values
    mk = ndi.label(rng.random(blb.shape) < 0.25)[0] * blb
    idx = np.flatnonzero(mk)
    present = np.zeros(int(mk.max()) + 1, bool)
    present[mk.ravel()[idx]] = True
    lut = np.cumsum(present).astype(np.int32)
    ref = watershed(dist, markers=np.where(mk > 0, lut[mk], 0), mask=blb)
    return ref, (dist, idx, lut[mk.ravel()[idx]], blab, int(blab.max()) + 1)


def test_flood_is_exact_or_declines_when_seeds_tie(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "_MAX_TIE_GROUPS", 10**9)
    rng = np.random.default_rng(2)
    cases = [_flood_case(rng, (3, 10, 300, 1000, 3000)[i % 5]) for i in range(400)]
    done = 0
    for ref, args in cases:
        out = W._flood(*args)
        if out is not None:
            done += 1
            assert np.array_equal(out, ref)
    assert done >= 20  # the tie analysis lets some tied cases through, exactly
    # without the analysis, ties do change the result: the check is needed
    monkeypatch.setattr(W, "_ties_ok", lambda *a: True)
    wrong = sum(not np.array_equal(np.asarray(W._flood(*args)), ref) for ref, args in cases)
    assert wrong > 50


def test_plain_path_when_skimage_seed_order_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compat.watershed_seeds_by_value() is True  # skimage 0.2x pops seeds by value
    monkeypatch.setattr(compat, "watershed_seeds_by_value", lambda: False)
    rng = np.random.default_rng(3)
    prob, hv = _noisy(rng, _random_inst(rng), 0.1)
    assert np.array_equal(wbis(prob, hv), wbis_reference(prob, hv))


@pytest.mark.parametrize(("workers", "backend"), [(0, "thread"), (2, "thread"), (2, "process")])
def test_batch_equals_single(workers: int, backend: str) -> None:
    rng = np.random.default_rng(4)
    pairs = [_noisy(rng, _random_inst(rng, 96, 20), 0.1) for _ in range(4)]
    probs = np.stack([p for p, _ in pairs])
    hvs = np.stack([h for _, h in pairs])
    out = wbis_batch(probs, hvs, workers=workers, backend=backend)
    assert len(out) == 4
    for o, (p, h) in zip(out, pairs):
        assert np.array_equal(o, wbis(p, h))
    batch_mod.shutdown_pools()


def test_batch_errors() -> None:
    p = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(IrcrError, match="2 probability maps but 1"):
        wbis_batch(p, np.zeros((1, 2, 16, 16), np.float32))
    with pytest.raises(IrcrError, match="workers"):
        wbis_batch(p, np.zeros((2, 2, 16, 16), np.float32), workers=-1)
    with pytest.raises(IrcrError, match="backend"):
        wbis_batch(p, np.zeros((2, 2, 16, 16), np.float32), workers=2, backend="gpu")


def test_flood_without_skimage_raw_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compat.skimage_raw_watershed() is not None  # skimage 0.2x: passes the probe
    monkeypatch.setattr(compat, "skimage_raw_watershed", lambda: None)  # the public call
    rng = np.random.default_rng(5)
    for k in range(3):
        prob, hv = _noisy(rng, _random_inst(rng), (0.0, 0.05, 0.2)[k])
        assert np.array_equal(wbis(prob, hv), wbis_reference(prob, hv))
    done = 0
    for i in range(60):
        ref, args = _flood_case(rng, (300, 3000)[i % 2])
        out = W._flood(*args)
        if out is not None:
            done += 1
            assert np.array_equal(out, ref)
    assert done >= 5


def test_sobel_step_response_by_hand() -> None:
    # ksize 3: derivative [-1, 0, 1] (positive taps 1) x smoothing [1, 2, 1] (sum 4)
    assert W.sobel_step_response(3) == 4.0
    # ksize 5: derivative [-1, -2, 0, 2, 1] (positive taps 3) x [1, 4, 6, 4, 1] (sum 16)
    assert W.sobel_step_response(5) == 48.0
    assert W.sobel_step_response(1) == 1.0  # OpenCV's unsmoothed [-1, 0, 1]
    # ksize 25 (the packaged model): C(23, 11) = 1,352,078 times 2^24
    assert W.sobel_step_response(25) == 1352078.0 * 2**24


def test_fixed_unit_by_hand() -> None:
    # HV x = 0.1 * column: ksize 3 Sobel = (x[c+1] - x[c-1]) * (1 + 2 + 1) = 0.8 inside;
    # fixed unit 0.5 + 0.8 / (2 * 4) = 0.6. A -1 -> +1 jump gives 2 * 4 = 8 -> 1.5, clipped 1.
    ramp = np.tile(0.1 * np.arange(10, dtype=np.float32), (6, 1))
    out = W.fixed_unit(cv2.Sobel(ramp, cv2.CV_64F, 1, 0, ksize=3), 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1:-1], 0.6, rtol=1e-6)
    step = np.where(np.arange(10) < 5, -1.0, 1.0).astype(np.float32)[None].repeat(6, 0)
    out = W.fixed_unit(cv2.Sobel(step, cv2.CV_64F, 1, 0, ksize=3), 3)
    assert out[:, 4:6].min() == 1.0 and out[:, 0].max() == 0.5  # clipped; flat = 0.5
    with pytest.raises(IrcrError, match="postproc.gradient_range"):
        WBISParams(gradient_range="slide").effective()  # type: ignore[arg-type]
    with pytest.raises(IrcrError, match="m/postproc.yaml: config key 'gradient_range'"):
        from_dict(WBISParams, {"gradient_range": "slide"}, where="m/postproc.yaml")


def test_fixed_unit_bounds_by_hand() -> None:
    # the ramp of test_fixed_unit_by_hand: Sobel / (2 K) = 0.8 / 8 = 0.1 K inside
    ramp = np.tile(0.1 * np.arange(10, dtype=np.float32), (6, 1))
    sob = cv2.Sobel(ramp, cv2.CV_64F, 1, 0, ksize=3)
    # (0.1 - 0.05) / (0.25 - 0.05) = 0.25; (0.1 + 0.15) / (0.25 + 0.15) = 0.625
    np.testing.assert_allclose(W.fixed_unit(sob, 3, 0.05, 0.25)[:, 1:-1], 0.25, rtol=1e-6)
    np.testing.assert_allclose(W.fixed_unit(sob, 3, -0.15, 0.25)[:, 1:-1], 0.625, rtol=1e-6)
    flat = np.zeros((6, 10))  # 0 K: (0 - 0.05) / 0.2 < 0 -> clipped to 0
    assert W.fixed_unit(flat, 3, 0.05, 0.25).max() == 0.0
    assert np.array_equal(W.fixed_unit(sob, 3), W.fixed_unit(sob, 3, -0.5, 0.5))


def _hv_disc(r: int) -> tuple[np.ndarray, np.ndarray]:
    """One disc of radius r in a 40 x 40 map, HV = offset / r (x along columns, y rows)."""
    yy, xx = np.mgrid[:40, :40].astype(np.float32) - 20
    inside = (xx**2 + yy**2 <= r * r).astype(np.float32)
    return inside, np.stack([xx / r, yy / r]) * inside


def test_gradient_bounds_move_the_marker_cut() -> None:
    # inside the disc Sobel(HV) / (2 K) = (2 / r) * 4 / 8 = 1 / r = 0.1 K (ksize 3, r 10).
    # Cut (marker_threshold 0.5) at the bounds' midpoint: 0.05 K < 0.1 -> E = 1 - 0.625 <
    # 0.5, a marker, one nucleus; 0.15 K > 0.1 -> E = 1 - 0.25 >= 0.5, no marker, none.
    prob, hv = _hv_disc(10)
    base = {"gradient_range": "fixed", "ksize": 3, "marker_threshold": 0.5}
    low = WBISParams(**base, gradient_low=(-0.15, -0.15), gradient_high=(0.25, 0.25))
    high = WBISParams(**base, gradient_low=(0.05, 0.05), gradient_high=(0.25, 0.25))
    for fn in (wbis, wbis_reference):
        assert fn(prob, hv, low).max() == 1
        assert fn(prob, hv, high).max() == 0
    # per channel: a cut above 0.1 K in y alone removes the marker too (E = max over x, y)
    y_only = WBISParams(**base, gradient_low=(-0.15, 0.05), gradient_high=(0.25, 0.25))
    assert wbis(prob, hv, y_only).max() == 0


@pytest.mark.parametrize("values, match", [
    ({"gradient_low": (0.1,)}, "postproc.gradient_low: must be two numbers"),
    ({"gradient_high": (0.5, 1.5)}, "postproc.gradient_high: must be two numbers"),
    ({"gradient_low": (float("nan"), 0.0)}, "postproc.gradient_low: must be two numbers"),
    ({"gradient_low": (0.2, 0.0), "gradient_high": (0.1, 0.5)}, "below gradient_high"),
])
def test_gradient_bounds_are_validated(values: dict, match: str) -> None:
    with pytest.raises(IrcrError, match=match):
        WBISParams(gradient_range="fixed", **values).effective()


def test_gradient_bounds_from_yaml() -> None:
    p = from_dict(WBISParams, {"gradient_range": "fixed", "gradient_low": [-0.2, -0.3],
                               "gradient_high": [0.3, 0.4]}, where="m/postproc.yaml")
    assert p.effective().bounds() == ((-0.2, 0.3), (-0.3, 0.4))
    assert WBISParams().bounds() is None  # tile: min-max, the bounds are unused
    with pytest.raises(IrcrError, match="m/postproc.yaml: config key 'gradient_low'"):
        from_dict(WBISParams, {"gradient_low": "low"}, where="m/postproc.yaml")


@pytest.mark.parametrize("bounds", [{}, {"gradient_low": (-0.394, -0.386),
                                         "gradient_high": (0.385, 0.384)}])
def test_fixed_range_instances_do_not_depend_on_the_tiling(bounds: dict) -> None:
    """Whole map vs 3 x 3 stitched tiles of it: identical with fixed ranges."""
    rng = np.random.default_rng(3)
    cs = [(int(rng.integers(8, 232)), int(rng.integers(8, 232)), int(rng.integers(5, 10)))
          for _ in range(70)]
    prob, hv = _noisy(rng, _discs((240, 240), cs), sigma=0.05)
    hv[:, :60, :60] *= 0.5  # a weaker corner: min-max ranges differ from tile to tile
    p = WBISParams(gradient_range="fixed", **bounds)
    whole = wbis(prob, hv, p)

    def window(t: Tile) -> np.ndarray:
        y0, x0, y1, x1 = t.read
        return wbis(prob[y0:y1, x0:x1].copy(), hv[:, y0:y1, x0:x1].copy(), p)

    stitched, _ = stitch_image(240, 240, window, 80, 40)
    assert whole.max() > 40
    assert stitched.max() == whole.max()
    assert instance_metrics(whole, stitched).aji == 1.0
