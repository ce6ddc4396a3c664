"""CRC: boundary-aware pixel sets, sampling and the cross-RoI InfoNCE loss (§7.4).

Per positive RoI with 28x28 binary target ``m``:

* edge ``e``: pixels with a 4-neighbour of the other class (both sides of the contour, 2 px
  thick like vlkit's ``seg2edge`` on blob-shaped masks; outside the map counts as the same
  class, so the RoI border is no edge);
* ``near``: pixels at Euclidean distance < d from an edge pixel (the edge dilated by a disk);
  band = near minus the edge;
* hard positives = band ∩ m (inner boundary R_i), hard negatives = band \\ m (outer boundary
  R_o), easy positives = m \\ band (R_f; inner edge pixels land here, as in the released
  code), easy negatives = outside m and outside ``near`` (R_b).

RoIs with fewer than ``min_pixels`` pixels in any set are dropped; from each set of a kept
RoI ``ceil(alpha * |set|)`` pixels are drawn uniformly without replacement (the ceil of the
exact product: 0.7 * 10 -> 7). Queries (``query``):

* ``all_rois`` (default, the released code): per RoI the mean embedding of all of ``m`` (q_f)
  and of all of its complement (q_b), then averaged over the kept RoIs (cross-RoI); keys: the
  sampled pixels of all kept RoIs;
* ``two_rois`` (the paper's Eq. 5): two kept RoIs i, j drawn at random (torch's generator;
  both when only two are kept, the one when one is), q_b = the mean of their sampled R_b and
  R_o keys, q_f = the mean of their sampled R_f and R_i keys ("M, the averaged operation of
  vectors", over all those vectors); keys: the sampled pixels of those two RoIs.

InfoNCE, for query q, positive keys k+ and negative keys k-, on cosine similarity:

* ``paper`` (Eqs. 6-7): ``mean_i -log(exp(c+_i/t) / (exp(c+_i/t) + sum_j exp(c-_j/t)))``;
  L = CL(q_b; R_b vs R_f, t_easy) + CL(q_b; R_o vs R_i, t_hard) + CL(q_f; R_f vs R_b, t_easy)
  + CL(q_f; R_i vs R_o, t_hard).
* ``hard_only`` (the released ``PixelContrastiveHead.loss``): keys shifted first (k <- k - q),
  ``mean_i -log(exp(c+_i/t) / (exp(c+_i) + sum_j exp(c-_j/t)))`` (no t on the positive in the
  denominator); L = CL(q_f; R_i vs R_o, t_hard) + CL(q_b; R_o vs R_i, t_hard).

No kept RoI -> 0 with a graph (the released code falls back to 2 pixels per set and may crash).
d = 0 gives an empty band, so every RoI is dropped and the loss is 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["edge_map", "crc_pixel_sets", "sample_sets", "info_nce", "crc_loss", "SET_NAMES"]

#: the four pixel sets, in this order in :func:`crc_pixel_sets`.
SET_NAMES = ("hard_pos", "hard_neg", "easy_pos", "easy_neg")


def edge_map(m: torch.Tensor) -> torch.Tensor:
    """(R, S, S) bool -> bool, true where a 4-neighbour inside the map has the other class."""
    x = m.float()[:, None]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shifts = (p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:])
    edge = torch.zeros_like(x, dtype=torch.bool)
    for s in shifts:
        edge |= s != x
    return edge[:, 0]


def _disk_dilate(x: torch.Tensor, d: float) -> torch.Tensor:
    """(R, S, S) bool -> pixels at Euclidean distance < d from a true pixel."""
    if d <= 0:
        return torch.zeros_like(x)
    r = math.ceil(d) - 1
    off = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    disk = ((off[:, None] ** 2 + off[None, :] ** 2) < d * d).float()[None, None]
    return F.conv2d(x.float()[:, None], disk, padding=r)[:, 0] > 0.5


def crc_pixel_sets(m: torch.Tensor, d: float = 4) -> torch.Tensor:
    """(R, S, S) bool targets -> (4, R, S, S) bool: hard_pos, hard_neg, easy_pos, easy_neg."""
    m = m.bool()
    edge = edge_map(m)
    near = _disk_dilate(edge, d)
    band = near & ~edge
    return torch.stack([band & m, band & ~m, m & ~band, ~m & ~near])


def sample_sets(sets: torch.Tensor, alpha: float) -> torch.Tensor:
    """(4, R, S, S) bool -> same shape, a uniform subset of ceil(alpha*|set|) per RoI and set."""
    flat = sets.flatten(2)
    n = flat.sum(-1)
    k = torch.ceil(n.double() * alpha - 1e-9).long()
    u = torch.rand(flat.shape, device=flat.device)
    u = torch.where(flat, u, torch.full_like(u, 2.0))
    order = u.argsort(-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[..., None]).view_as(sets)


def info_nce(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float,
    form: Literal["paper", "hard_only"] = "paper",
) -> torch.Tensor:
    """InfoNCE of query ``q`` (E,) against keys ``pos`` (P, E), ``neg`` (N, E); mean over P."""
    if form == "hard_only":
        pos, neg = pos - q, neg - q
    cp = F.cosine_similarity(pos, q[None], dim=1)
    cn = F.cosine_similarity(neg, q[None], dim=1)
    neg_term = cn / tau
    pos_den = cp / tau if form == "paper" else cp
    # log(exp(pos_i) + sum_j exp(neg_j)) with the negatives' sum shared: O(P + N), not O(P N)
    den = torch.logaddexp(pos_den, torch.logsumexp(neg_term, dim=0))
    return (den - cp / tau).mean()


def crc_loss(
    embed: torch.Tensor, m: torch.Tensor, *, d: float = 4, alpha: float = 0.7,
    min_pixels: int = 5, tau_hard: float = 0.7, tau_easy: float = 0.3,
    form: Literal["paper", "hard_only"] = "paper",
    query: Literal["all_rois", "two_rois"] = "all_rois",
) -> torch.Tensor:
    """Cross-RoI contrastive loss of (R, E, S, S) embeddings with (R, S, S) binary targets."""
    m = m.bool()
    sets = crc_pixel_sets(m, d)
    keep = (sets.flatten(2).sum(-1) >= min_pixels).all(0)
    if not bool(keep.any()):
        return embed.sum() * 0.0
    embed, m, sets = embed[keep], m[keep], sets[:, keep]
    if query == "two_rois" and embed.shape[0] > 2:
        pair = torch.randperm(embed.shape[0], device=embed.device)[:2]
        embed, m, sets = embed[pair], m[pair], sets[:, pair]
    pix = embed.permute(0, 2, 3, 1)  # (R, S, S, E)
    picked = sample_sets(sets, alpha)
    hp, hn, ep, en = (pix[picked[i]] for i in range(4))
    if query == "two_rois":  # Eq. 5: means of the sampled keys
        q_f, q_b = torch.cat([ep, hp]).mean(0), torch.cat([en, hn]).mean(0)
    else:
        fg = m[..., None].to(pix.dtype)
        q_f = ((pix * fg).sum((1, 2)) / fg.sum((1, 2))).mean(0)
        q_b = ((pix * (1 - fg)).sum((1, 2)) / (1 - fg).sum((1, 2))).mean(0)
    if form == "hard_only":
        return info_nce(q_f, hp, hn, tau_hard, form) + info_nce(q_b, hn, hp, tau_hard, form)
    return (
        info_nce(q_b, en, ep, tau_easy) + info_nce(q_b, hn, hp, tau_hard)
        + info_nce(q_f, ep, en, tau_easy) + info_nce(q_f, hp, hn, tau_hard)
    )
