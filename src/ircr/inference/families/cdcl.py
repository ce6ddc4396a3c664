"""The CDCL family (semantic nuclei segmentation): blended sliding-window foreground
probability, then connected components.

* ``model.yaml``: ``family: cdcl`` and ``model:`` a :class:`~ircr.models.cdcl_net.CDCLNetConfig`
  mapping (written by ``ircr train`` with ``method: cdcl``).
* ``postproc.yaml``: :class:`~ircr.postproc.components.ComponentParams` (threshold 0.5,
  fill holes, 4-connectivity, min area 10 px).
* ``predict``: :func:`ircr.inference.predict.predict_maps` (the HoVer-Net tiling and blending)
  on the network's 2-class logits; ``maps`` is empty (no HV maps).
* ``instances``: :func:`ircr.postproc.components.semantic_instances`. Touching nuclei are one
  instance: AJI, PQ and F1 of this family measure that (the IRCR paper reports Dice only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ircr.inference import predict as tiled
from ircr.inference.family import InferenceSetting, ModelFamily, Prediction, register_family
from ircr.inference.module_cache import cached
from ircr.models.cdcl_net import CDCLNetConfig, build_cdcl_net
from ircr.postproc.components import ComponentParams, semantic_instances


class SemanticOnly(nn.Module):
    """Runs a CDCL network without its projector; zero HV maps for the shared tiling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N, 3, H, W) 0..255 -> {"np": (N, 2, H, W) logits, "hv": (N, 2, H, W) zeros}."""
        logits = self.net(x, embed=False)["np"]
        return {"np": logits, "hv": torch.zeros_like(logits)}


def semantic_only(net: nn.Module) -> SemanticOnly:
    """The (cached) :class:`SemanticOnly` of ``net``: one wrapper per network, so a compiled
    graph (``compile: true``, cached per module) is built once, not once per image."""
    return cached(net, "cdcl_semantic_only", lambda: SemanticOnly(net))


@register_family
class CDCLFamily(ModelFamily):
    """DenseNet-161 U-Net-like semantic network of CDCL (Wu et al., CVPR 2022)."""

    name = "cdcl"
    config_class = CDCLNetConfig
    postproc_class = ComponentParams

    def build(self, cfg: Any) -> nn.Module:
        """The network of ``cfg``; ``pretrained`` is not read (weights.pt replaces all)."""
        return build_cdcl_net(cfg, load_pretrained=False)

    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        """Blended sliding-window foreground probability (h, w) float32."""
        prob, _ = tiled.predict_maps(semantic_only(model), image, window=setting.window,
                                     overlap=setting.overlap, batch_size=setting.batch_size,
                                     device=setting.device, amp=setting.amp,
                                     channels_last=setting.channels_last,
                                     compile=setting.compile)
        return Prediction(prob=prob)

    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        """Connected components of the thresholded probability."""
        return semantic_instances(pred.prob, self.parse_postproc(postproc))
