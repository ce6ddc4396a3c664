"""BASS stage 2: count-matching threshold, TTA merge, pseudo-label files (by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from ircr.data.splits import Patch
from ircr.errors import IrcrError
from ircr.ssl.count_threshold import THRESHOLD_GRID, count_match_threshold
from ircr.ssl.pseudo_labels import generate_pseudo_labels, load_pseudo_labels
from ircr.ssl.tta import TTAConfig, box_iou, detect_tta

A = [0.95, 0.9, 0.5, 0.3, 0.2]
B = [0.8, 0.6, 0.4]


def test_grid_is_the_91_values_from_0_1_to_1() -> None:
    assert THRESHOLD_GRID.size == 91 and THRESHOLD_GRID[0] == 0.1 and THRESHOLD_GRID[-1] == 1.0
    assert THRESHOLD_GRID[28] == 0.38


def test_count_matching_strict_score_and_smallest_tie() -> None:
    # n_L = 3. n_U(t): t < 0.2 -> (5+3)/2 = 4; 0.2 <= t < 0.3 -> 3.5; t = 0.30 ... 0.39 -> 3
    # (score 0.3 is not > 0.3): exact for ten thresholds, the smallest (0.30) is chosen
    m = count_match_threshold([2, 4], [np.array(A), np.array(B)])
    assert m.threshold == 0.3 and m.n_labelled == 3.0 and m.n_unlabelled == 3.0
    assert m.curve[0] == 4.0 and m.curve[10] == 3.5 and m.index == 20


def test_count_matching_nearest_count() -> None:
    # n_L = 2.2: n_U = 2.5 on [0.4, 0.5), 2.0 on [0.5, 0.6): |2 - 2.2| < |2.5 - 2.2| -> 0.5
    m = count_match_threshold([2, 2, 2, 2, 3], [np.array(A), np.array(B)])
    assert m.threshold == 0.5 and m.n_unlabelled == 2.0
    # an image without detections counts 0: n_U(0.1) = (5 + 3 + 0) / 3
    m = count_match_threshold([9], [np.array(A), np.array(B), np.zeros(0)])
    assert m.curve[0] == pytest.approx(8 / 3) and m.threshold == 0.1


def test_count_matching_needs_both_sides() -> None:
    with pytest.raises(IrcrError, match="no labelled image"):
        count_match_threshold([], [np.array(A)])
    with pytest.raises(IrcrError, match="no unlabelled image"):
        count_match_threshold([1], [])


def _blob_detector(score_of: Any = None) -> Any:
    """Fake detector: each dark 4-connected blob (red < 100) is one detection with a
    pixel-edge box, its exact mask (prob 0.9) and score ``score_of(box)`` (default 0.8)."""

    def detect(image: np.ndarray) -> dict[str, np.ndarray]:
        lab, n = ndimage.label(image[..., 0] < 100)
        boxes, masks, scores = [], [], []
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            ys, xs = sl
            box = [xs.start, ys.start, xs.stop, ys.stop]
            boxes.append(box)
            masks.append((lab == k).astype(np.float32) * 0.9)
            scores.append(0.8 if score_of is None else score_of(box, image.shape))
        h, w = image.shape[:2]
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "scores": np.asarray(scores, np.float32),
                "masks": np.asarray(masks, np.float32).reshape(-1, 1, h, w)}

    return detect


def _image(squares: list[tuple[int, int, int]], size: int = 16) -> np.ndarray:
    img = np.full((size, size, 3), 220, np.uint8)
    for y, x, s in squares:
        img[y:y + s, x:x + s] = 20
    return img


def test_tta_flip_and_scale_map_back_exactly() -> None:
    img = _image([(2, 1, 4), (9, 10, 3)])
    plain = detect_tta(_blob_detector(), img)
    assert plain["boxes"].tolist() == [[1, 2, 5, 6], [10, 9, 13, 12]]
    merged = detect_tta(_blob_detector(), img, TTAConfig(hflip=True, scales=[1.0, 2.0]))
    order = np.argsort(merged["boxes"][:, 0])
    np.testing.assert_allclose(merged["boxes"][order], plain["boxes"], atol=1e-5)
    np.testing.assert_allclose(merged["scores"], [0.8, 0.8], atol=1e-6)  # seen in 4/4 views
    np.testing.assert_array_equal(merged["masks"][order] >= 0.5, plain["masks"] >= 0.5)


def test_tta_vote_divides_by_the_number_of_views() -> None:
    # full score only on a blob in the left half of the view: the flipped view gives the
    # same blob score 0 -> one cluster, score (0.9 + 0) / 2 views
    def left_only(box: list[int], shape: tuple[int, ...]) -> float:
        return 0.9 if box[2] <= shape[1] // 2 else 0.0

    det = detect_tta(_blob_detector(left_only), _image([(2, 1, 4)]), TTAConfig(hflip=True))
    assert det["scores"].tolist() == pytest.approx([0.45])


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[1, 1, 3, 3], [2, 2, 4, 4]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0]])


def test_pseudo_label_stage_with_a_fake_detector(tmp_path: Path) -> None:
    # three patches; the fake score of a blob is its side / 10 (sides 2, 3, 4, 5, 6)
    images = {0: _image([(1, 1, 5), (9, 9, 2)]), 1: _image([(2, 8, 6), (10, 1, 3)]),
              2: _image([(4, 4, 4)])}

    def side_score(box: list[int], shape: tuple[int, ...]) -> float:
        return (box[2] - box[0]) / 10

    patches = [Patch(i, 0, 0, 16, 16) for i in images]
    seen: list[tuple[int, int]] = []
    pl = generate_pseudo_labels(
        _blob_detector(side_score), patches, lambda p: images[p.image], [1, 2, 1, 2],
        tmp_path, progress=lambda d, n: seen.append((d, n)),
    )
    # n_L = 1.5; n_U(t) = (#sides > 10 t) / 3: t < 0.2 -> 5/3, t in [0.2, 0.3) -> 4/3,
    # [0.3, 0.4) -> 1, ... |5/3 - 1.5| = |4/3 - 1.5| = 1/6 -> tie -> smallest: 0.10
    assert pl.threshold == 0.1
    assert [int(lab.max()) for lab in pl.labels] == [2, 2, 1]
    assert pl.labels[0][1:6, 1:6].min() == 1 and pl.labels[0][9, 9] == 2  # best score is id 1
    assert seen[-1] == (3, 3)
    info = json.loads((tmp_path / "threshold.json").read_text())
    assert info["threshold"] == 0.1 and info["n_labelled_mean"] == 1.5
    assert info["kept_per_patch"] == [2, 2, 1] and len(info["curve"]) == 91
    back = load_pseudo_labels(tmp_path)
    np.testing.assert_array_equal(back.labels, pl.labels)
    assert back.patches == patches and back.threshold == 0.1
    assert [len(s) for s in back.scores] == [2, 2, 1]
    assert np.concatenate(back.scores).tolist() == pytest.approx([0.5, 0.2, 0.6, 0.3, 0.4])
    # a fixed threshold keeps only scores > 0.35
    (tmp_path / "fixed").mkdir()
    fixed = generate_pseudo_labels(_blob_detector(side_score), patches,
                                   lambda p: images[p.image], [1], tmp_path / "fixed",
                                   fixed_threshold=0.35)
    assert [int(lab.max()) for lab in fixed.labels] == [1, 1, 1]
    assert fixed.info["count_matching_threshold"] != 0.35


def test_missing_or_foreign_pseudo_label_files(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="no complete pseudo-labels"):
        load_pseudo_labels(tmp_path)
    (tmp_path / "threshold.json").write_text("{}")
    (tmp_path / "pseudo_labels.npz").write_bytes(b"not a zip")
    with pytest.raises(IrcrError, match="unreadable pseudo-labels"):
        load_pseudo_labels(tmp_path)
    with pytest.raises(IrcrError, match="no unlabelled patch"):
        generate_pseudo_labels(_blob_detector(), [], lambda p: np.zeros(1), [1], tmp_path)
