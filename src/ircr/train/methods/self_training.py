"""Self-training (ST): supervised teacher -> WBIS pseudo-labels -> student from scratch.

Round 0 trains a supervised teacher on the labelled patches (a sub-training of the same
trainer, ``trainer.spawn("supervised", run_dir/"st_round0", ...)``, with the same config and
budget). Its whole-image predictions are turned into instance maps by WBIS (no filtering), for
every image that holds unlabelled patches; the unlabelled patches then join the labelled set
(:class:`~ircr.train.methods.base.ExtraLabelled`), and the loader computes their NP/HV targets
after the geometric augmentation exactly as for ground truth (``hover_targets``). With
``rounds: R`` > 1 the student of round r (trained from scratch on labelled + pseudo-labels of
round r) becomes the teacher of round r+1; the main run trains the student of the last round.

Everything a round produces lives under the run folder (``st_round<r>/`` sub-runs and
``pseudo_round<r>/*.npy``), so a resumed run skips rounds already done.

``mode: progressive`` is the IRCR-Net paper's description of its ST baseline ("first trains
the model using the ground truth labels and progressively replaces the original labels with
their own pseudo-labels during training"): one run, no rounds. Every iteration also draws an
unlabelled batch; from ``progressive_start`` of the run on, a growing fraction of it (linear
to ``final_fraction`` at ``progressive_end``; the most confident patches) is labelled online
by the model itself (``pseudo_model: student``, eval mode, no grad, on the weak view) or by an
EMA copy (``ema``), through WBIS and ``hover_targets``, and trained on (strong view) with the
labelled batch in one L_sup. The schedule and selection rules are in :mod:`ircr.ssl.progressive`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ircr.config import bounded
from ircr.errors import IrcrError
from ircr.io.paths import child_path, unique_name
from ircr.postproc.batch import wbis_batch
from ircr.ssl import progressive
from ircr.ssl.ema import ema_update, make_teacher
from ircr.train import distributed
from ircr.train.methods import register_method
from ircr.train.methods.base import ExtraLabelled, Method, TrainerAPI


@dataclass
class SelfTrainingOptions:
    """Options of ``self_training`` (docs/method.md, "Self-training").

    Attributes:
        mode: ``offline`` (rounds of teacher -> whole-image pseudo-labels -> student from
            scratch) or ``progressive`` (the paper's description: one run whose unlabelled
            patches are progressively trained on the model's own pseudo-labels).
        rounds: (offline) teacher -> pseudo-label -> student rounds (the student of round r
            teaches round r + 1; the main run trains the student of the last round).
        progressive_start, progressive_end: (progressive) fractions of the run's iterations
            where the share of pseudo-labelled unlabelled patches starts to rise from 0 and
            where it reaches ``final_fraction``.
        final_fraction: (progressive) share of each unlabelled batch trained on pseudo-labels
            from ``progressive_end`` on (the most confident patches).
        pseudo_model: (progressive) who labels: the ``student`` itself (eval mode) or an
            ``ema`` copy of it (decay ``ema_alpha``).
    """

    mode: Literal["offline", "progressive"] = "offline"
    rounds: int = bounded(1, hi=100)  # each round trains a whole model
    progressive_start: float = bounded(0.25, 0.0, 1.0)
    progressive_end: float = bounded(0.75, 0.0, 1.0)
    final_fraction: float = bounded(1.0, 0.0, 1.0)
    pseudo_model: Literal["student", "ema"] = "student"
    ema_alpha: float = bounded(0.95, 0.0, 1.0)

    def validate(self, where: str = "config") -> None:
        """Ranges and the keys of the other mode (one-line IrcrError naming the key)."""
        if self.rounds < 1:
            raise IrcrError(f"{where}: config key 'method.rounds' must be >= 1")
        if self.progressive_start > self.progressive_end:
            raise IrcrError(f"{where}: config key 'method.progressive_start' "
                            f"({self.progressive_start:g}) must be <= 'method.progressive_end' "
                            f"({self.progressive_end:g})")
        if self.mode == "progressive" and self.rounds != 1:
            raise IrcrError(f"{where}: config key 'method.rounds' applies to mode offline only "
                            "(progressive mode is one run)")


@register_method("self_training")
class SelfTraining(Method):
    """Supervised loss on labelled + pseudo-labelled patches (teacher's WBIS instances)."""

    options_type = SelfTrainingOptions
    options: SelfTrainingOptions
    uses_unlabelled = False  # offline; progressive mode draws unlabelled batches (__init__)

    def __init__(self, options: SelfTrainingOptions, trainer: TrainerAPI) -> None:
        super().__init__(options, trainer)
        self.uses_unlabelled = options.mode == "progressive"

    def setup(self) -> None:
        """Offline: nothing (the student trains from scratch); progressive: the EMA copy."""
        self.extra: ExtraLabelled | None = None
        self.preset: ExtraLabelled | None = None  # set on sub-trainings of later rounds
        self.teacher: nn.Module | None = None
        if self.options.mode == "progressive" and self.options.pseudo_model == "ema":
            self.teacher = make_teacher(self.trainer.model)
        self.last_replaced: list[int] = []  # batch positions pseudo-labelled this iteration

    # -- rounds ------------------------------------------------------------------------------
    def before_training(self) -> None:
        """Offline: train the teacher(s) and write the pseudo-labels of the final round."""
        if self.options.mode == "progressive":
            return
        if self.preset is not None:
            self.extra = self.preset
            return
        run_dir = Path(self.trainer.run_dir)
        extra: ExtraLabelled | None = None
        for r in range(int(self.options.rounds)):
            pseudo_dir = run_dir / f"pseudo_round{r}"
            done = pseudo_dir / "pseudo.json"
            if done.is_file():
                extra = _read_extra(done)
                continue
            teacher = self._train_round_model(r, extra)
            ctx = distributed.current()  # torchrun: rank 0 writes, the others read its files
            distributed.on_main(ctx, functools.partial(self._pseudo_label, teacher, pseudo_dir))
            extra = _read_extra(done)
        self.extra = extra

    def _train_round_model(self, r: int, extra: ExtraLabelled | None) -> nn.Module:
        """Round 0: supervised teacher; round r > 0: ST student of round r − 1."""
        sub_dir = Path(self.trainer.run_dir) / f"st_round{r}"
        if r == 0:
            sub = self.trainer.spawn("supervised", sub_dir)
        else:
            sub = self.trainer.spawn("self_training", sub_dir, {"method.rounds": r})
            if not isinstance(sub.method, SelfTraining):  # pragma: no cover - spawn's contract
                raise TypeError("spawn('self_training') did not build a SelfTraining method")
            sub.method.preset = extra
        sub.run()
        return sub.method.final_model()

    def _pseudo_label(self, model: nn.Module, out_dir: Path) -> ExtraLabelled:
        """WBIS instance maps of every image that holds unlabelled patches (no filtering)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        ds = self.trainer.dataset
        unl = [int(i) for i in self.trainer.split.unlabelled]
        names = sorted({ds.names[ds.patches[i].image] for i in unl})
        inst_maps: dict[str, Path] = {}
        taken: set[str] = set()  # image names come from dataset.json: never paths
        was_training = model.training
        model.eval()
        for name in names:
            prob, hv = self.trainer.predict_image(model, name)
            inst = wbis_batch(prob[None], hv[None], self.trainer.wbis_params,
                              workers=0)[0].astype(np.int32)
            path = child_path(out_dir, unique_name(name, taken) + ".npy")
            np.save(path, inst)
            inst_maps[name] = path
        model.train(was_training)
        extra = ExtraLabelled(patch_ids=unl, inst_maps=inst_maps)
        (out_dir / "pseudo.json").write_text(json.dumps({
            "patch_ids": extra.patch_ids,
            "inst_maps": {k: str(v) for k, v in inst_maps.items()},
        }))
        return extra

    def extra_labelled(self) -> ExtraLabelled | None:
        """The pseudo-labelled unlabelled patches of the last round."""
        return self.extra

    # -- iteration ---------------------------------------------------------------------------
    def train_step(
        self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """L_sup over the labelled batch plus (progressive) its pseudo-labelled patches."""
        if self.options.mode == "progressive":
            if unlabelled is None:
                raise RuntimeError("self_training (progressive) needs an unlabelled batch")
            return self._progressive_step(labelled, unlabelled)
        out = self.trainer.model(labelled["image"])
        loss, _ = self.trainer.supervised_loss(out, labelled)
        return loss, {"sup": float(loss.detach())}

    def _progressive_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor]
                          ) -> tuple[Tensor, dict[str, float]]:
        o = self.options
        n = int(unlabelled["weak"].shape[0])
        frac = progressive.replaced_fraction(self.trainer.iteration, self.trainer.total,
                                             o.progressive_start, o.progressive_end,
                                             o.final_fraction)
        k = progressive.replaced_count(frac, n)
        batch = labelled
        self.last_replaced = []
        if k > 0:
            pseudo = self._pseudo_batch(unlabelled, k)
            batch = {key: torch.cat([labelled[key], pseudo[key]]) for key in pseudo}
        out = self.trainer.model(batch["image"])
        loss, _ = self.trainer.supervised_loss(out, batch)
        return loss, {"sup": float(loss.detach()), "pseudo_fraction": k / max(n, 1)}

    def _pseudo_batch(self, unlabelled: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        """The ``k`` most confident unlabelled patches with their pseudo NP/HV targets.

        The labelling model (student in eval mode, or the EMA copy) sees the weak view; the
        student trains on the strong view of the same geometric augmentation (pixel-aligned).
        """
        model = self.teacher if self.teacher is not None else self.trainer.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(unlabelled["weak"])
        model.train(was_training)
        prob = torch.softmax(out["np"].float(), dim=1)[:, 1]
        valid = unlabelled["valid"]
        keep = progressive.most_confident(progressive.patch_confidence(prob, valid), k)
        self.last_replaced = keep
        sel = torch.tensor(keep, dtype=torch.long, device=prob.device)
        np_t, hv_t, _ = progressive.pseudo_targets(prob[sel].cpu().numpy(),
                                                   out["hv"][sel].float().cpu().numpy(),
                                                   self.trainer.wbis_params)
        dev = unlabelled["strong"].device
        return {"image": unlabelled["strong"][sel], "np": torch.from_numpy(np_t).to(dev),
                "hv": torch.from_numpy(hv_t).to(dev), "valid": valid[sel],
                "index": unlabelled["index"][sel]}

    def after_optimizer_step(self) -> None:
        """(progressive, ``pseudo_model: ema``) θ_ema ← α·θ_ema + (1 − α)·θ_student."""
        if self.teacher is not None:
            ema_update(self.teacher, self.trainer.model, self.options.ema_alpha)

    def state_dict(self) -> dict[str, Any]:
        """The EMA copy when there is one; otherwise nothing beyond the run folder's files."""
        return {} if self.teacher is None else {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the EMA copy."""
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


def _read_extra(path: Path) -> ExtraLabelled:
    """Read the ``pseudo.json`` written by :meth:`SelfTraining._pseudo_label`."""
    data = json.loads(path.read_text())
    return ExtraLabelled(
        patch_ids=[int(i) for i in data["patch_ids"]],
        inst_maps={k: Path(v) for k, v in data["inst_maps"]. items()},
    )
