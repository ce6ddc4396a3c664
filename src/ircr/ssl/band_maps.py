"""MIAC band-count maps computed with torch (on the GPU during training).

:func:`ircr.ssl.matching.pair_index_maps` builds, per kept pair, the boundary band of its
teacher and student instance (Sobel != 0 with 'nearest' padding, dilated by a 3x3 square) and
counts how many pairs' bands cover each pixel - a Python loop over pairs with small SciPy calls.
The pair-index maps ``lt`` / ``ls`` already hold every paired instance (pixel -> pair index),
so the same counts follow from one-hot masks of the pair indices with two convolutions and a
max-pool per chunk of pairs, on whatever device the maps are on. The arithmetic is on small
integers (exact in float32), so the counts equal the SciPy ones exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_SOBEL = torch.tensor([[[[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]],   # d/dy
                       [[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]])  # d/dx


def _bands(index: Tensor, first: int, last: int) -> Tensor:
    """(last - first, H, W) bool bands of the instances with pair index first+1..last."""
    ids = torch.arange(first + 1, last + 1, device=index.device).view(-1, 1, 1)
    masks = (index.unsqueeze(0) == ids).unsqueeze(1).float()  # (P, 1, H, W)
    padded = F.pad(masks, (1, 1, 1, 1), mode="replicate")      # scipy mode='nearest'
    grad = F.conv2d(padded, _SOBEL.to(index.device))            # (P, 2, H, W)
    edge = (grad != 0).any(dim=1, keepdim=True).float()
    return F.max_pool2d(edge, 3, stride=1, padding=1)[:, 0] > 0  # 3x3 dilation, border 0


def band_counts(lt: Tensor, ls: Tensor, n_pairs: int, chunk: int = 64
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Band counts (band_t, band_s, band_ts) of one image's pairs, each (H, W) uint8.

    Args:
        lt, ls: (H, W) integer pair-index maps (1..n_pairs, 0 = no pair), any device.
        n_pairs: number of kept pairs of the image.
        chunk: pairs per one-hot block (bounds memory to chunk x H x W floats).
    """
    h, w = lt.shape
    counts = [torch.zeros((h, w), dtype=torch.int32, device=lt.device) for _ in range(3)]
    for first in range(0, n_pairs, chunk):
        last = min(n_pairs, first + chunk)
        bt, bs = _bands(lt, first, last), _bands(ls, first, last)
        counts[0] += bt.sum(dim=0, dtype=torch.int32)
        counts[1] += bs.sum(dim=0, dtype=torch.int32)
        counts[2] += (bt & bs).sum(dim=0, dtype=torch.int32)
    return counts[0].to(torch.uint8), counts[1].to(torch.uint8), counts[2].to(torch.uint8)


def batch_band_counts(lt: Tensor, ls: Tensor, n_pairs: list[int], chunk: int = 64
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """(B, H, W) band counts of a batch from (B, H, W) pair-index maps and per-image pairs."""
    per = [band_counts(lt[b], ls[b], n_pairs[b], chunk) for b in range(lt.shape[0])]
    return tuple(torch.stack([p[k] for p in per]) for k in range(3))  # type: ignore[return-value]
