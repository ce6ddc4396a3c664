"""Object F1 with the GlaS detection rule (``f1_mode="glas"``), against hand counts.

The IRCR paper gives only F1_obj = 2TP / (2TP + FP + FN) and cites VENet for it, whose
object F1 is the GlaS challenge's: a prediction is a TP when it covers more than half of the
GT object it overlaps most; a GT object is missed (FN) when no prediction covers more than
half of it. Every expected value below is counted by hand from the drawn squares.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from ircr.config import from_dict
from ircr.errors import IrcrError
from ircr.inference.evaluate import EvalConfig
from ircr.metrics import aggregate, instance_metrics


def square(m: np.ndarray, y: int, x: int, size: int, val: int) -> None:
    m[y:y + size, x:x + size] = val


def test_merge_of_two_nuclei_is_one_tp_under_glas_and_nothing_under_iou() -> None:
    gt = np.zeros((40, 40), np.int32)
    square(gt, 5, 5, 10, 1)     # 100 px
    square(gt, 5, 15, 10, 2)    # 100 px, touching the first
    pred = np.zeros_like(gt)
    pred[5:15, 5:25] = 1        # one object over both (200 px)
    g = instance_metrics(gt, pred, "glas")
    # pred -> GT 1 (tie 100/100, lowest id), 100 % of it inside: TP; both GT covered fully
    assert (g.tp, g.fp, g.fn) == (1, 0, 0) and g.f1 == 1.0
    i = instance_metrics(gt, pred, "iou")  # IoU 100/200 = 0.5, not > 0.5
    assert (i.tp, i.fp, i.fn) == (0, 1, 2) and i.f1 == 0.0


def test_more_than_half_of_the_gt_object_counts() -> None:
    gt = np.zeros((30, 30), np.int32)
    square(gt, 0, 0, 10, 1)                 # 100 px
    pred = np.zeros_like(gt)
    pred[0:6, 0:10] = 1                     # 60 px of GT 1 ...
    pred[0:10, 10:25] = 1                   # ... plus 150 px outside: IoU 60/250
    g = instance_metrics(gt, pred, "glas")
    assert (g.tp, g.fp, g.fn) == (1, 0, 0) and g.f1 == 1.0
    assert instance_metrics(gt, pred, "iou").f1 == 0.0
    pred[0:6, 0:10] = 0
    pred[0:4, 0:10] = 1                     # 40 px: not enough
    g = instance_metrics(gt, pred, "glas")
    assert (g.tp, g.fp, g.fn) == (0, 1, 1) and g.f1 == 0.0


def test_exactly_half_is_not_enough_so_a_split_nucleus_is_not_two_tps() -> None:
    gt = np.zeros((20, 20), np.int32)
    square(gt, 0, 0, 10, 1)
    pred = np.zeros_like(gt)
    pred[0:5, 0:10], pred[5:10, 0:10] = 1, 2  # two halves of 50 px
    g = instance_metrics(gt, pred, "glas")
    assert (g.tp, g.fp, g.fn) == (0, 2, 1) and g.f1 == 0.0


def test_mixed_image_and_pooling() -> None:
    gt = np.zeros((50, 50), np.int32)
    square(gt, 0, 0, 10, 1)     # found exactly
    square(gt, 20, 0, 10, 2)    # missed (no prediction)
    square(gt, 0, 20, 10, 3)    # 30 % covered by prediction 3
    pred = np.zeros_like(gt)
    square(pred, 0, 0, 10, 1)
    square(pred, 40, 40, 6, 2)  # on background
    pred[0:3, 20:30] = 3
    g = instance_metrics(gt, pred, "glas")
    # TP: pred 1; FP: pred 2 (no overlap), pred 3 (30 %); FN: GT 2, GT 3
    assert (g.tp, g.fp, g.fn, g.n_gt, g.n_pred) == (1, 2, 2, 3, 3)
    assert g.f1 == pytest.approx(2 / (2 + 2 + 2))
    empty = instance_metrics(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), "glas")
    assert empty.f1 == 1.0 and (empty.tp, empty.fp, empty.fn) == (0, 0, 0)
    only_gt = instance_metrics(gt, np.zeros_like(gt), "glas")
    assert (only_gt.tp, only_gt.fp, only_gt.fn, only_gt.f1) == (0, 0, 3, 0.0)
    pooled = aggregate([g, only_gt], "pooled")
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (1, 2, 5)
    assert pooled["f1"] == pytest.approx(2 / (2 + 2 + 5))
    with pytest.raises(IrcrError, match="mix F1 modes"):
        aggregate([g, instance_metrics(gt, pred)])


def test_glas_is_an_eval_option_and_an_evaluate_flag() -> None:
    assert from_dict(EvalConfig, {"f1_mode": "glas"}, where="t").f1_mode == "glas"
    with pytest.raises(IrcrError, match="f1_mode"):
        from_dict(EvalConfig, {"f1_mode": "gals"}, where="t")
    from ircr.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "MODEL", "DATA", "--f1-mode", "glas"])
    assert args.f1_mode == "glas"
