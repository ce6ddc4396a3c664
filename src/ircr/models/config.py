"""Model configuration: the HoVer-Net architecture as data.

The defaults are the paper configuration (HoVer-Net 'fast' pre-activation ResNet-50 encoder
with a stride-1 stem and no max-pool, 'same'-padded decoders with k=3, 256 -> 256 px).
``width`` and ``blocks`` shrink the network for tests and quick experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ircr.config import bounded, check_ranges, short_repr
from ircr.errors import IrcrError


@dataclass
class ModelConfig:
    """HoVer-Net architecture options.

    Attributes:
        encoder: "preact" (HoVer-Net pre-activation ResNet) or "resnet" (torchvision-layout
            post-activation ResNet, stride-1 stem, max-pool skipped).
        width: channel multiplier (1.0 = paper; 0.125-0.25 gives a tiny net for tests).
            Channels are rounded to multiples of 4 (the dense-block 3x3 conv uses 4 groups).
        blocks: residual units per encoder group d0..d3 (paper [3, 4, 6, 3]).
        decoder_units: dense units in the decoder stages u3, u2 (paper [8, 4]).
        decoder_kernel: k of the decoder k x k convs ('same' padding; paper 'fast' k = 3).
        nr_types: number of NC classes including background; None = no NC branch.
        pretrained: local path of encoder weights (HoVer-Net preact or torchvision ResNet-50
            layout) loaded by :func:`ircr.models.build_model`; None = random init.
        freeze_encoder_epochs: epochs during which the trainer sets ``model.freeze_encoder``
            (HoVer-Net phase 1: encoder units get no gradient).
        freeze_encoder_bn: while frozen, also keep encoder BatchNorm in eval mode (HoVer-Net
            itself keeps updating their running statistics: False).
        activation_checkpointing: in training, keep only the inputs of each encoder residual
            unit and decoder dense unit and recompute their activations in the backward pass
            (less memory per patch, ~1/3 more compute; outputs and gradients unchanged).
    """

    encoder: Literal["preact", "resnet"] = "preact"
    width: float = bounded(1.0, 0, 4, lo_open=True)
    blocks: list[int] = bounded(lo=1, hi=64, factory=lambda: [3, 4, 6, 3])
    decoder_units: list[int] = bounded(lo=0, hi=64, factory=lambda: [8, 4])
    decoder_kernel: int = bounded(3, 1, 31)
    nr_types: int | None = bounded(None, 2, 1024)
    pretrained: str | None = None
    freeze_encoder_epochs: int = bounded(0, 0, 1_000_000)
    freeze_encoder_bn: bool = False
    activation_checkpointing: bool = False

    def validate(self, where: str = "model") -> None:
        """Raise :class:`IrcrError` (naming ``where``) for values the network cannot use.

        Sizes have upper bounds (blocks and decoder units <= 64 per stage, kernel <= 31,
        width <= 4): larger values only exhaust memory.
        """
        check_ranges(self, where, "model.")
        if not 0.0 < self.width <= 4.0:
            raise IrcrError(f"{where}: model.width must be in (0, 4], got {self.width}")
        if len(self.blocks) != 4 or any(b < 1 for b in self.blocks):
            raise IrcrError(f"{where}: model.blocks must be 4 positive integers, got "
                            f"{short_repr(self.blocks)}")
        if len(self.decoder_units) != 2 or any(u < 0 for u in self.decoder_units):
            raise IrcrError(
                f"{where}: model.decoder_units must be 2 non-negative integers, "
                f"got {short_repr(self.decoder_units)}"
            )
        if self.decoder_kernel < 1 or self.decoder_kernel % 2 == 0:
            raise IrcrError(
                f"{where}: model.decoder_kernel must be odd and positive, got {self.decoder_kernel}"
            )
        if self.nr_types is not None and self.nr_types < 2:
            raise IrcrError(
                f"{where}: model.nr_types must be >= 2 (classes including background) or null, "
                f"got {self.nr_types}"
            )
        if self.freeze_encoder_epochs < 0:
            raise IrcrError(f"{where}: model.freeze_encoder_epochs must be >= 0")

    def channels(self, base: int) -> int:
        """Scaled channel count: ``base * width`` rounded to a multiple of 4 (at least 4)."""
        return max(4, int(round(base * self.width / 4.0)) * 4)
