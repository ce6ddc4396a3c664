"""Painting detections into instance maps (ircr.postproc.detections), checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ircr.errors import IrcrError
from ircr.postproc.detections import PaintParams, keep_top, paint_detections


def _square(y0: int, x0: int, size: int, shape: tuple[int, int] = (10, 10),
            p: float = 0.9) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    m[y0:y0 + size, x0:x0 + size] = p
    return m


def test_higher_score_wins_overlap_and_first_detection_is_kept() -> None:
    # A: rows/cols 1-4 (score 0.6), B: rows/cols 3-6 (score 0.9); they share rows/cols 3-4.
    masks = np.stack([_square(1, 1, 4), _square(3, 3, 4)])[:, None]  # (K, 1, H, W)
    out = paint_detections(np.array([0.6, 0.9]), masks, PaintParams(score_threshold=0.5))
    want = np.zeros((10, 10), np.int32)
    want[1:5, 1:5] = 2
    want[3:7, 3:7] = 1  # B (best score) is id 1 and owns the 2x2 overlap
    np.testing.assert_array_equal(out.inst, want)
    assert out.scores.tolist() == pytest.approx([0.9, 0.6])
    assert out.source.tolist() == [1, 0]
    # the first detection in the list (index 0) is painted, not lost as in the reference
    assert (out.inst == 2).sum() == 16 - 4


def test_thresholds_score_strict_and_mask_inclusive() -> None:
    masks = np.stack([_square(0, 0, 3, p=0.5), _square(5, 5, 3, p=0.49), _square(0, 5, 2)])
    out = paint_detections(np.array([0.8, 0.7, 0.5]), masks, PaintParams(score_threshold=0.5))
    # detection 0: p = 0.5 >= 0.5 -> 9 px; detection 1: p 0.49 < 0.5 -> nothing;
    # detection 2: score 0.5 is not > 0.5 -> dropped
    assert out.inst.max() == 1 and (out.inst == 1).sum() == 9
    assert out.source.tolist() == [0]


def test_empty_detections_give_zeros() -> None:
    out = paint_detections(np.zeros(0), np.zeros((0, 1, 7, 5), np.float32))
    assert out.inst.shape == (7, 5) and not out.inst.any() and out.scores.size == 0
    out = paint_detections(np.zeros(0), np.zeros(0), shape=(3, 4))
    assert out.inst.shape == (3, 4) and not out.inst.any()


def _cut_in_two() -> tuple[np.ndarray, np.ndarray]:
    # A low-score bar rows 2-3, cols 0-9 cut in two by a high-score square cols 4-6
    bar = np.zeros((10, 10), np.float32)
    bar[2:4, 0:10] = 0.9
    cut = np.zeros((10, 10), np.float32)
    cut[0:6, 4:7] = 0.9
    return np.array([0.6, 0.95]), np.stack([bar, cut])


def test_fragments_largest_keeps_the_bigger_piece() -> None:
    scores, masks = _cut_in_two()
    out = paint_detections(scores, masks, PaintParams(fragments="largest"))
    # bar pieces: cols 0-3 (8 px) and cols 7-9 (6 px): the left piece stays
    assert (out.inst == 1).sum() == 18
    assert (out.inst == 2).sum() == 8 and out.inst[2:4, 0:4].min() == 2
    assert not out.inst[2:4, 7:10].any()


def test_fragments_split_and_keep() -> None:
    scores, masks = _cut_in_two()
    split = paint_detections(scores, masks, PaintParams(fragments="split"))
    assert split.inst.max() == 3 and split.source.tolist() == [1, 0, 0]
    assert (split.inst == 2).sum() == 8 and (split.inst == 3).sum() == 6
    keep = paint_detections(scores, masks, PaintParams(fragments="keep"))
    assert keep.inst.max() == 2 and (keep.inst == 2).sum() == 14


def test_min_area_and_fully_covered_detection_are_dropped_ids_stay_contiguous() -> None:
    masks = np.stack([_square(0, 0, 4), _square(1, 1, 2), _square(6, 6, 1), _square(6, 0, 3)])
    out = paint_detections(np.array([0.9, 0.8, 0.7, 0.6]), masks, PaintParams(min_area=2))
    # detection 1 lies inside detection 0 (lost every pixel); detection 2 has 1 px < 2
    assert out.source.tolist() == [0, 3]
    assert sorted(np.unique(out.inst).tolist()) == [0, 1, 2]


def test_dilation_grows_into_background_only() -> None:
    masks = np.stack([_square(2, 2, 2), _square(2, 5, 2)])  # cols 2-3 and 5-6, gap col 4
    out = paint_detections(np.array([0.9, 0.8]), masks, PaintParams(dilate=1))
    # a 2x2 square grows by a cross to 12 px; the gap column 4 (rows 2-3) touches both
    # and goes to the better one (id 1); id 2 cannot take it back
    assert out.inst[2, 4] == 1 and out.inst[3, 4] == 1
    assert (out.inst == 1).sum() == 12 and (out.inst == 2).sum() == 10
    assert out.inst[1, 2] == 1 and out.inst[1, 1] == 0  # cross, not 3x3 square


def test_keep_top_equals_painting_only_the_kept_detections() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((12, 20, 20)).astype(np.float32) ** 3
    masks = np.stack([np.where(_square(*rng.integers(0, 14, 2), 6, (20, 20)) > 0, 0.9, m)
                      for m in masks])
    scores = rng.random(12)
    full = paint_detections(scores, masks, PaintParams(score_threshold=0.1))
    for t in (0.1, 0.3, 0.5, 0.8):
        direct = paint_detections(scores, masks, PaintParams(score_threshold=t))
        np.testing.assert_array_equal(keep_top(full.inst, full.scores, t), direct.inst)


def test_bad_input_is_a_one_line_error() -> None:
    with pytest.raises(IrcrError, match="masks must be"):
        paint_detections(np.ones(2), np.zeros((3, 4, 4)))
    with pytest.raises(IrcrError, match="paint.dilate"):
        paint_detections(np.ones(1), np.zeros((1, 4, 4)), PaintParams(dilate=2))
    with pytest.raises(IrcrError, match="paint.fragments"):
        PaintParams(fragments="merge").check()
