"""CDCL: cross-patch dense contrastive learning (Wu et al., CVPR 2022; reference §8.2).

A semantic (nuclei vs background) network of the ``cdcl`` model family
(:mod:`ircr.models.cdcl_net`: DenseNet-161 encoder, U-Net-like decoder, 2 classes, projector)
trained by the trainer's per-step loop with an EMA teacher. Per iteration:

    L = CE_sup(labelled)
        + w(t) · λ_cons · CE(student(strong), argmax teacher(weak) | confidence > τ_conf)
        + λ_ent · entropy(student(strong))
        + λ_con · L_cdcl(student / teacher embeddings, memory bank)

The unsupervised terms are 0 for ``warmup_iterations`` (the released code's ``epoch_semi``;
the teacher is not run) and ``w(t)`` is the sigmoid ramp ``exp(-5 (1 - t/T)^2)`` over
``rampup_iterations`` after it (on the consistency term only, as in the released code). The
teacher is the EMA of the whole network with ``α_t = min(1 - 1/(step + 1), ema_alpha)``; it sees
the weak view in eval mode (no dropout: the released classifier's always-on dropout is not
copied), the student the strong view of the same geometric augmentation (pixel-aligned).

The contrastive term (:func:`ircr.ssl.cdcl_loss.cross_patch_contrastive`): teacher
pseudo-labels are brought onto the embedding grid, each image's grid is split into
``patch_num x patch_num`` patches with foreground ratio FC; the student pixels of patches with
FC <= ``bdp_threshold`` or >= ``fdp_threshold`` are anchors, their positive is the teacher
embedding at the same pixel, their negatives are pixels of the FIFO memory bank (student and
teacher embeddings of the last ``bank_size`` pixels, this batch included) with the other
pseudo-label and patch FC + anchor FC <= bdp + fdp. Values the paper does not give are our
choices (docs/method.md, "CDCL").

The model folder is a ``cdcl`` family folder (instances = connected components of the
thresholded foreground, :mod:`ircr.postproc.components`); validation and ``ircr evaluate``
report AJI, Dice, PQ and F1 of those instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ircr.config import bounded
from ircr.errors import IrcrError
from ircr.models.cdcl_net import CDCLNetConfig, build_cdcl_net
from ircr.postproc.components import ComponentParams
from ircr.ssl.cdcl_loss import (
    MemoryBank,
    batch_entries,
    cross_patch_contrastive,
    embedding_labels,
    entropy_loss,
    masked_ce,
    patch_fc,
    pseudo_label_ce,
)
from ircr.ssl.ema import ema_update, make_teacher
from ircr.ssl.ramp import consistency_weight
from ircr.train.methods import register_method
from ircr.train.methods.base import FamilyOutput, TeacherMethod

LOG_KEYS = ("sup", "cons", "ent", "contrast", "conf_frac", "anchor_patches", "unsup_weight")


@dataclass
class CDCLOptions:
    """Options of ``cdcl`` (``method:`` keys). Paper/released-code values where they exist;
    every other default is our choice (docs/method.md, "CDCL").

    Attributes:
        model: the network (:class:`~ircr.models.cdcl_net.CDCLNetConfig`, DenseNet-161).
        postproc: instances from the semantic output (connected components).
        ema_alpha: upper bound of the teacher's EMA decay.
        warmup_iterations: supervised-only iterations before the semi-supervised terms.
        rampup_iterations: length of the sigmoid ramp of the consistency weight.
        consistency_weight: w_max of the pseudo-label CE.
        conf_threshold: teacher confidence above which a pixel's pseudo-label is used.
        entropy_weight, contrast_weight: weights of entropy minimisation and of L_cdcl.
        temperature: InfoNCE temperature.
        patch_num: grid side of the patches of each image's embedding map.
        bdp_threshold, fdp_threshold: FC of background / foreground anchor patches.
        bank_size: memory bank capacity in pixel embeddings (FIFO).
        anchor_chunk: anchors per similarity block (memory, not results).
    """

    model: CDCLNetConfig = field(default_factory=CDCLNetConfig)
    postproc: ComponentParams = field(default_factory=ComponentParams)
    ema_alpha: float = bounded(0.99, 0, 1)
    warmup_iterations: int = bounded(100, 0)
    rampup_iterations: int = bounded(200, 0)
    consistency_weight: float = bounded(1.0, 0)
    conf_threshold: float = bounded(0.9, 0.5, 1, hi_open=True)
    entropy_weight: float = bounded(0.1, 0)
    contrast_weight: float = bounded(0.1, 0)
    temperature: float = bounded(0.1, 0, lo_open=True)
    patch_num: int = bounded(4, 1, 64)
    bdp_threshold: float = bounded(0.3, 0, 1)
    fdp_threshold: float = bounded(0.7, 0, 1)
    bank_size: int = bounded(32768, 1, 10**8)
    anchor_chunk: int = bounded(1024, 1, 10**6)

    def validate(self, where: str = "config") -> None:
        """One-line IrcrError for inconsistent values (ranges are checked by ``from_dict``)."""
        self.model.validate(where)
        if self.bdp_threshold >= self.fdp_threshold:
            raise IrcrError(f"{where}: config key 'method.bdp_threshold' must be < "
                            f"method.fdp_threshold ({self.fdp_threshold}), got "
                            f"{self.bdp_threshold}")


@register_method("cdcl")
class CDCL(TeacherMethod):
    """EMA teacher, pseudo-label CE, entropy minimisation, cross-patch dense contrast."""

    options_type = CDCLOptions
    options: CDCLOptions
    uses_unlabelled = True

    def build_model(self) -> nn.Module:
        """The CDCL network of ``method.model`` (``cfg.model``, HoVer-Net's, is not used)."""
        if self.trainer.cfg.model.pretrained:
            raise IrcrError("config key 'model.pretrained' names HoVer-Net encoder weights; "
                            "method cdcl builds its own DenseNet network: set "
                            "method.model.pretrained instead")
        return build_cdcl_net(self.options.model)

    def setup(self) -> None:
        """The EMA teacher and the (empty) memory bank."""
        self.teacher: nn.Module = make_teacher(self.trainer.model)
        self.bank = MemoryBank(self.options.bank_size)

    def model_family(self) -> FamilyOutput:
        """``cdcl`` folders: the network config and the connected-components parameters."""
        return FamilyOutput("cdcl", self.options.model, self.options.postproc)

    # -- the step ----------------------------------------------------------------------------
    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        """The CDCL loss of one iteration (see the module docstring)."""
        if unlabelled is None:
            raise IrcrError("method cdcl needs unlabelled data (data.batch_size_unlabelled "
                            "> 0 and unlabelled patches in the split)")
        o = self.options
        n = labelled["image"].shape[0]
        it = self.trainer.iteration
        semi = it >= o.warmup_iterations
        x = torch.cat([labelled["image"], unlabelled["strong"]], dim=0)
        out = self.trainer.model(x, embed=semi)
        sup = masked_ce(out["np"][:n], labelled["np"], labelled["valid"])
        logs = {k: 0.0 for k in LOG_KEYS}
        logs["sup"] = float(sup.detach())
        if not semi:
            return sup, logs
        w = consistency_weight(it, o.warmup_iterations, o.rampup_iterations)
        valid = unlabelled["valid"]
        self.teacher.eval()
        with torch.no_grad():
            out_t = self.teacher(unlabelled["weak"])
        prob_t = torch.softmax(out_t["np"].float(), dim=1)
        logits_u = out["np"][n:]
        cons, frac = pseudo_label_ce(logits_u, prob_t, valid, o.conf_threshold)
        ent = entropy_loss(logits_u, valid)
        contrast, n_anchor = self.contrastive(out["emb"][n:], out_t["emb"], prob_t[:, 1], valid)
        loss = (sup + w * o.consistency_weight * cons + o.entropy_weight * ent
                + o.contrast_weight * contrast)
        logs.update(cons=float(cons.detach()), ent=float(ent.detach()),
                    contrast=float(contrast.detach()), conf_frac=frac,
                    anchor_patches=float(n_anchor), unsup_weight=w)
        return loss, logs

    def contrastive(self, emb_s: Tensor, emb_t: Tensor, fg_prob: Tensor, valid: Tensor
                    ) -> tuple[Tensor, int]:
        """Push this batch's student and teacher pixels into the bank, then L_cdcl."""
        o = self.options
        size = (int(emb_s.shape[-2]), int(emb_s.shape[-1]))
        labels, valid_e = embedding_labels(fg_prob, valid, size)
        fc, pid = patch_fc(labels, valid_e, o.patch_num)
        self.bank.push(batch_entries(emb_t, labels, valid_e, fc, pid))
        self.bank.push(batch_entries(emb_s.detach(), labels, valid_e, fc, pid))
        negatives = self.bank.entries()
        assert negatives is not None  # just pushed
        return cross_patch_contrastive(emb_s, emb_t, labels, valid_e, fc, pid, negatives,
                                       o.bdp_threshold, o.fdp_threshold, o.temperature,
                                       o.anchor_chunk)

    def after_optimizer_step(self) -> None:
        """EMA with α_t = min(1 - 1/(step + 1), ema_alpha), step = steps before this one."""
        step = self.trainer.iteration
        ema_update(self.teacher, self.trainer.model,
                   min(1.0 - 1.0 / (step + 1), self.options.ema_alpha))

    # -- models and state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The teacher and the memory bank's entries (exact resume)."""
        return {**super().state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher and the memory bank."""
        super().load_state_dict(state)
        bank = state.get("bank") or {}
        self.bank.load_state_dict({k: v.to(self.trainer.device) for k, v in bank.items()})
