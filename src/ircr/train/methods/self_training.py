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
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ircr.config import bounded
from ircr.errors import IrcrError
from ircr.io.paths import child_path, unique_name
from ircr.postproc.batch import wbis_batch
from ircr.train import distributed
from ircr.train.methods import register_method
from ircr.train.methods.base import ExtraLabelled, Method


@dataclass
class SelfTrainingOptions:
    """Options of ``self_training``.

    Attributes:
        rounds: teacher -> pseudo-label -> student rounds (the student of round r teaches
            round r + 1; the main run trains the student of the last round).
    """

    rounds: int = bounded(1, hi=100)  # each round trains a whole model

    def validate(self, where: str = "config") -> None:
        """``rounds`` >= 1 (one-line IrcrError naming the key)."""
        if self.rounds < 1:
            raise IrcrError(f"{where}: config key 'method.rounds' must be >= 1")


@register_method("self_training")
class SelfTraining(Method):
    """Supervised loss on labelled + pseudo-labelled patches (teacher's WBIS instances)."""

    options_type = SelfTrainingOptions
    options: SelfTrainingOptions
    uses_unlabelled = False

    def setup(self) -> None:
        """No extra model: the student is trained from scratch by the trainer."""
        self.extra: ExtraLabelled | None = None
        self.preset: ExtraLabelled | None = None  # set on sub-trainings of later rounds

    # -- rounds ------------------------------------------------------------------------------
    def before_training(self) -> None:
        """Train the teacher(s) and write the pseudo-labels of the final round."""
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
        """L_sup over the mixed labelled + pseudo-labelled batch."""
        out = self.trainer.model(labelled["image"])
        loss, _ = self.trainer.supervised_loss(out, labelled)
        return loss, {"sup": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the run folder's pseudo-label files."""
        return {}


def _read_extra(path: Path) -> ExtraLabelled:
    """Read the ``pseudo.json`` written by :meth:`SelfTraining._pseudo_label`."""
    data = json.loads(path.read_text())
    return ExtraLabelled(
        patch_ids=[int(i) for i in data["patch_ids"]],
        inst_maps={k: Path(v) for k, v in data["inst_maps"]. items()},
    )
