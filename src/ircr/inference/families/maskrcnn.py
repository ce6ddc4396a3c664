"""The Mask R-CNN family (BASS teacher/student): tiled detection, then painting.

* ``model.yaml``: ``family: maskrcnn`` and ``model:`` a
  :class:`~ircr.models.maskrcnn.MaskRCNNConfig` mapping.
* ``postproc.yaml``: :class:`~ircr.postproc.detections.PaintParams` (box-score threshold,
  mask-probability threshold, fragments rule, min area, 1 px dilation).
* ``predict``: :func:`ircr.inference.detect.predict_detections` with the folder's (or the
  caller's) window/overlap/batch size; ``maps = {"detections": TiledDetections}``; ``prob`` is
  max(score x mask probability) per pixel.
* ``instances``: :func:`ircr.inference.detect.paint_tiled` (responsible-window rule, score
  wins overlaps, no lost detection).

The inference window should be the training patch size (256 for the BASS data protocol): the
network then resizes each window exactly as during training (e.g. 256 -> 800 px).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from ircr.inference.detect import paint_tiled, predict_detections
from ircr.inference.family import InferenceSetting, ModelFamily, Prediction, register_family
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from ircr.postproc.detections import PaintParams


@register_family
class MaskRCNNFamily(ModelFamily):
    """Mask R-CNN with a ResNet-FPN backbone and the BASS (or plain) mask head."""

    name = "maskrcnn"
    config_class = MaskRCNNConfig
    postproc_class = PaintParams

    def build(self, cfg: Any) -> nn.Module:
        """The network of ``cfg``, random init. ``backbone_weights`` is not read (the model
        folder's weights.pt replaces every tensor), but the choices it implied (frozen
        BatchNorm, trainable stages) are kept, so the state dict matches the trained one."""
        cfg = dataclasses.replace(cfg, backbone_weights=None,
                                  norm="frozen" if cfg.frozen_norm else "batch",
                                  trainable_layers=cfg.n_trainable_layers)
        return build_maskrcnn(cfg)

    def parse_postproc(self, data: Any, where: str = "postproc") -> Any:
        """Mapping / PaintParams / None -> checked :class:`PaintParams`."""
        params: PaintParams = super().parse_postproc(data, where)
        return params.check(where)

    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        """Windowed detection of the whole image (see :mod:`ircr.inference.detect`)."""
        dets, prob = predict_detections(model, image, window=setting.window,
                                        overlap=setting.overlap, batch_size=setting.batch_size,
                                        device=setting.device, amp=setting.amp)
        return Prediction(prob=prob, maps={"detections": dets})

    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        """Paint the responsible detections with the folder's thresholds."""
        return paint_tiled(pred.maps["detections"], self.parse_postproc(postproc))
