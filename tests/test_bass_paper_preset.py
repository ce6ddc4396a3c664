"""BASS ``paper`` preset beside ``released`` (issue 26 point 7): CRC queries from two RoIs as
the paper's Eq. 5 (checked against a hand computation), and the preset configs differ from the
released ones exactly in the paper's stated settings."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ircr.config import from_dict, to_dict
from ircr.data.detection import detection_targets
from ircr.data.synthetic import make_tile
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from ircr.models.maskrcnn.contrastive import crc_loss, crc_pixel_sets
from ircr.train.config import load_experiment

REPO = Path(__file__).resolve().parents[1]


def hand_loss(embed: torch.Tensor, m: torch.Tensor, d: int, rois: list[int]) -> float:
    """Eqs. 5-7 in numpy over the RoIs ``rois``, every pixel of each set sampled (alpha 1)."""
    sets = crc_pixel_sets(m, d).numpy()[:, rois]
    pix = embed.permute(0, 2, 3, 1).numpy().astype(np.float64)[rois]
    hp, hn, ep, en = (pix[sets[i]] for i in range(4))
    qf, qb = np.concatenate([ep, hp]).mean(0), np.concatenate([en, hn]).mean(0)

    def cl(q: np.ndarray, pos: np.ndarray, neg: np.ndarray, tau: float) -> float:
        cp = pos @ q / (np.linalg.norm(pos, axis=1) * np.linalg.norm(q)) / tau
        cn = neg @ q / (np.linalg.norm(neg, axis=1) * np.linalg.norm(q)) / tau
        return float(np.mean(np.log(np.exp(cp) + np.exp(cn).sum()) - cp))

    return cl(qb, en, ep, .3) + cl(qb, hn, hp, .7) + cl(qf, ep, en, .3) + cl(qf, hp, hn, .7)


def masks(n: int, size: int = 12) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    for k in range(n):
        m[k, 2 + k:8 + k, 3:9 + k % 2] = True
    return m


def test_two_rois_queries_follow_eq5() -> None:
    torch.manual_seed(0)
    m, embed = masks(2), torch.randn(2, 4, 12, 12)
    got = crc_loss(embed, m, d=2, alpha=1.0, min_pixels=1, query="two_rois")
    assert float(got) == pytest.approx(hand_loss(embed, m, 2, [0, 1]), rel=1e-5)
    released = crc_loss(embed, m, d=2, alpha=1.0, min_pixels=1)  # all_rois: other queries
    assert abs(float(released) - float(got)) > 1e-4
    m3, embed3 = masks(3), torch.randn(3, 4, 12, 12)  # three RoIs: one random pair is used
    got3 = float(crc_loss(embed3, m3, d=2, alpha=1.0, min_pixels=1, query="two_rois"))
    pairs = [hand_loss(embed3, m3, 2, list(p)) for p in itertools.combinations(range(3), 2)]
    assert min(abs(got3 - p) for p in pairs) < 1e-5 * abs(got3)


def test_a_training_step_with_two_roi_queries() -> None:
    cfg = from_dict(MaskRCNNConfig, {
        "backbone": "tiny", "tiny_channels": [8, 16, 16, 32], "fpn_channels": 16,
        "mask_channels": 16, "box_representation": 32, "crc_channels": 8, "min_size": [64],
        "max_size": 128, "anchor_sizes": [4, 8, 16, 32, 64], "crc_query": "two_rois",
        "crc_weight": 1.0}, where="test")
    torch.manual_seed(0)
    model = build_maskrcnn(cfg).train()
    img, inst = make_tile(np.random.default_rng(0), 64)
    t = detection_targets(inst)
    losses = model([torch.from_numpy(img).permute(2, 0, 1).float()],
                   [{k: torch.from_numpy(t[k]) for k in ("boxes", "labels", "masks")}])
    assert "loss_crc" in losses and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("ratio", ["1-8", "1-4", "1-2"])
def test_paper_preset_differs_from_released_in_the_papers_settings(ratio: str) -> None:
    rel = load_experiment(REPO / f"configs/monuseg/bass/bass_r{ratio}.yaml", [])
    pap = load_experiment(REPO / f"configs/monuseg/bass/paper/bass_r{ratio}.yaml", [])
    a, b = to_dict(rel.method.options), to_dict(pap.method.options)
    diff = {f"{sec}.{k}": (a[sec][k], b[sec][k]) for sec in ("model", "teacher", "student")
            for k in a[sec] if a[sec][k] != b[sec][k]}
    assert diff == {"model.lrd_boundary_weight": (1.0, 0.5), "model.crc_weight": (0.25, 1.0),
                    "model.crc_query": ("all_rois", "two_rois"),
                    "teacher.weight_decay": (1e-4, 1e-3), "student.weight_decay": (1e-4, 1e-3)}
    assert {k: v for k, v in a.items() if k not in ("model", "teacher", "student")} == \
        {k: v for k, v in b.items() if k not in ("model", "teacher", "student")}
    assert to_dict(rel.data) == to_dict(pap.data)
