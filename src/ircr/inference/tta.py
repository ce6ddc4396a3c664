"""Test-time augmentation of HoVer-Net maps: mirror (and transpose) the input, average the maps.

Each window is run once per transform of the dihedral group of the square and each output is
mapped back to the input's frame before averaging:

* a mirror along x (width) reverses the x axis of the maps and negates the HV x channel (the
  horizontal distance to the nucleus centre changes sign); a mirror along y negates HV y;
* a transpose swaps the two spatial axes of the maps and the HV x / y channels.

The NP output is averaged as probabilities (softmax of each pass), and returned as their log,
so the caller's softmax gives back exactly the mean probability. Modes (``TTA_MODES``):
``off`` (one pass), ``mirror`` (identity and mirror x: 2 passes), ``flips`` (identity, mirror
x, mirror y, both: 4 passes, the same as the rotations by 0 / 180° and the two mirrors) and
``d4`` (those 4 on the image and on its transpose: all 8 rotations and mirrors). The network
cost grows with the passes; WBIS runs once on the averaged maps. Measured (docs/models.md,
"Test-time augmentation"): on CPM-15, ``mirror`` and ``flips`` remove most of the packaged
model's over-counting on unfamiliar tissue (objects on background, which the passes disagree
on; not split nuclei); on MoNuSeg validation they are neutral.

Only families whose maps follow these rules (HoVer-Net) accept a mode other than ``off``
(:func:`check_tta`).
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.inference.module_cache import cached

TTAMode = Literal["off", "mirror", "flips", "d4"]
TTA_MODES: tuple[str, ...] = get_args(TTAMode)

# (transpose, mirror y, mirror x) per pass, identity first
_TRANSFORMS: dict[str, tuple[tuple[bool, bool, bool], ...]] = {
    "off": ((False, False, False),),
    "mirror": ((False, False, False), (False, False, True)),
    "flips": ((False, False, False), (False, False, True), (False, True, False),
              (False, True, True)),
}
_TRANSFORMS["d4"] = _TRANSFORMS["flips"] + tuple((True, fy, fx)
                                                 for _, fy, fx in _TRANSFORMS["flips"])


def tta_passes(mode: str) -> int:
    """Network passes per window of ``mode``."""
    return len(_TRANSFORMS[mode])


def check_tta(mode: str, family: str, where: str = "tta") -> TTAMode:
    """``mode`` when valid for a model of ``family``, else a one-line :class:`IrcrError`."""
    if mode not in TTA_MODES:
        raise IrcrError(f"{where}: unknown test-time augmentation '{mode}' "
                        f"(known: {', '.join(TTA_MODES)})")
    if mode != "off" and family != "hovernet":
        raise IrcrError(f"{where}: test-time augmentation '{mode}' needs a HoVer-Net model "
                        f"(this one is a '{family}' model); use tta off")
    return cast(TTAMode, mode)


class FlipAveraged(nn.Module):
    """A HoVer-Net-like network run under several mirrors/transposes, outputs averaged.

    ``forward``: (B, 3, H, W) float -> {"np": (B, 2, H, W) log of the mean NP probability,
    "hv": (B, 2, H, W) mean HV maps (channel 0 = x, 1 = y)}; other outputs of ``net`` are
    dropped. ``net`` must return {"np": logits (B, 2, H, W), "hv": (B, 2, H, W)} at the input's
    size. Holds no parameters of its own (``net``'s train/eval mode is the wrapper's).
    """

    def __init__(self, net: nn.Module, mode: str = "flips") -> None:
        super().__init__()
        if mode not in _TRANSFORMS:
            raise IrcrError(f"tta: unknown test-time augmentation '{mode}'")
        self.net = net
        self.mode = mode

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        prob_sum: torch.Tensor | None = None
        hv_sum: torch.Tensor | None = None
        for transpose, flip_y, flip_x in _TRANSFORMS[self.mode]:
            prob, hv = self._pass(x, transpose, flip_y, flip_x)
            prob_sum = prob if prob_sum is None else prob_sum + prob
            hv_sum = hv if hv_sum is None else hv_sum + hv
        assert prob_sum is not None and hv_sum is not None
        n = float(tta_passes(self.mode))
        return {"np": torch.log((prob_sum / n).clamp_min(1e-12)), "hv": hv_sum / n}

    def _pass(self, x: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformed pass, mapped back: prob (B, 2, H, W), hv (B, 2, H, W) float32."""
        dims = [d for d, on in ((-2, flip_y), (-1, flip_x)) if on]
        z = x.transpose(-1, -2).contiguous() if transpose else x  # dense, as the network expects
        if dims:
            z = z.flip(dims)
        out = self.net(z)
        prob = torch.softmax(out["np"].float(), dim=1)
        hv = out["hv"].float()
        if dims:
            prob, hv = prob.flip(dims), hv.flip(dims)
            sign = hv.new_tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
            hv = hv * sign.view(1, 2, 1, 1)
        if transpose:  # back to the input's axes: (y, x) swap, and HV x <-> y
            prob = prob.transpose(-1, -2)
            hv = hv.transpose(-1, -2).flip(1)
        return prob, hv


def flip_averaged(net: nn.Module, mode: str) -> nn.Module:
    """``net`` itself for ``off``; else its (cached) :class:`FlipAveraged` wrapper, one per
    network and mode and freed with it, so a compiled graph (cached per module) is built
    once."""
    if mode == "off":
        return net
    return cached(net, ("tta", mode), lambda: FlipAveraged(net, mode))
