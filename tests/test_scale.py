"""Pixel-size arithmetic shared by segment, slides, evaluate and tune (``ircr.inference.scale``).

Expected values are hand computations.
"""

from __future__ import annotations

import numpy as np

from ircr.inference.scale import common_mpp, processing_size, rescale_factor, resize_labels


def test_rescale_factor_and_processing_size() -> None:
    assert rescale_factor(0.5, 0.25) == 2.0  # 20x tile for a 40x model: enlarge 2x
    assert rescale_factor(0.25, 0.5) == 0.5
    assert rescale_factor(0.26, 0.25) == 1.0  # within 5 %
    assert rescale_factor(None, 0.25) == rescale_factor(0.5, None) == 1.0
    assert processing_size(439, 439, 2.0) == (878, 878)
    assert processing_size(3, 5, 0.1) == (1, 1)  # never empty


def test_common_mpp_of_training_images() -> None:
    assert common_mpp([0.25, 0.25, None]) == 0.25
    assert common_mpp([0.25, 0.26]) == 0.25  # within the 5 % rescaling tolerance
    assert common_mpp([0.5, 0.25]) is None  # CPM-15: 20x and 40x tiles mixed
    assert common_mpp([None, None]) is None
    assert common_mpp([]) is None


def test_resize_labels_round_trip_is_exact_for_an_integer_factor() -> None:
    lab = np.arange(12, dtype=np.int32).reshape(3, 4)
    up = resize_labels(lab, 6, 8)
    assert up[0, :2].tolist() == [0, 0] and up[5, 7] == 11
    assert np.array_equal(resize_labels(up, 3, 4), lab)
