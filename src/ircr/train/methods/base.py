"""The method plug-in contract of the one trainer (read this to write a new method).

A *method* decides what one training iteration computes (supervised, Mean Teacher,
self-training, IRCR-Net, BASS, ...). The :class:`~ircr.train.trainer.Trainer` owns everything
else: the optimiser (Adam) over ``trainer.model``'s parameters, the lr schedule, AMP, the
gradient step, NaN checks, logging, checkpoints, validation and the data loaders.

Adding a method = one new module, nothing else edited:

* put it in ``ircr/train/methods/<name>.py`` (a built-in: every module of the package is
  imported on the first method look-up) or in any module imported before the config is loaded
  (a plug-in: ``plugins:`` of an experiment protocol, or an import in a test);
* define a ``@dataclass`` of its options (``options_type``); its fields are the keys the method
  accepts under ``method:`` of a config, next to the shared ``name`` and ``weak_noise_std``
  (:class:`~ircr.train.config.MethodConfig`). Keys are validated by
  :func:`ircr.config.from_dict`: an unknown key, a wrong type (error naming
  ``method.<key>``) or a failed ``validate(where)`` of the dataclass is a one-line error. A key
  of another method is unknown too: a config names one method and only its options;
* subclass :class:`Method`, set ``options_type`` (default :class:`NoOptions`) and decorate
  the class with ``@register_method("<name>")`` from :mod:`ircr.train.methods`.

Call order (one run)::

    m = MethodCls(options, trainer)        # options: an options_type instance (validated)
    trainer.model = m.build_model()        # default: HoVer-Net from cfg.model; moved to device
    (trainer: Adam over trainer.model.parameters())
    m.setup()                              # e.g. build the EMA teacher from trainer.model
    m.load_state_dict(state)               # only when resuming from a checkpoint
    m.before_training()                    # e.g. self-training rounds (sub-trainings); may
                                           # call trainer.spawn(...); runs on resume too
    folder = m.run_own()                   # a method with its own loop returns its model
    if folder is not None: return folder   # folder here and the trainer's loop never runs
    extra = m.extra_labelled()             # pseudo-labelled patches added to the labelled set
    for epoch ...:
        for it ...:
            loss, logs = m.train_step(labelled, unlabelled)   # inside trainer.autocast()
            (trainer: NaN check, backward, optimiser step, scheduler)
            m.after_optimizer_step()       # e.g. EMA teacher update
        diag = m.epoch_end()               # -> metrics.csv columns (floats)
        models = m.eval_models()           # val AJI/Dice/PQ/F1 computed for each
    final model folder = m.final_model()   # default: the student (trainer.model)

What a method can do
--------------------

* **Its own model and loss.** :meth:`Method.build_model` returns the network the trainer
  optimises (default: HoVer-Net built from ``cfg.model``). Any ``nn.Module`` works; put every
  trainable part into it (the optimiser sees ``trainer.model.parameters()`` only).
  :meth:`Method.train_step` returns any scalar loss; ``trainer.supervised_loss`` is the
  HoVer-Net loss, a helper, not an obligation. The models of :meth:`eval_models` are validated
  by whole-image sliding-window inference + WBIS, so they must follow the network output
  contract (``{"np": (N, 2, H, W) logits, "hv": (N, 2, H, W)}``, docs/architecture.md);
  return ``{}`` to skip that validation (and log own diagnostics from :meth:`epoch_end`). The
  model of :meth:`final_model` is written to ``model/`` with ``cfg.model`` as its description.
* **Another model family in the trainer's loop.** A network that is not HoVer-Net (other
  outputs, its own post-processing) returns a :class:`FamilyOutput` from
  :meth:`Method.model_family`: the registered family (:mod:`ircr.inference.family`) that
  validates :meth:`eval_models` and the ``model:``/``postproc`` written to ``model/``
  (``pgfanet``, ``cdcl``).
* **Sub-trainings with their own overrides.** ``trainer.spawn(method, run_dir, overrides)``
  returns a new :class:`~ircr.train.trainer.Trainer` of this config with ``method.name =
  method``, that method's default options and the dotted ``overrides`` (any config key, e.g.
  ``{"method.rounds": 2, "model.width": 0.5, "train.epochs": 20}``; a method's options are
  given as ``"method.<key>"``). It resumes its own run folder when interrupted. Call
  ``sub.run()`` (returns the sub-run's model folder) and use ``sub.method`` (e.g.
  ``sub.method.final_model()``); to hand a sub-run Python objects (not config), narrow
  ``sub.method`` with ``isinstance`` and set an attribute before ``run()`` (self_training's
  ``preset``).
* **Raw instance maps.** With ``uses_instances = True`` the labelled batch also holds
  ``"inst"`` (below): the ground-truth (or pseudo-label) instance map after the same geometric
  augmentation, e.g. to build boxes and masks for a detector.
* **Unlabelled data.** With ``uses_unlabelled = True`` every iteration also gets an unlabelled
  batch, and one epoch is one pass over the unlabelled patches.
* **Its own loop.** A method whose training does not fit the per-step loop (another model
  family with its own targets and optimiser, several stages: ``bass``) trains in
  :meth:`Method.run_own` and returns the run's model folder; the trainer then runs no loop,
  writes no checkpoint of its own and returns that folder. The method owns resume (its
  checkpoints under ``trainer.run_dir``), Ctrl-C handling and the model folder; it names the
  files that make a run folder "started" in :meth:`Method.saved_progress`, so ``--resume``
  works for it as for every method. For ``ircr experiment`` it names its finished model
  folders in :meth:`Method.model_folders` (tested there instead of :meth:`eval_models`) and
  its optimiser steps in :meth:`Method.own_iterations` (its schedule is not compressed).

Batch dicts (tensors already on ``trainer.device``)
----------------------------------------------------

``labelled`` (always given; batch size ``cfg.data.batch_size``, which may be 0 for methods with
unlabelled data: then every key below has N = 0 and ``trainer.supervised_loss`` returns 0)::

    "image": (N, 3, H, W) float32, values 0..255, RGB; geometric + photometric augmentation
             (HoVer-Net ranges) already applied. Feed it to the model as is.
    "np":    (N, H, W) int64 in {0, 1}: NP target, computed AFTER the geometric augmentation
             on the context window (patch + margin) and cropped to the patch.
    "hv":    (N, 2, H, W) float32 in [-1, 1]; channel 0 = x (along columns), 1 = y (rows).
    "valid": (N, H, W) bool: True on pixels that come from real image content; False on
             reflect padding added to cover the image border and on the constant fill that
             rotation/scaling brings in. Loss terms are restricted to valid pixels.
    "index": (N,) int64 patch ids (positions in ``trainer.dataset`` patch table; pseudo-
             labelled patches of ``extra_labelled`` keep their own patch id).
    "inst":  (N, H, W) int64 instance map (0 = background), only when the method sets
             ``uses_instances``: the labels the NP/HV targets were computed from, after the
             geometric augmentation, cropped to the patch. Ids are not contiguous; a nucleus
             cut by the patch border keeps its part inside; mirrored copies in the reflect
             padding have their own ids; pixels of "valid" False may hold mirrored nuclei.

``unlabelled`` (``None`` unless ``uses_unlabelled``; batch size
``cfg.data.batch_size_unlabelled``)::

    "weak":   (N, 3, H, W) float32 0..255: teacher view (only light Gaussian noise,
              std = cfg.method.weak_noise_std of the 0..255 range).
    "strong": (N, 3, H, W) float32 0..255: student view (noise + brightness/contrast/
              saturation/hue jitter + blur). Both views come from ONE shared geometric
              augmentation, so they are pixel-aligned.
    "index":  (N,) int64 patch ids (stable across epochs: key for per-sample caches).
    "src_index": (N, H, W) int64: for each view pixel, the flat index ``y * P + x`` of the
              pixel of the UN-augmented patch (P x P, P = cfg.data.patch_size) it was sampled
              from (nearest neighbour), or -1 when it comes from outside the patch (context
              margin, border fill). Use :func:`map_to_view` to bring a cached (N, P, P)
              mask from the un-augmented frame into this view (``mask_source: previous``).
    "valid":  (N, H, W) bool: as for labelled.

What a method may use of the trainer
------------------------------------

Exactly :class:`TrainerAPI` (a ``typing.Protocol``; the trainer implements it):
``cfg`` (the ExperimentConfig; the method's own options are ``self.options``), ``model``
(the network of :meth:`Method.build_model`, on ``device``), ``device``, ``autocast()``
(context manager: bf16 autocast when AMP is on), ``supervised_loss(outputs, labelled) ->
(loss, parts)`` (HoVer-Net L_sup on valid pixels; ``parts`` are floats), ``iteration``
(optimiser steps done), ``total`` (iterations of the whole run, set before the first
``train_step``), ``epoch``, ``run_dir`` (Path), ``dataset`` (PreparedDataset: images,
labels, patches), ``split`` (TrainSplit: labelled / unlabelled patch ids, val image names),
``wbis_params`` (WBISParams), ``spawn(method, run_dir, overrides) -> SubRun`` (above) and
``predict_image(model, name) -> (prob (H, W), hv (2, H, W))`` (sliding-window inference of a
whole dataset image with ``cfg.eval``'s window, for pseudo-labels).

Randomness inside a method must come from ``torch``'s global generator (or one the method
checkpoints itself) so that resume stays exact. ``state_dict`` must contain only tensors,
numbers, strings, lists and dicts of them (checkpoints are read with ``weights_only=True``).
Files a method writes (pseudo-labels, stage outputs) belong under ``trainer.run_dir`` so a
resumed run finds them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ircr.train.loaders import ExtraLabelled

if TYPE_CHECKING:  # pragma: no cover
    from ircr.data.store import PreparedDataset
    from ircr.postproc.watershed import WBISParams
    from ircr.train.config import ExperimentConfig
    from ircr.train.loaders import TrainSplit

__all__ = ["ExtraLabelled", "FamilyOutput", "Method", "NoOptions", "SubRun", "TeacherMethod",
           "TrainerAPI", "map_to_view"]


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none (``supervised``): only the shared ``method:`` keys."""


@dataclass(frozen=True)
class FamilyOutput:
    """A method's networks as a model family (:meth:`Method.model_family`).

    Attributes:
        family: registered family name (``model.yaml``'s ``family:``).
        model: that family's ``config_class`` instance (``model.yaml``'s ``model:``).
        postproc: its ``postproc_class`` instance (validation and ``postproc.yaml``).
    """

    family: str
    model: Any
    postproc: Any


class TrainerAPI(Protocol):
    """What a method may use of the trainer (see the module docstring)."""

    @property
    def cfg(self) -> ExperimentConfig: ...
    @property
    def model(self) -> nn.Module: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def iteration(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def dataset(self) -> PreparedDataset: ...
    @property
    def split(self) -> TrainSplit: ...
    @property
    def wbis_params(self) -> WBISParams: ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when AMP is on, else a no-op context."""
        ...

    def supervised_loss(self, outputs: dict[str, Tensor],
                        labelled: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """HoVer-Net L_sup on the valid pixels of a labelled batch."""
        ...

    def spawn(self, method: str, run_dir: str | Path,
              overrides: dict[str, Any] | None = None) -> SubRun:
        """A sub-training of this config with another method and dotted overrides."""
        ...

    def predict_image(self, model: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Sliding-window prediction of one whole dataset image: prob (H, W), hv (2, H, W)."""
        ...


class SubRun(TrainerAPI, Protocol):
    """A sub-training returned by ``trainer.spawn`` (a :class:`~ircr.train.trainer.Trainer`)."""

    @property
    def method(self) -> Method: ...

    def run(self) -> Path:
        """Train to the end of its schedule (resumes its folder); returns its model folder."""
        ...


class Method:
    """Base class of training methods; subclass it and register with ``@register_method``."""

    name: ClassVar[str] = "base"
    options_type: ClassVar[type[Any]] = NoOptions
    # a class attribute; a method whose options decide sets it per instance in __init__
    # (self_training's progressive mode); plans read the class value
    uses_unlabelled: bool = False
    uses_instances: ClassVar[bool] = False

    def __init__(self, options: Any, trainer: TrainerAPI) -> None:
        self.options = options
        self.trainer = trainer

    @classmethod
    def saved_progress(cls, run_dir: Path) -> Path | None:
        """The file showing that a run of this method already started in ``run_dir`` (the
        trainer then requires ``--resume``; without one ``--resume`` is refused), or None.
        Default: the trainer's ``checkpoints/last.pt``; a method with its own loop names
        its own checkpoints (``bass``: its stages')."""
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None

    # -- lifecycle -------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The network the trainer optimises (default: HoVer-Net from ``cfg.model``)."""
        from ircr.models import build_model

        return build_model(self.trainer.cfg.model)

    def setup(self) -> None:
        """Build extra state (e.g. the EMA teacher); ``trainer.model`` is the student."""

    def before_training(self) -> None:
        """Run once before the first epoch (also after resume); may run sub-trainings."""

    def run_own(self) -> Path | None:
        """Train with the method's own loop and return the model folder, or ``None`` (the
        default) to let the trainer's loop run. See "Its own loop" above."""
        return None

    def extra_labelled(self) -> ExtraLabelled | None:
        """Extra (pseudo-)labelled patches for the labelled loader, or ``None``."""
        return None

    # -- iteration -------------------------------------------------------------------------
    def train_step(
        self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Compute the loss of one iteration.

        Returns:
            (loss, logs): scalar loss tensor (the trainer calls backward on it) and named
            float parts (e.g. ``{"sup": .., "piac": .., "miac": ..}``) averaged per epoch into
            metrics.csv as ``train_<name>``.
        """
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (e.g. EMA teacher update)."""

    def epoch_end(self) -> dict[str, float]:
        """Diagnostics of the epoch (floats), written to metrics.csv as they are named."""
        return {}

    # -- models ----------------------------------------------------------------------------
    def eval_models(self) -> dict[str, nn.Module]:
        """Models to validate each epoch by name, e.g. ``{"student": .., "teacher": ..}``."""
        return {"student": self.trainer.model}

    def model_family(self) -> FamilyOutput | None:
        """The family of :meth:`eval_models` and :meth:`final_model` when it is not HoVer-Net
        (None, the default: ``hovernet`` with ``cfg.model`` and ``cfg.postproc``)."""
        return None

    def final_model(self) -> nn.Module:
        """The model written to the run's ``model/`` folder (paper: the last student)."""
        return self.trainer.model

    def model_folders(self) -> dict[str, Path]:
        """Finished model folders by name, for a method whose :meth:`eval_models` is empty
        (its own loop, its own model family): ``ircr experiment`` tests these instead, e.g.
        ``{"student": run/"model", "teacher": run/"teacher"/"model"}``. Default: none."""
        return {}

    @classmethod
    def own_iterations(cls, options: Any, n_labelled: int, n_unlabelled: int) -> int | None:
        """Optimiser steps of a method with its own loop and schedule (all its stages),
        for the experiment plan; None (default) = the trainer's schedule counts."""
        return None

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Method state saved in checkpoints (weights_only-loadable types only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class TeacherMethod(Method):
    """A method with one EMA teacher network ``self.teacher`` (set in ``__init__``): validates
    the student and the teacher, and checkpoints the teacher's weights and buffers."""

    teacher: nn.Module

    def eval_models(self) -> dict[str, nn.Module]:
        """Validate the student and the teacher."""
        return {"student": self.trainer.model, "teacher": self.teacher}

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights and buffers."""
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher."""
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


def map_to_view(cached: Tensor, src_index: Tensor, fill: float = 0.0) -> Tensor:
    """Map per-sample maps from the un-augmented patch frame into the augmented view.

    Args:
        cached: (N, P, P) or (N, C, P, P) tensor in the un-augmented patch frame.
        src_index: (N, H, W) int64 from ``unlabelled["src_index"]`` (-1 = outside the patch).
        fill: value of view pixels with no source pixel.

    Returns:
        (N, H, W) or (N, C, H, W) tensor with ``cached``'s dtype, nearest-neighbour mapped.
    """
    squeeze = cached.dim() == 3
    src = cached.unsqueeze(1) if squeeze else cached
    n, c = src.shape[:2]
    flat = src.reshape(n, c, -1)
    idx = src_index.reshape(n, 1, -1).clamp(min=0).expand(n, c, -1)
    out = torch.gather(flat, 2, idx).reshape(n, c, *src_index.shape[1:])
    outside = (src_index < 0).unsqueeze(1).expand_as(out)
    out = out.masked_fill(outside, fill)
    return out[:, 0] if squeeze else out
