"""Mean Teacher (MT, = Table 3 "Scheme.1"): L_sup + γ1·‖F_s − F_t‖².

The teacher is an EMA copy of the student (weights and BN buffers, α = ``ema_alpha``,
updated after every optimiser step). Per iteration the student sees the labelled batch and
the strong view of the unlabelled batch (one forward of both); the teacher sees the weak view
of the same geometric augmentation (no grad, eval-mode BN). F = concat(NP prob, HV), the
consistency is the mean of squares over pixels and channels of each image (restricted to valid
pixels), averaged over the batch — i.e. PIAC with U ≡ 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ircr.ssl.diagnostics import EpochStats
from ircr.ssl.ema import ema_update, make_teacher
from ircr.train.methods import register_method
from ircr.train.methods.base import Method


def feature_maps(out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """F = concat(P, HV) (N, 3, H, W) and B = P (N, 1, H, W), float32, from network output.

    P is the NP foreground probability (softmax channel 1).
    """
    prob = torch.softmax(out["np"].float(), dim=1)[:, 1:2]
    return torch.cat([prob, out["hv"].float()], dim=1), prob


def masked_mse(fs: Tensor, ft: Tensor, weight: Tensor | None = None) -> Tensor:
    """(1/B) Σ_images mean over pixels and channels of ((fs − ft)·weight)².

    Args:
        fs, ft: (N, C, H, W) feature maps.
        weight: (N, H, W) per-pixel weight (U mask × valid), or None for 1.
    """
    diff = fs - ft
    if weight is not None:
        diff = diff * weight.unsqueeze(1).to(diff.dtype)
    return diff.pow(2).mean(dim=(1, 2, 3)).mean()


def split_output(out: dict[str, Tensor], n: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a batched network output into the first ``n`` samples and the rest."""
    return {k: v[:n] for k, v in out.items()}, {k: v[n:] for k, v in out.items()}


@register_method("mean_teacher")
class MeanTeacher(Method):
    """EMA teacher + plain MSE consistency on F = concat(NP prob, HV)."""

    uses_unlabelled = True

    def setup(self) -> None:
        """Build the EMA teacher (a frozen copy of the student)."""
        self.teacher: nn.Module = make_teacher(self.trainer.model)
        self.stats = EpochStats()

    # -- forward passes ----------------------------------------------------------------------
    def teacher_forward(self, weak: Tensor) -> dict[str, Tensor]:
        """Teacher output on the weak view: no grad, eval-mode BN."""
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(weak)
        return {k: v.detach() for k, v in out.items()}

    def student_forward(
        self, labelled: dict[str, Tensor], strong: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One student forward of labelled + strong views; returns (labelled, unlabelled) outs."""
        n = labelled["image"].shape[0]
        out = self.trainer.model(torch.cat([labelled["image"], strong], dim=0))
        return split_output(out, n)

    def train_step(
        self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """L_sup + γ1·MSE(F_s, F_t) on valid pixels of the unlabelled batch."""
        if unlabelled is None:
            raise RuntimeError("mean_teacher needs an unlabelled batch")
        out_t = self.teacher_forward(unlabelled["weak"])
        out_l, out_u = self.student_forward(labelled, unlabelled["strong"])
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        fs, _ = feature_maps(out_u)
        ft, _ = feature_maps(out_t)
        cons = masked_mse(fs, ft, unlabelled["valid"].float())
        loss = sup + self.cfg.gamma1 * cons
        return loss, {"sup": float(sup.detach()), "mse": float(cons.detach())}

    def after_optimizer_step(self) -> None:
        """θ_t ← α·θ_t + (1 − α)·θ_s (weights and BN buffers)."""
        ema_update(self.teacher, self.trainer.model, self.cfg.ema_alpha)

    def epoch_end(self) -> dict[str, float]:
        """Per-epoch means of the iteration diagnostics."""
        out = self.stats.means()
        self.stats.reset()
        return out

    def eval_models(self) -> dict[str, nn.Module]:
        """Validate both the student and the teacher."""
        return {"student": self.trainer.model, "teacher": self.teacher}

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights and buffers."""
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher."""
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
