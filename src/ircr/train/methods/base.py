"""The method plug-in interface of the one trainer.

A *method* decides what loss one training iteration computes (supervised, Mean Teacher,
self-training, IRCR-Net). The :class:`~ircr.train.trainer.Trainer` owns everything else: the
student model, the optimiser (Adam), the lr schedule, AMP, the gradient step, NaN checks,
logging, checkpoints, validation and the data loaders. A new method is a subclass of
:class:`Method` registered with :func:`ircr.train.methods.register_method`; the trainer never
changes for it.

Call order (one run)::

    m = MethodCls(cfg.method, trainer)     # trainer.model (student) already built, on device
    m.setup()                              # e.g. build the EMA teacher from trainer.model
    m.load_state_dict(state)               # only when resuming from a checkpoint
    m.before_training()                    # e.g. self-training rounds (sub-trainings); may
                                           # call trainer.spawn(...); runs on resume too
    extra = m.extra_labelled()             # pseudo-labelled patches added to the labelled set
    for epoch ...:
        for it ...:
            loss, logs = m.train_step(labelled, unlabelled)   # inside trainer.autocast()
            (trainer: NaN check, backward, optimiser step, scheduler)
            m.after_optimizer_step()       # e.g. EMA teacher update
        diag = m.epoch_end()               # -> metrics.csv columns (floats)
        models = m.eval_models()           # val AJI/Dice/PQ/F1 computed for each
    final model folder = m.final_model()   # default: the student (trainer.model)

Batch dicts (tensors already on ``trainer.device``)
----------------------------------------------------

``labelled`` (always given; batch size ``cfg.data.batch_size``)::

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

Trainer attributes a method may use
-----------------------------------

``trainer.cfg`` (ExperimentConfig), ``trainer.model`` (student nn.Module on device),
``trainer.device``, ``trainer.autocast()`` (context manager: bf16 autocast when AMP is on),
``trainer.supervised_loss(outputs, labelled) -> (loss, parts)`` (HoVer-Net L_sup on valid
pixels; ``parts`` are floats), ``trainer.iteration`` (optimiser steps done), ``trainer.epoch``,
``trainer.run_dir`` (Path), ``trainer.dataset`` (PreparedDataset), ``trainer.split``
(TrainSplit: labelled / unlabelled patch ids, val image names), ``trainer.wbis_params``
(WBISParams), ``trainer.spawn(method, run_dir, overrides) -> Trainer`` (a sub-training with the
same config and another method, e.g. the supervised teacher of self-training) and
``trainer.predict_patches(model, patch_ids) -> (prob (N, P, P), hv (N, 2, P, P))``
(sliding-window inference with context, for pseudo-labels).

Randomness inside a method must come from ``torch``'s global generator (or one the method
checkpoints itself) so that resume stays exact. ``state_dict`` must contain only tensors,
numbers, strings, lists and dicts of them (checkpoints are read with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from ircr.train.config import MethodConfig
    from ircr.train.trainer import Trainer


@dataclass
class ExtraLabelled:
    """Pseudo-labelled patches added to the labelled training set (self-training).

    Attributes:
        patch_ids: patch ids of ``trainer.dataset`` to train on as labelled patches.
        inst_maps: image name -> path of a ``.npy`` file holding the (H, W) int32 instance map
            of that whole image (same frame as the prepared image). The loader reads the
            patch's context window from it exactly as it reads ground truth, so the targets
            are computed after the geometric augmentation as for real labels.
    """

    patch_ids: list[int]
    inst_maps: dict[str, Path] = field(default_factory=dict)


class Method:
    """Base class of training methods; subclass it and register with ``@register_method``."""

    name: ClassVar[str] = "base"
    uses_unlabelled: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig, trainer: Trainer) -> None:
        self.cfg = cfg
        self.trainer = trainer

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Build extra state (e.g. the EMA teacher); ``trainer.model`` is the student."""

    def before_training(self) -> None:
        """Run once before the first epoch (also after resume); may run sub-trainings."""

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

    def final_model(self) -> nn.Module:
        """The model written to the run's ``model/`` folder (paper: the last student)."""
        return self.trainer.model

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Method state saved in checkpoints (weights_only-loadable types only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


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
