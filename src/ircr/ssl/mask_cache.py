"""The per-patch mask cache of IRCR's ``mask_source: previous`` (un-augmented patch frame).

A view-frame label map is scattered back into the un-augmented patch frame
(:func:`to_patch_frame`) and stored compressed (:func:`pack` / :func:`unpack`, checkpoint-safe
uint8 tensors) until the patch is visited again.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import Tensor


def to_patch_frame(view_map: np.ndarray, src_index: np.ndarray, size: int) -> np.ndarray:
    """Scatter a view-frame label map back into the un-augmented (size, size) patch frame.

    Args:
        view_map: (H, W) int label map in the augmented view.
        src_index: (H, W) int64 flat source index per view pixel (-1 = outside the patch).
        size: P, the patch side.

    Returns:
        (P, P) int32 map; patch pixels no view pixel came from (down-scaling gaps) take the
        value of the nearest covered pixel within 1.5 px, the rest 0.
    """
    flat = np.zeros(size * size, dtype=np.int32)
    flat_cov = np.zeros(size * size, dtype=bool)
    ok = src_index >= 0
    flat[src_index[ok]] = view_map[ok]
    flat_cov[src_index[ok]] = True
    out = flat.reshape(size, size)
    covered = flat_cov.reshape(size, size)
    if covered.any() and not covered.all():
        dist, (iy, ix) = ndi.distance_transform_edt(~covered, return_indices=True)
        gap = ~covered & (dist <= 1.5)
        out[gap] = out[iy[gap], ix[gap]]
    return out


def pack(arr: np.ndarray) -> Tensor:
    """Compress an int32 label map into a 1-D uint8 tensor (checkpoint-safe)."""
    raw = zlib.compress(np.ascontiguousarray(arr, dtype=np.int32).tobytes(), 1)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def unpack(t: Tensor, size: int) -> np.ndarray:
    """Inverse of :func:`pack` for a (size, size) map."""
    raw = zlib.decompress(t.numpy().tobytes())
    return np.frombuffer(raw, dtype=np.int32).reshape(size, size).copy()
