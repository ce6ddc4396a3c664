"""Supervised training (SupOnly at a label ratio < 1, FullSup at ratio 1): L = L_sup.

L_sup is HoVer-Net's loss (NP CE + soft Dice, HV MSE + MSGE; ``trainer.supervised_loss``)
on the labelled batch, restricted to valid (non-padding) pixels. No unlabelled data is used;
one epoch is one pass over the labelled patches.
"""

from __future__ import annotations

from torch import Tensor

from ircr.train.methods import register_method
from ircr.train.methods.base import Method


@register_method("supervised")
class Supervised(Method):
    """L = L_sup on the labelled batch."""

    uses_unlabelled = False

    def train_step(
        self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Student forward on the augmented labelled images; returns (L_sup, its parts)."""
        out = self.trainer.model(labelled["image"])
        return self.trainer.supervised_loss(out, labelled)
