"""EMA teacher of Mean Teacher / IRCR-Net (spec §1 step 6).

After every optimiser step ``θ_t ← α·θ_t + (1 − α)·θ_s`` for all parameters and for the
floating-point buffers (BatchNorm running mean/var are averaged the same way); integer
buffers (``num_batches_tracked``) are copied from the student.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ircr.errors import IrcrError


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with ``requires_grad=False`` everywhere, in eval mode."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float = 0.95) -> None:
    """In-place ``θ_t ← α·θ_t + (1 − α)·θ_s`` over parameters and floating buffers.

    Raises:
        IrcrError: α outside [0, 1] or models whose parameter/buffer names differ.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise IrcrError(f"ema_alpha: must be in [0, 1], got {alpha}")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    if t_params.keys() != s_params.keys() or t_bufs.keys() != s_bufs.keys():
        raise IrcrError("ema: teacher and student architectures differ")
    w = 1.0 - float(alpha)
    for name, tp in t_params.items():
        tp.lerp_(s_params[name].detach().to(tp.dtype), w)
    for name, tb in t_bufs.items():
        sb = s_bufs[name].detach()
        if torch.is_floating_point(tb):
            tb.lerp_(sb.to(tb.dtype), w)
        else:
            tb.copy_(sb)
