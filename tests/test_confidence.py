"""Object confidence (WBIS ``min_prob``): drop instances whose mean probability is low.

Hand-computed maps: the mean of each object is known by construction, so which objects stay
and how they are renumbered is checked against numbers worked out here, not by the code.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ircr.config import from_dict
from ircr.data.targets import hover_targets
from ircr.engine.tune import parse_grid, tune_postproc
from ircr.errors import IrcrError
from ircr.metrics import instance_metrics
from ircr.postproc import WBISParams, wbis, wbis_reference
from ircr.postproc.confidence import drop_unconfident, mean_prob


def _three_objects() -> tuple[np.ndarray, np.ndarray]:
    """ids 1, 2, 3 with mean probabilities 0.9, 0.6, 0.8125 (object 3: half 0.75, half 0.875)."""
    inst = np.zeros((6, 12), np.int32)
    prob = np.zeros((6, 12), np.float32)
    inst[1:3, 1:3], prob[1:3, 1:3] = 1, 0.9
    inst[1:3, 5:7], prob[1:3, 5:7] = 2, 0.6
    inst[1:5, 9:11] = 3
    prob[1:3, 9:11], prob[3:5, 9:11] = 0.75, 0.875  # exact in float32
    return inst, prob


def test_mean_prob_and_drop_by_hand() -> None:
    inst, prob = _three_objects()
    assert mean_prob(inst, prob)[1:] == pytest.approx([0.9, 0.6, 0.8125], abs=1e-6)
    out = drop_unconfident(inst, prob, 0.75)
    # object 2 (0.6) goes; 1 and 3 keep their order as ids 1 and 2
    assert out.dtype == np.int32
    assert np.array_equal(out[inst == 1], np.full(4, 1))
    assert np.array_equal(out[inst == 3], np.full(8, 2))
    assert not out[inst == 2].any()
    assert drop_unconfident(inst, prob, 0.0) is inst  # 0: off, HoVer-Net's output unchanged
    assert not drop_unconfident(inst, prob, 0.95).any()
    assert drop_unconfident(inst, prob, 0.8125)[inst == 3].max() == 2  # ">=" keeps it


def _nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eight discs; the right four have foreground probability 0.65, the left four 0.95."""
    yy, xx = np.mgrid[:96, :160]
    gt = np.zeros((96, 160), np.int32)
    for i, (cy, cx) in enumerate([(24, 20), (24, 56), (72, 20), (72, 56),
                                  (24, 104), (24, 140), (72, 104), (72, 140)], 1):
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = i
    hv = hover_targets(gt)[1]
    prob = np.where(gt > 0, np.where(xx < 80, 0.95, 0.65), 0.02).astype(np.float32)
    return ndi.gaussian_filter(prob, 0.7).astype(np.float32), hv, gt


def test_wbis_min_prob_drops_the_weak_nuclei_in_both_implementations() -> None:
    prob, hv, gt = _nuclei()
    plain = wbis(prob, hv)
    assert plain.max() == 8
    for fn in (wbis, wbis_reference):
        out = fn(prob, hv, WBISParams(min_prob=0.8))
        assert out.max() == 4 and not out[:, 80:].any()  # the 0.65 nuclei are gone
        assert np.array_equal(out > 0, (plain > 0) & (np.arange(160) < 80))
    assert np.array_equal(wbis(prob, hv, WBISParams(min_prob=0.8)),
                          drop_unconfident(plain, prob, 0.8))


def test_min_prob_validation() -> None:
    assert from_dict(WBISParams, {"min_prob": 0.75}, where="p.yaml").min_prob == 0.75
    for bad in (1.5, -0.1):
        with pytest.raises(IrcrError, match="min_prob"):
            from_dict(WBISParams, {"min_prob": bad}, where="p.yaml").effective()
    with pytest.raises(IrcrError, match="min_prob"):
        WBISParams(min_prob=float("nan")).effective()
    assert parse_grid(["min_prob=0,0.8"])["min_prob"] == (0.0, 0.8)
    with pytest.raises(IrcrError, match="--grid min_prob"):
        parse_grid(["min_prob=0,2"])


def test_tuning_shares_the_wbis_run_and_scores_as_a_fresh_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    prob, hv, all8 = _nuclei()
    gt = np.where(np.arange(160) < 80, all8, 0)  # the weak right-hand discs are not nuclei
    maps = [(prob, hv, gt)]
    calls: list[float] = []
    import ircr.engine.tune as tune

    real = tune.wbis

    def counted(p: np.ndarray, h: np.ndarray, params: WBISParams) -> np.ndarray:
        calls.append(params.min_prob)
        return real(p, h, params)

    monkeypatch.setattr(tune, "wbis", counted)
    res = tune_postproc(maps, WBISParams(), {"threshold": (0.5,), "min_prob": (0.0, 0.7, 0.8)})
    assert len(calls) == 1 and calls == [0.0]  # one WBIS run for the three min_prob values
    # the four weak discs are false positives: dropping them raises AJI, and 0.7 drops them
    assert [r["min_prob"] for r in res.rows] == [0.0, 0.7, 0.8]
    assert res.best["min_prob"] == 0.7 and res.best_score > res.start_score
    for row in res.rows:  # each score equals WBIS run afresh with that min_prob
        fresh = real(prob, hv, WBISParams(min_prob=row["min_prob"]))
        assert instance_metrics(gt, fresh).aji == pytest.approx(row["aji"])
    assert res.rows[0]["aji"] < 0.6 < 0.95 < res.rows[1]["aji"]  # 4 of 8 objects are wrong
