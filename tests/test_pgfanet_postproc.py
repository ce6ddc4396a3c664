"""PG-FANet's pieces on hand-made inputs: the interior post-processing, the 3-class targets,
the losses (every expected value is computed by hand in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ircr.errors import IrcrError
from ircr.inference.family import Prediction, get_family
from ircr.postproc.interior import InteriorParams, interior_instances
from ircr.ssl.pgfanet_losses import (
    ce_dice,
    three_class_targets,
    uncertainty_consistency,
    variance_loss,
)


def _class_map() -> np.ndarray:
    """16 x 16: a 4x4 interior (16 px) inside a boundary ring, a 3x3 interior (9 px) and a
    5x5 interior (25 px) without a ring."""
    c = np.zeros((16, 16), np.int64)
    c[1:7, 1:7] = 2
    c[2:6, 2:6] = 1
    c[12:15, 1:4] = 1
    c[9:14, 9:14] = 1
    return c


def _dilated_square(shape: tuple[int, int], y0: int, x0: int, n: int) -> np.ndarray:
    """An n x n square at (y0, x0) dilated by the radius-2 disk, written out by hand: the
    1-ring (offsets with |dy|, |dx| <= 1) plus the straight 2-steps (dy or dx = ±2)."""
    m = np.zeros(shape, bool)
    m[max(y0 - 1, 0):y0 + n + 1, max(x0 - 1, 0):x0 + n + 1] = True
    m[max(y0 - 2, 0):y0 + n + 2, x0:x0 + n] = True
    m[y0:y0 + n, max(x0 - 2, 0):x0 + n + 2] = True
    return m


def test_interior_postprocessing_by_hand() -> None:
    c = _class_map()
    # min size 20: only the 25 px square survives: 7 x 7 (1-ring) + 4 x 5 (2-steps) = 69 px
    out = interior_instances(c, InteriorParams(min_size=20, dilate_radius=2))
    assert out.dtype == np.int32
    assert np.array_equal(out, _dilated_square((16, 16), 9, 9, 5).astype(np.int32))
    assert int(out.sum()) == 69
    # min size 16 keeps the 4x4 too (id 1, first in raster order): 6 x 6 + 4 x 4 = 52 px
    out = interior_instances(c, InteriorParams(min_size=16, dilate_radius=2))
    assert np.array_equal(out == 1, _dilated_square((16, 16), 2, 2, 4))
    assert int((out == 1).sum()) == 52 and int((out == 2).sum()) == 69
    # no dilation: the interiors themselves
    out = interior_instances(c, InteriorParams(min_size=0, dilate_radius=0))
    assert sorted(np.bincount(out.ravel())[1:].tolist()) == [9, 16, 25]


def test_contested_pixels_and_connectivity() -> None:
    # two 5x5 squares (ids 1 and 2) with a 2-column gap: both reach both gap columns, the
    # larger id takes them
    c = np.zeros((5, 12), np.int64)
    c[:, 0:5] = 1
    c[:, 7:12] = 1
    out = interior_instances(c, InteriorParams(min_size=20, dilate_radius=2))
    assert (out[:, :5] == 1).all() and (out[:, 5:] == 2).all()
    # diagonal neighbours: one piece with 8-connectivity, two with 4
    d = np.zeros((4, 4), np.int64)
    d[0, 0] = d[1, 1] = 1
    no_grow = {"min_size": 0, "dilate_radius": 0}
    assert interior_instances(d, InteriorParams(**no_grow)).max() == 1
    assert interior_instances(d, InteriorParams(**no_grow, connectivity=4)).max() == 2
    with pytest.raises(IrcrError, match="2-D"):
        interior_instances(np.zeros((2, 2, 2), np.int64))


def test_family_instances_take_the_argmax() -> None:
    fam = get_family("pgfanet")
    c = _class_map()
    # probabilities whose argmax is the class map: 0.8 on the class, 0.1 elsewhere
    probs = np.full((3, 16, 16), 0.1, np.float32)
    for k in range(3):
        probs[k][c == k] = 0.8
    pred = Prediction(prob=1.0 - probs[0], maps={"probs": probs[1:]})
    out = fam.instances(pred, {"min_size": 20})
    assert int(out.max()) == 1 and int(out.sum()) == 69
    with pytest.raises(IrcrError, match="min_sizee"):
        fam.parse_postproc({"min_sizee": 3})


def test_three_class_targets_by_hand() -> None:
    inst = torch.zeros((1, 6, 6), dtype=torch.int64)
    inst[0, 1:5, 1:5] = 5
    # width 1 (4-neighbours): the 12 px outer ring of the 4x4 is boundary, 4 px interior
    t = three_class_targets(inst, 1)[0]
    assert int((t == 2).sum()) == 12 and int((t == 1).sum()) == 4
    assert (t[2:4, 2:4] == 1).all()
    # width 2: every pixel of the 4x4 has background within 2 px
    assert int((three_class_targets(inst, 2)[0] == 2).sum()) == 16
    # the image border is no boundary: a nucleus filling the patch is all interior
    full = torch.full((1, 4, 4), 3, dtype=torch.int64)
    assert (three_class_targets(full, 2) == 1).all()
    # two touching nuclei: the pixels along their contact are boundary of both
    two = torch.zeros((1, 1, 6), dtype=torch.int64)
    two[0, 0, :3], two[0, 0, 3:] = 1, 2
    assert three_class_targets(two, 1)[0, 0].tolist() == [1, 1, 2, 2, 1, 1]


def test_variance_loss_by_hand() -> None:
    # image 1: instance 1 = pixels 0, 1 with class-0 probs 0.2, 0.6 (class 1: 0.8, 0.4):
    # unbiased variance 0.08 per class -> 0.16; instance 2 = one pixel -> 0; K = 2 -> 0.08.
    # image 2: no instance -> 0. Mean over the batch: 0.04.
    prob = torch.tensor([[[[0.2, 0.6, 0.5, 0.3]], [[0.8, 0.4, 0.5, 0.7]]]])
    prob = torch.cat([prob, prob])
    ids = torch.tensor([[[1, 1, 2, 0]], [[0, 0, 0, 0]]])
    assert float(variance_loss(prob, ids)) == pytest.approx(0.04, abs=1e-6)


def test_ce_dice_by_hand() -> None:
    # zero logits: p = 1/3 everywhere; two valid pixels of class 1 (a third is masked out)
    # CE = ln 3; Dice = 1 - (2 * 2/3 + 1) / (2 + 2 + 1) = 8/15
    logits = torch.zeros((1, 3, 1, 3))
    target = torch.tensor([[[1, 1, 2]]])
    valid = torch.tensor([[[True, True, False]]])
    assert float(ce_dice(logits, target, valid)) == pytest.approx(math.log(3) + 8 / 15,
                                                                  abs=1e-6)


def test_uncertainty_consistency_by_hand() -> None:
    def px(a: float) -> torch.Tensor:  # (1, 2, 1, 1) two-class probabilities
        return torch.tensor([a, 1 - a]).view(1, 2, 1, 1)

    # a certain teacher (u = 0): target = p_T; inter = mean((0.5-1)^2, (0.5-0)^2) = 0.25
    loss, parts = uncertainty_consistency(px(0.5), px(0.5), px(1.0))
    assert float(loss) == pytest.approx(0.25, abs=1e-6)
    assert parts["intra"] == 0.0 and parts["shape"] == pytest.approx(0.0, abs=1e-5)
    # an uncertain teacher p_T = 0.5: u = 0.5 ln 2 per class; inter = ((1-u) * 0.4)^2;
    # intra = 0.4^2 = 0.16; shape = -2 * 0.4 ln(0.4) / ln 2
    u = 0.5 * math.log(2)
    loss, parts = uncertainty_consistency(px(0.9), px(0.5), px(0.5))
    assert parts["inter"] == pytest.approx(((1 - u) * 0.4) ** 2, abs=1e-6)
    assert parts["intra"] == pytest.approx(0.16, abs=1e-6)
    assert parts["shape"] == pytest.approx(-0.8 * math.log(0.4) / math.log(2), abs=1e-4)
    assert float(loss) == pytest.approx(sum(parts.values()), abs=1e-6)
    # --mask: one pixel has min = max entropy -> weight 1 + 0; no entropy term
    loss, parts = uncertainty_consistency(px(0.9), px(0.5), px(0.5), mask=True)
    assert parts["shape"] == 0.0
    assert float(loss) == pytest.approx(((1 - u) * 0.4) ** 2 + 0.16, abs=1e-6)
