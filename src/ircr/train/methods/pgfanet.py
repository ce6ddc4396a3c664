"""PG-FANet (Jin et al., ESWA 2024) as a method plug-in: semi-supervised 3-class segmentation.

Reference-algorithms.md §8.3; docs/method.md ("PG-FANet") lists every choice and deviation.

* **Network**: :class:`~ircr.models.pgfanet_net.PGFANet` (``method.net``), a ``pgfanet``
  model folder (:mod:`ircr.inference.families.pgfanet`): validation and ``model/`` use its
  3-class softmax and the interior post-processing (``method.postproc``).
* **Labelled loss**: CE + soft Dice (smooth 1) of the final and of the stage-1 (auxiliary)
  logits against the 3-class target built from the augmented instance map
  (:func:`~ircr.ssl.pgfanet_losses.three_class_targets`, boundary ``boundary_width`` px), plus
  ``variance_weight`` x the variance loss of the final softmax inside each interior component.
* **Unlabelled**: the teacher is the EMA of the student (decay min(α, (s+1)/(s+10)) at step
  s, weights and BN buffers; eval-mode BN). Gaussian noise (``input_noise_std`` in units of the
  normalised input) is added to either the student's or the teacher's input, chosen at random
  per iteration; the student also runs with its feature perturbations (``perturb``: Dropout2d
  0.5 on the head input, attention-threshold feature dropout and ±0.3 multiplicative noise
  on the stage-1 output). Both see the ``weak`` view of the batch.
* **Consistency**: :func:`~ircr.ssl.pgfanet_losses.uncertainty_consistency` weighted by
  ``consistency · exp(−5 (1 − e/E)²)`` (e the epoch, E = ``rampup_epochs`` or ``train.epochs``).

Every loss term is restricted to the batch's valid (non-padding) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError
from ircr.models.pgfanet_net import IMAGENET_STD, PGFANetConfig, build_pgfanet
from ircr.postproc.interior import InteriorParams
from ircr.ssl.ema import ema_update, make_teacher
from ircr.ssl.pgfanet_losses import (
    ce_dice,
    interior_components,
    three_class_targets,
    uncertainty_consistency,
    variance_loss,
)
from ircr.ssl.ramp import consistency_weight
from ircr.train.methods import register_method
from ircr.train.methods.base import FamilyOutput, TeacherMethod


@dataclass
class PGFANetOptions:
    """Options of ``pgfanet`` (``method:`` keys); defaults = the released MoNuSeg setting.

    Attributes:
        net: the network (:class:`~ircr.models.pgfanet_net.PGFANetConfig`: width, pretrained).
        postproc: instances from the 3-class map (min size 20, dilation radius 2).
        boundary_width: boundary ring of the 3-class target in px (our choice: 2, the radius
            the post-processing dilates back; the paper gives no value).
        aux_weight: weight of the stage-1 CE + Dice (1).
        variance_weight: weight of the variance loss (1).
        consistency: maximum weight of the consistency (released ``--consis`` 0.1).
        rampup_epochs: epochs of the sigmoid ramp-up (None = ``train.epochs``, released).
        ema_alpha: maximum EMA decay of the teacher (released CLI default 0.99).
        input_noise_std: Gaussian input noise, std in units of the normalised input (0.5).
        perturb: the student's feature perturbations on unlabelled data (released
            ``--intra``/``--random-noise``: on).
        mask: weight the inter term by 1 + normalised entropy of |p_S − p_T| instead of adding
            the entropy term (released ``--mask``; off).
    """

    net: PGFANetConfig = field(default_factory=PGFANetConfig)
    postproc: InteriorParams = field(default_factory=InteriorParams)
    boundary_width: int = 2
    aux_weight: float = 1.0
    variance_weight: float = 1.0
    consistency: float = 0.1
    rampup_epochs: int | None = None
    ema_alpha: float = 0.99
    input_noise_std: float = 0.5
    perturb: bool = True
    mask: bool = False

    def validate(self, where: str = "config") -> None:
        """One-line IrcrError naming ``method.<key>`` for a value out of range."""
        for ok, key, problem in (
            (0 <= self.boundary_width <= 64, "boundary_width", "must be in [0, 64]"),
            (self.aux_weight >= 0, "aux_weight", "must be >= 0"),
            (self.variance_weight >= 0, "variance_weight", "must be >= 0"),
            (self.consistency >= 0, "consistency", "must be >= 0"),
            (self.rampup_epochs is None or self.rampup_epochs >= 0, "rampup_epochs",
             "must be >= 0 or null"),
            (0 <= self.ema_alpha <= 1, "ema_alpha", "must be in [0, 1]"),
            (self.input_noise_std >= 0, "input_noise_std", "must be >= 0"),
        ):
            if not ok:
                raise IrcrError(f"{where}: config key 'method.{key}' {problem}")


@register_method("pgfanet")
class PGFANetMethod(TeacherMethod):
    """Mean teacher with PG-FANet's losses and perturbations (module docstring)."""

    options_type = PGFANetOptions
    options: PGFANetOptions
    uses_unlabelled = True
    uses_instances = True

    def build_model(self) -> nn.Module:
        """PG-FANet of ``method.net`` (ResNet-34 weights loaded when ``net.pretrained``)."""
        return build_pgfanet(self.options.net)

    def setup(self) -> None:
        """The EMA teacher (a frozen copy of the student, eval mode)."""
        self.teacher: nn.Module = make_teacher(self.trainer.model)

    def model_family(self) -> FamilyOutput:
        """Validation and ``model/``: the ``pgfanet`` family with ``method.net``/``postproc``."""
        return FamilyOutput("pgfanet", self.options.net, self.options.postproc)

    # -- loss pieces ---------------------------------------------------------------------
    def supervised(self, labelled: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """CE + Dice of the final and stage-1 outputs + the variance loss (clean forward)."""
        opts = self.options
        if labelled["image"].shape[0] == 0:
            zero = labelled["image"].new_zeros(())
            return zero, {"seg": 0.0, "aux": 0.0, "var": 0.0}
        out = self.trainer.model(labelled["image"])
        valid = labelled["valid"]
        target = three_class_targets(labelled["inst"], opts.boundary_width)
        seg = ce_dice(out["seg"], target, valid)
        aux = ce_dice(out["aux"], target, valid)
        ids = interior_components(torch.where(valid, target, torch.zeros_like(target)))
        var = variance_loss(torch.softmax(out["seg"].float(), dim=1), ids)
        loss = seg + opts.aux_weight * aux + opts.variance_weight * var
        return loss, {"seg": float(seg.detach()), "aux": float(aux.detach()),
                      "var": float(var.detach())}

    def noisy(self, x: Tensor) -> Tensor:
        """x (N, 3, H, W) 0..255 plus Gaussian noise of ``input_noise_std`` normalised units."""
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x + torch.randn_like(x) * (self.options.input_noise_std * 255.0) * std

    def unsupervised(self, unlabelled: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The uncertainty consistency of the student (perturbed) against the teacher."""
        x = unlabelled["weak"]
        noise_on_student = bool(torch.rand(()) < 0.5)
        xn = self.noisy(x)
        self.teacher.eval()
        with torch.no_grad():
            p_t = torch.softmax(self.teacher(x if noise_on_student else xn)["seg"].float(),
                                dim=1)
        out = self.trainer.model(xn if noise_on_student else x, perturb=self.options.perturb)
        p_s = torch.softmax(out["seg"].float(), dim=1)
        p_s1 = torch.softmax(out["aux"].float(), dim=1)
        return uncertainty_consistency(p_s, p_s1, p_t, mask=self.options.mask,
                                       valid=unlabelled["valid"])

    def unsup_weight(self) -> float:
        """consistency · exp(−5 (1 − e/E)²) at the current epoch."""
        t = self.trainer
        ramp = self.options.rampup_epochs
        ramp = int(t.cfg.train.epochs) if ramp is None else ramp
        return self.options.consistency * consistency_weight(t.epoch, 0, ramp)

    # -- contract ------------------------------------------------------------------------
    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        """L = L_seg + L_aux + λ_var·L_var + w(e)·L_cons (module docstring)."""
        if unlabelled is None:
            raise RuntimeError("pgfanet needs an unlabelled batch")
        w = self.unsup_weight()
        sup, logs = self.supervised(labelled)
        cons, parts = self.unsupervised(unlabelled)
        logs.update({"cons": float(cons.detach()), **parts, "unsup_weight": w})
        return sup + w * cons, logs

    def after_optimizer_step(self) -> None:
        """Teacher ← EMA with decay min(α, (s+1)/(s+10)), s = optimiser steps before this."""
        s = self.trainer.iteration
        ema_update(self.teacher, self.trainer.model,
                   min(self.options.ema_alpha, (s + 1) / (s + 10)))

