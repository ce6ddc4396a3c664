"""Model-family registry: what a kind of network must provide to be loaded, evaluated and used
by ``ircr segment`` (tiles, folders, whole slides) and ``ircr evaluate``.

A family is one class in its own module under :mod:`ircr.inference.families` (every module
there is imported on first lookup, so adding a family edits no other file), subclassing
:class:`ModelFamily` and decorated with :func:`register_family`. ``model.yaml`` names it in
``family:`` (absent = ``hovernet``, so older folders and the packaged ``default`` model load
unchanged). Built in: ``hovernet`` (:mod:`ircr.inference.families.hovernet`).

Contract (shapes and dtypes; every array is numpy, on the CPU):

* ``name: ClassVar[str]``: the ``family:`` value in model.yaml, lower case.
* ``config_class: ClassVar[type]``: a dataclass for model.yaml's ``model:`` mapping, read with
  :func:`ircr.config.from_dict` (unknown keys are errors); written back with
  :func:`ircr.config.to_dict`.
* ``postproc_class: ClassVar[type]``: a dataclass for ``postproc.yaml`` (same rules);
  :meth:`ModelFamily.parse_postproc` turns a mapping (or an instance, or None = defaults)
  into it.
* ``build(cfg) -> nn.Module``: the untrained network of that architecture, float32, on the
  CPU, loading nothing from disk or the network (the model folder loads ``weights.pt`` into
  it with ``load_state_dict``; the state dict's keys and shapes must match exactly).
* ``predict(model, image, setting) -> Prediction``: the network part for one image or tile.
  ``image`` is (h, w, 3) uint8 RGB of any size >= 1 px, possibly read-only (copy before
  writing); it is not padded: the family pads or tiles it as it needs. ``setting`` is an
  :class:`InferenceSetting`: window/overlap/batch size, ``device`` (None = the model's own;
  the caller has already moved the model there) and ``amp`` (apply
  :func:`ircr.inference.device.amp_dtype` / :func:`~ircr.inference.device.autocast`). Runs
  in eval mode under ``torch.inference_mode`` and leaves the module's train/eval mode as it
  found it. Returns a :class:`Prediction`: ``prob`` is the (h, w) float32 foreground
  probability in [0, 1] (the ``np_prob_mean`` column and the stitched probability map),
  ``maps`` whatever :meth:`instances` needs (HoVer-Net: ``{"hv": (2, h, w) float32}``; a
  detector: boxes (K, 4) float32 x0, y0, x1, y1 in pixels of ``image``, scores (K,), masks).
  Called from one thread at a time.
* ``instances(pred, postproc) -> np.ndarray``: the CPU part: (h, w) int32 instance map,
  0 = background, ids >= 1 (not necessarily contiguous), each instance one connected or
  disconnected set of pixels that the instance map owns exclusively. Must be thread-safe
  (whole slides run it in a worker pool while the network handles the next tile) and must not
  touch the network.
* ``predict_instances(model, image, setting, postproc) -> (inst, prob)``: both steps; the
  default implementation calls :meth:`predict` then :meth:`instances`.

The tiling/stitching (``engine/tiling.py``), resolution handling, outputs and evaluation are
shared by every family: a family only maps an (h, w, 3) window to (instance map, probability).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from ircr.config import from_dict
from ircr.errors import IrcrError
from ircr.inference.device import AmpSetting
from ircr.plugins import import_plugins

DEFAULT_FAMILY = "hovernet"


@dataclass(frozen=True)
class InferenceSetting:
    """How to run a network on an image: sliding window and compute.

    Attributes:
        window, overlap, batch_size: tile size (multiple of 8), pixels shared by adjacent
            tiles (< window), tiles per forward pass.
        device: where to run (None = the model's own device); amp: autocast setting
            (:func:`ircr.inference.device.amp_dtype`).
        channels_last: run the network in channels_last memory format.
        compile: run the network through ``torch.compile`` (eager fallback on failure).
        tta: test-time augmentation (:mod:`ircr.inference.tta`: ``off``, ``mirror``,
            ``flips``, ``d4``);
            families other than HoVer-Net accept only ``off``.
    """

    window: int = 256
    overlap: int = 64
    batch_size: int = 8
    device: torch.device | None = None
    amp: AmpSetting = False
    channels_last: bool = False
    compile: bool = False
    tta: str = "off"


@dataclass
class Prediction:
    """Network output for one (h, w) image: foreground probability + family-specific maps."""

    prob: np.ndarray
    maps: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    """Base class of a model family (the contract is in the module docstring)."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    postproc_class: ClassVar[type]

    @abstractmethod
    def build(self, cfg: Any) -> nn.Module:
        """The untrained network described by ``cfg`` (an instance of ``config_class``)."""

    @abstractmethod
    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        """Network part: (h, w, 3) uint8 -> :class:`Prediction` (prob (h, w) float32)."""

    @abstractmethod
    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        """CPU part (thread-safe): :class:`Prediction` -> (h, w) int32 instance map."""

    def parse_config(self, data: dict[str, Any], where: str) -> Any:
        """model.yaml's ``model:`` mapping -> ``config_class`` (errors name ``where``)."""
        return from_dict(self.config_class, data, where=where, prefix="model.")

    def parse_postproc(self, data: Any, where: str = "postproc") -> Any:
        """A mapping, an instance of ``postproc_class`` or None (defaults) -> the instance."""
        if data is None:
            return self.postproc_class()
        if isinstance(data, self.postproc_class):
            return data
        if not isinstance(data, dict):
            raise IrcrError(f"{where}: expected a mapping of post-processing parameters")
        return from_dict(self.postproc_class, dict(data), where=where)

    def predict_later(self, model: nn.Module, image: np.ndarray,
                      setting: InferenceSetting) -> Callable[[], Prediction]:
        """Queue :meth:`predict` and return a call that waits for its result (any thread).

        The default runs :meth:`predict` at once; a family whose network runs asynchronously
        on a device (HoVer-Net) returns before the device is done, so a slide's next window
        can be queued while this one is post-processed.
        """
        pred = self.predict(model, image, setting)
        return lambda: pred

    def predict_instances(self, model: nn.Module, image: np.ndarray, setting: InferenceSetting,
                          postproc: Any) -> tuple[np.ndarray, np.ndarray]:
        """Instance map (h, w) int32 and foreground probability (h, w) float32 of ``image``."""
        pred = self.predict(model, image, setting)
        return self.instances(pred, postproc), pred.prob


FAMILIES: dict[str, ModelFamily] = {}
F = TypeVar("F", bound=type[ModelFamily])


def register_family(cls: F) -> F:
    """Class decorator: register a :class:`ModelFamily` subclass under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}: a model family needs a non-empty 'name'")
    if name in FAMILIES and type(FAMILIES[name]) is not cls:
        raise ValueError(f"model family '{name}' is already registered")
    FAMILIES[name] = cls()
    return cls


_loaded = False


def _load_families() -> None:
    """Import every module of :mod:`ircr.inference.families` (each registers itself)."""
    global _loaded
    if _loaded:
        return
    import_plugins("ircr.inference.families")
    _loaded = True


def family_names() -> list[str]:
    """Names of every registered family (built-in ones included), sorted."""
    _load_families()
    return sorted(FAMILIES)


def get_family(name: str | None = None, where: str = "family") -> ModelFamily:
    """The registered family ``name`` (None = ``hovernet``).

    Raises:
        IrcrError: no family of that name (the message lists the known ones).
    """
    _load_families()
    key = DEFAULT_FAMILY if name is None else str(name).strip().lower()
    if key not in FAMILIES:
        raise IrcrError(f"{where}: unknown model family '{name}' "
                        f"(known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[key]
