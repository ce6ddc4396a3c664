"""Detection targets from instance maps (ircr.data.detection), checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ircr.data.detection import count_instances, detection_targets, flip_targets
from ircr.errors import IrcrError


def _map() -> np.ndarray:
    inst = np.zeros((6, 8), np.int32)
    inst[1:3, 2:5] = 7  # rows 1-2, cols 2-4: box [2, 1, 5, 3], area 6
    inst[4, 0] = 3  # single pixel at (4, 0): box [0, 4, 1, 5], area 1
    inst[5, 6:8] = 9  # rows 5, cols 6-7: box [6, 5, 8, 6], area 2
    inst[0, 7] = 9  # a second piece of id 9 at (0, 7): box grows to [6, 0, 8, 6]
    return inst


def test_boxes_are_pixel_edges_in_id_order() -> None:
    t = detection_targets(_map())
    assert t["ids"].tolist() == [3, 7, 9]
    assert t["boxes"].dtype == np.float32
    assert t["boxes"].tolist() == [[0, 4, 1, 5], [2, 1, 5, 3], [6, 0, 8, 6]]
    assert t["labels"].tolist() == [1, 1, 1] and t["labels"].dtype == np.int64
    assert t["masks"].shape == (3, 6, 8) and t["masks"].dtype == np.uint8
    assert t["masks"].sum(axis=(1, 2)).tolist() == [1, 6, 3]
    assert t["masks"][2, 0, 7] == 1 and t["masks"][2, 5, 6] == 1


def test_min_area_drops_small_instances() -> None:
    t = detection_targets(_map(), min_area=3)
    assert t["ids"].tolist() == [7, 9]
    assert t["boxes"].tolist() == [[2, 1, 5, 3], [6, 0, 8, 6]]
    assert count_instances(_map(), min_area=3) == 2
    assert count_instances(_map()) == 3


def test_empty_map_gives_empty_arrays() -> None:
    t = detection_targets(np.zeros((4, 5), np.int32))
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 4, 5)
    assert t["labels"].shape == (0,)


@pytest.mark.parametrize(("hflip", "vflip"), [(True, False), (False, True), (True, True)])
def test_flip_matches_targets_of_flipped_map(hflip: bool, vflip: bool) -> None:
    inst = _map()
    flipped = inst[:, ::-1] if hflip else inst
    flipped = flipped[::-1, :] if vflip else flipped
    want = detection_targets(np.ascontiguousarray(flipped))
    got = flip_targets(detection_targets(inst), inst.shape, horizontal=hflip, vertical=vflip)
    np.testing.assert_array_equal(got["boxes"], want["boxes"])
    np.testing.assert_array_equal(got["masks"], want["masks"])
    # by hand: horizontal flip of [2, 1, 5, 3] in width 8 is [3, 1, 6, 3]
    if hflip and not vflip:
        assert got["boxes"][1].tolist() == [3, 1, 6, 3]


def test_bad_maps_are_one_line_errors() -> None:
    with pytest.raises(IrcrError, match="patch 3: instance map must be a 2-D array"):
        detection_targets(np.zeros((2, 2, 2), np.int32), where="patch 3")
    with pytest.raises(IrcrError, match="integer ids"):
        detection_targets(np.zeros((2, 2), np.float32))
    with pytest.raises(IrcrError, match="negative ids"):
        detection_targets(np.full((2, 2), -1, np.int32))
    with pytest.raises(IrcrError, match="min_area"):
        detection_targets(np.zeros((2, 2), np.int32), min_area=0)
