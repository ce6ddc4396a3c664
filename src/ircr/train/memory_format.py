"""channels_last training: the network's weights and 4-D inputs in NHWC memory layout.

On x86 CPUs oneDNN's NHWC convolution kernels are faster than NCHW (measured on the 2-core
AMD EPYC of docs/benchmarks.md: lite HoVer-Net train step, batch 8 of 128 px, 1.98 s -> 1.31 s
with weights and input in NHWC; 1.55 s with NHWC weights but an NCHW input, hence the input
hook). The values are the same up to float rounding; the layout is not saved in checkpoints
(``load_state_dict`` copies values into the existing parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _to_channels_last(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=torch.channels_last)
                 if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)


def apply_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-D parameters and buffers to channels_last in place and make its
    forward convert 4-D tensor arguments (N, C, H, W) the same way. Returns ``model``.
    Copies made later (``copy.deepcopy``, an EMA teacher) keep the layout and the hook."""
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.register_forward_pre_hook(_to_channels_last)
    return model
