"""BASS mask-head losses checked against values computed by hand (issue 12)."""

from __future__ import annotations

import math

import torch

from ircr.models.maskrcnn.contrastive import crc_loss, crc_pixel_sets, info_nce, sample_sets
from ircr.models.maskrcnn.mask_head import BassMaskHead
from ircr.models.maskrcnn.mask_losses import boundary_weights, roi_mask_targets, weighted_bce


def _disk11() -> torch.Tensor:
    """11 x 11 map with the radius-2 disk around (5, 5): 13 pixels (1, 3, 5, 3, 1 per row)."""
    m = torch.zeros(11, 11, dtype=torch.bool)
    for r, (c0, c1) in zip(range(3, 8), [(5, 5), (4, 6), (3, 7), (4, 6), (5, 5)]):
        m[r, c0:c1 + 1] = True
    return m


def test_lrd_targets_are_2x2_block_means_binarised() -> None:
    # mask rows 4..12, cols 6..14 in a 28 x 28 image; box = whole image -> bins are 2 x 2 blocks.
    mask = torch.zeros(1, 28, 28, dtype=torch.uint8)
    mask[0, 4:13, 6:15] = 1
    box = torch.tensor([[0.0, 0.0, 28.0, 28.0]])
    t = roi_mask_targets(mask, box, torch.tensor([0]), 14)[0]
    expected = torch.zeros(14, 14)
    expected[2:7, 3:8] = 1  # full blocks rows 2..5 x cols 3..6; row 6 / col 7 blocks are half full
    expected[6, 7] = 0      # block rows 12-13 x cols 14-15 holds 1 of 4 pixels
    assert torch.equal(t, expected)


def test_lrd_targets_inside_an_offset_box_pick_the_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 40, 40, generator=g) > 0.5).to(torch.uint8)
    box = torch.tensor([[4.0, 6.0, 18.0, 20.0]])  # 14 x 14 px at x 4..17, y 6..19, of mask 1
    t = roi_mask_targets(mask, box, torch.tensor([1]), 14)[0]
    assert torch.equal(t, mask[1, 6:20, 4:18].float())


def test_crc_pixel_sets_on_a_disk_by_hand() -> None:
    # d = 2: the band is the 3 x 3 dilation of the 2-px edge minus the edge (see the docstring).
    m = _disk11()
    hp, hn, ep, en = crc_pixel_sets(m[None], d=2)[:, 0]
    cross = {(5, 5), (4, 5), (6, 5), (5, 4), (5, 6)}  # disk pixels without an outside 4-neighbour
    assert {tuple(p) for p in hp.nonzero().tolist()} == cross
    inner_edge = {(3, 5), (4, 4), (4, 6), (5, 3), (5, 7), (6, 4), (6, 6), (7, 5)}
    assert {tuple(p) for p in ep.nonzero().tolist()} == inner_edge  # the released-code quirk
    # outside: 12 outer-edge px (in no set); hard negatives counted by hand row by row
    # (rows 1..9: 3 + 4 + 4 + 4 + 2 + 4 + 4 + 4 + 3), the rest are easy negatives.
    assert int(hn.sum()) == 32
    assert int(en.sum()) == 121 - 13 - 12 - 32
    assert not bool((hn & m).any()) and not bool((en & m).any())
    assert bool(hn[1, 5]) and bool(hn[5, 1]) and not bool(hn[2, 2]) and bool(en[2, 2])


def test_sampling_takes_ceil_alpha_of_each_set() -> None:
    sets = crc_pixel_sets(_disk11()[None], d=2)
    torch.manual_seed(0)
    picked = sample_sets(sets, 0.7)
    assert (picked & ~sets).sum() == 0
    # hard pos 5, hard neg 32, easy pos 8, easy neg 64
    # -> ceil(3.5), ceil(22.4), ceil(5.6), ceil(44.8)
    assert picked.flatten(1).sum(1).tolist() == [4, 23, 6, 45]
    ten = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    ten[:, 0].view(4, 16)[:, :10] = True
    assert sample_sets(ten, 0.7).flatten(1).sum(1).tolist() == [7] * 4  # exact 0.7 * 10, not 8


def test_info_nce_paper_form_by_hand() -> None:
    q = torch.tensor([1.0, 0.0])
    pos = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cos 1, 0
    neg = torch.tensor([[-1.0, 0.0]])             # cos -1
    tau = 0.5
    expected = (math.log(1 + math.exp(-2 / tau)) + math.log(1 + math.exp(-1 / tau))) / 2
    assert math.isclose(float(info_nce(q, pos, neg, tau, "paper")), expected, rel_tol=1e-5)


def test_info_nce_hard_only_form_by_hand() -> None:
    q = torch.tensor([1.0, 0.0])
    pos = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    neg = torch.tensor([[-1.0, 0.0]])
    tau = 0.5
    # keys shifted by q: (1, 0), (-1, 3), (-2, 0) -> cos 1, -1/sqrt(10), -1;
    # term = -c/tau + log(exp(c) + exp(-1/tau))
    c2 = -1 / math.sqrt(10)
    t1 = -1 / tau + math.log(math.exp(1) + math.exp(-1 / tau))
    t2 = -c2 / tau + math.log(math.exp(c2) + math.exp(-1 / tau))
    got = float(info_nce(q, pos, neg, tau, "hard_only"))
    assert math.isclose(got, (t1 + t2) / 2, rel_tol=1e-5)


def _two_point_embedding(m: torch.Tensor) -> torch.Tensor:
    """(R, S, S) mask -> (R, 2, S, S): (1, 0) on the mask, (0, 1) off it."""
    return torch.stack([m.float(), (~m).float()], dim=1).requires_grad_(True)


def test_crc_loss_paper_four_terms_by_hand() -> None:
    # all fg pixels embed at (1, 0), bg at (0, 1): q_f = (1, 0), q_b = (0, 1); positives have
    # cos 1, negatives cos 0, so each term is log(1 + N_neg * exp(-1 / tau)).
    m = _disk11()[None].expand(2, -1, -1).clone()  # two identical RoIs -> keys doubled
    th, te = 0.7, 0.3
    emb = _two_point_embedding(m)
    got = crc_loss(emb, m, d=2, alpha=1.0, min_pixels=5, tau_hard=th, tau_easy=te)
    hp, ep, hn, en = 10, 16, 64, 128
    expected = (math.log(1 + ep * math.exp(-1 / te)) + math.log(1 + hp * math.exp(-1 / th))
                + math.log(1 + en * math.exp(-1 / te)) + math.log(1 + hn * math.exp(-1 / th)))
    assert math.isclose(float(got.detach()), expected, rel_tol=1e-5)
    got.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_crc_loss_drops_small_rois_and_keeps_a_graph() -> None:
    m = torch.zeros(3, 11, 11, dtype=torch.bool)
    m[1, 5, 5] = True  # one pixel: its sets are far below 5 pixels
    emb = torch.randn(3, 4, 11, 11, requires_grad=True)
    loss = crc_loss(emb, m, d=4)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    # d = 0 -> empty band -> every RoI dropped
    zero = crc_loss(_two_point_embedding(_disk11()[None]), _disk11()[None], d=0)
    assert float(zero.detach()) == 0.0


def test_lrd_boundary_weights_and_weighted_bce_by_hand() -> None:
    t = torch.zeros(1, 7, 7)
    t[0, 2:5, 2:5] = 1
    w = boundary_weights(t, 0.5)
    near = torch.zeros(7, 7, dtype=torch.bool)
    near[1:6, 1:6] = True
    near[3, 3] = False  # the centre sees only the square
    assert torch.equal(w[0], torch.where(near, 0.5, 1.0))
    loss = weighted_bce(torch.zeros(1, 7, 7), t, w)
    assert math.isclose(float(loss), math.log(2) * (24 * 0.5 + 25) / 49, rel_tol=1e-6)
    assert float(weighted_bce(torch.zeros(0, 7, 7), torch.zeros(0, 7, 7))) == 0.0


def test_mask_head_shapes_and_mean_fusion_at_init() -> None:
    head = BassMaskHead(8, 16, ["crc", "nmh", "lrd"], crc_channels=12)
    assert head.branches == ["nmh", "lrd", "crc"]
    f14, f28 = torch.randn(3, 8, 14, 14), torch.randn(3, 8, 28, 28)
    out = head(f14, f28, with_embed=True)
    assert out["mask"].shape == (3, 1, 28, 28)
    assert out["lrd"].shape == (3, 1, 14, 14)
    assert out["embed"].shape == (3, 12, 28, 28)
    trunk = head.trunk(f14)
    maps = [head.nmh(trunk), head.lrd_up(head.lrd(trunk)), head.crc(f28, with_embed=False)[0]]
    assert torch.allclose(out["mask"], sum(maps) / 3, atol=1e-5)
    plain = BassMaskHead(8, 16, ["nmh"])
    assert set(plain(f14)) == {"mask"} and plain.fusion is None


def test_paste_is_the_inverse_of_the_pixel_edge_roi_targets() -> None:
    from ircr.models.maskrcnn.paste import paste_masks

    ones = torch.ones(3, 1, 28, 28)
    half = ones.clone()
    ones_boxes = torch.tensor([[10.0, 12.0, 24.0, 20.0],   # 14 x 8 px: bins < 1 px
                               [3.0, 30.0, 59.0, 58.0],    # 56 x 28 px: bins 2 px
                               [0.0, 0.0, 5.0, 5.0]])      # at the image corner
    half[:, :, :, 14:] = 0  # left half of the RoI
    got = paste_masks(ones, ones_boxes, (64, 64)) >= 0.5
    for k, (x0, y0, x1, y1) in enumerate(ones_boxes.int().tolist()):
        exp = torch.zeros(64, 64, dtype=torch.bool)
        exp[y0:y1, x0:x1] = True  # exactly the box's pixels
        assert torch.equal(got[k, 0], exp)
    left = paste_masks(half[1:2], ones_boxes[1:2], (64, 64))[0, 0] >= 0.5
    exp = torch.zeros(64, 64, dtype=torch.bool)
    exp[30:58, 3:31] = True  # columns 3..30 = the left 28 of the 56 px box
    assert torch.equal(left, exp)
    # round trip: a mask RoIAligned to 28 x 28 and pasted back is the mask again
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 20:41, 15:43] = 1
    mask[0, 20:25, 15:20] = 0
    box = torch.tensor([[15.0, 20.0, 43.0, 41.0]])
    t28 = roi_mask_targets(mask, box, torch.tensor([0]), 28)
    back = paste_masks(t28[:, None], box, (64, 64))[0, 0] >= 0.5
    assert torch.equal(back, mask[0].bool())


def test_crc_loss_hard_only_by_hand() -> None:
    # released form: keys shifted by the query. With fg pixels at (1, 0) and bg at (0, 1):
    # a key of the query's own class shifts to 0 (cosine 0), one of the other class to
    # (-1, 1) or (1, -1) (cosine -1/sqrt 2); each term is log(1 + N_neg exp(-1/(sqrt 2 tau))).
    m = _disk11()[None].expand(2, -1, -1).clone()
    tau = 0.7
    got = crc_loss(_two_point_embedding(m), m, d=2, alpha=1.0, tau_hard=tau, form="hard_only")
    hp, hn = 10, 64
    c = -1 / math.sqrt(2)
    expected = math.log(1 + hn * math.exp(c / tau)) + math.log(1 + hp * math.exp(c / tau))
    assert math.isclose(float(got.detach()), expected, rel_tol=1e-5)
