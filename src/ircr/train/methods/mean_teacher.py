"""Mean Teacher (MT, = Table 3 "Scheme.1"): L_sup + γ1·‖F_s − F_t‖².

The teacher is an EMA copy of the student (weights and BN buffers, α = ``ema_alpha``,
updated after every optimiser step). Per iteration the student sees the labelled batch and
the strong view of the unlabelled batch (one forward of both); the teacher sees the weak view
of the same geometric augmentation (no grad, eval-mode BN). F = concat(NP prob, HV), the
consistency is the mean of squares over pixels and channels of each image (restricted to valid
pixels), averaged over the batch — i.e. PIAC with U ≡ 1.

Stability from scratch (docs/method.md): the unsupervised weight is
``γ1 · consistency_weight(iteration, warmup_iterations, rampup_iterations)`` — 0 during the
supervised warm-up, when the teacher is not run at all — and the teacher's HV maps are clamped
to [-1, 1] (``clamp_teacher_hv``) before they serve as targets. A :class:`ConsistencyGuard`
warns when the weighted unsupervised terms run away and logs ``teacher_max_abs`` and
``unsup_sup_ratio`` per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError
from ircr.ssl.diagnostics import EpochStats
from ircr.ssl.ema import ema_update, make_teacher
from ircr.ssl.guard import ConsistencyGuard
from ircr.ssl.ramp import consistency_weight
from ircr.train.methods import register_method
from ircr.train.methods.base import TeacherMethod


@dataclass
class MeanTeacherOptions:
    """Options of ``mean_teacher`` (ircr-method.md defaults; docs/method.md for the ramp).

    Attributes:
        ema_alpha: EMA decay of the teacher (weights and BN buffers).
        gamma1: weight of the consistency term.
        warmup_iterations: the unsupervised terms are 0 for this many iterations, then
            ramped up by exp(-5 (1 - t)^2) over rampup_iterations (paper: 0 and 0).
        clamp_teacher_hv: clamp the teacher's HV maps to [-1, 1] before they are used as
            targets (paper: false).
        guard_ratio: warn when the weighted unsupervised terms exceed this multiple of the
            supervised loss (0 = never).
    """

    ema_alpha: float = 0.95
    gamma1: float = 0.1
    warmup_iterations: int = 100
    rampup_iterations: int = 200
    clamp_teacher_hv: bool = True
    guard_ratio: float = 100.0

    def checks(self) -> list[tuple[bool, str, str]]:
        """(ok, key, problem) of every range check (subclasses add theirs)."""
        return [
            (0 <= self.ema_alpha <= 1, "ema_alpha", "must be in [0, 1]"),
            (self.gamma1 >= 0, "gamma1", "must be >= 0"),
            (self.warmup_iterations >= 0, "warmup_iterations", "must be >= 0"),
            (self.rampup_iterations >= 0, "rampup_iterations", "must be >= 0"),
            (self.guard_ratio >= 0, "guard_ratio", "must be >= 0 (0 = no warnings)"),
        ]

    def validate(self, where: str = "config") -> None:
        """One-line IrcrError naming ``method.<key>`` for a value out of range."""
        for ok, key, problem in self.checks():
            if not ok:
                raise IrcrError(f"{where}: config key 'method.{key}' {problem}")


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
class MeanTeacher(TeacherMethod):
    """EMA teacher + plain MSE consistency on F = concat(NP prob, HV)."""

    options_type = MeanTeacherOptions
    options: MeanTeacherOptions
    uses_unlabelled = True

    def setup(self) -> None:
        """Build the EMA teacher (a frozen copy of the student)."""
        self.teacher: nn.Module = make_teacher(self.trainer.model)
        self.stats = EpochStats()
        self.guard = ConsistencyGuard(ratio=self.options.guard_ratio)
        self._teacher_max: Tensor | None = None  # read at the end of the step (no early sync)

    def unsup_weight(self) -> float:
        """Ramp multiplier in [0, 1] of the unsupervised terms at this iteration."""
        return consistency_weight(self.trainer.iteration, self.options.warmup_iterations,
                                  self.options.rampup_iterations)

    # -- forward passes ----------------------------------------------------------------------
    def teacher_forward(self, weak: Tensor) -> dict[str, Tensor]:
        """Teacher output on the weak view: no grad, eval-mode BN (max |output| recorded)."""
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(weak)
        out = {k: v.detach() for k, v in out.items()}
        self._teacher_max = torch.maximum(out["np"].abs().amax(), out["hv"].abs().amax())
        return out

    def teacher_maps(self, out_t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher F (HV clamped to [-1, 1] when ``clamp_teacher_hv``) and B, float32."""
        ft, bt = feature_maps(out_t)
        if self.options.clamp_teacher_hv:
            ft = torch.cat([ft[:, :1], ft[:, 1:].clamp(-1.0, 1.0)], dim=1)
        return ft, bt

    def check_balance(self, sup: Tensor, weighted: dict[str, Tensor]) -> None:
        """Feed this iteration's supervised and weighted unsupervised terms to the guard."""
        self.guard.check(self.trainer.iteration + 1, float(sup.detach()),
                         {k: float(v.detach()) for k, v in weighted.items()},
                         None if self._teacher_max is None else float(self._teacher_max))
        self._teacher_max = None

    def warmup_step(self, labelled: dict[str, Tensor], strong: Tensor,
                    names: tuple[str, ...]) -> tuple[Tensor, dict[str, float]]:
        """Warm-up iteration: the same student forward, L_sup only, the teacher not run."""
        out_l, _ = self.student_forward(labelled, strong)
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        self.check_balance(sup, {})
        logs = {"sup": float(sup.detach()), **{k: 0.0 for k in names}, "unsup_weight": 0.0}
        return sup, logs

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
        w = self.unsup_weight()
        if w == 0.0:
            return self.warmup_step(labelled, unlabelled["strong"], ("mse",))
        out_t = self.teacher_forward(unlabelled["weak"])
        out_l, out_u = self.student_forward(labelled, unlabelled["strong"])
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        fs, _ = feature_maps(out_u)
        ft, _ = self.teacher_maps(out_t)
        cons = masked_mse(fs, ft, unlabelled["valid"].float())
        weighted = self.options.gamma1 * w * cons
        self.check_balance(sup, {"mse": weighted})
        return sup + weighted, {"sup": float(sup.detach()), "mse": float(cons.detach()),
                                "unsup_weight": w}

    def after_optimizer_step(self) -> None:
        """θ_t ← α·θ_t + (1 − α)·θ_s (weights and BN buffers)."""
        ema_update(self.teacher, self.trainer.model, self.options.ema_alpha)

    def epoch_end(self) -> dict[str, float]:
        """Per-epoch means of the iteration diagnostics."""
        out = self.stats.means()
        self.stats.reset()
        out.update(self.guard.epoch_values())
        return out

