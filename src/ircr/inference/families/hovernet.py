"""The HoVer-Net family: blended sliding-window NP/HV maps, then WBIS (HoVer-Net §4).

``predict`` is :func:`ircr.inference.predict.predict_maps` (``maps = {"hv": (2, h, w)
float32}``, channel 0 = x, 1 = y), through :func:`ircr.inference.tta.flip_averaged` when the
setting asks for test-time augmentation; ``instances`` is :func:`ircr.postproc.watershed.wbis`
with :class:`~ircr.postproc.watershed.WBISParams` from ``postproc.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from ircr.inference import predict as tiled
from ircr.inference.family import InferenceSetting, ModelFamily, Prediction, register_family
from ircr.inference.tta import flip_averaged
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams, wbis


@register_family
class HoVerNetFamily(ModelFamily):
    """HoVer-Net (pre-activation or torchvision ResNet encoder, NP/HV[/TP] decoders)."""

    name = "hovernet"
    config_class = ModelConfig
    postproc_class = WBISParams

    def build(self, cfg: Any) -> nn.Module:
        """The network of ``cfg`` without pretrained encoder weights."""
        return build_model(cfg, load_pretrained=False)

    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        """Blended sliding-window prediction: prob (h, w) and ``maps["hv"]`` (2, h, w)."""
        net = flip_averaged(model, setting.tta)
        prob, hv = tiled.predict_maps(net, image, window=setting.window,
                                      overlap=setting.overlap, batch_size=setting.batch_size,
                                      device=setting.device, amp=setting.amp,
                                      channels_last=setting.channels_last,
                                      compile=setting.compile)
        return Prediction(prob=prob, maps={"hv": hv})

    def predict_later(self, model: nn.Module, image: np.ndarray,
                      setting: InferenceSetting) -> Callable[[], Prediction]:
        """The windows queued on the device; the call waits for the maps' copy back."""
        net = flip_averaged(model, setting.tta)
        fut = tiled.launch_maps(net, image, window=setting.window, overlap=setting.overlap,
                                batch_size=setting.batch_size, device=setting.device,
                                amp=setting.amp, channels_last=setting.channels_last,
                                compile=setting.compile)

        def result() -> Prediction:
            prob, hv = fut.result()
            return Prediction(prob=prob, maps={"hv": hv})

        return result

    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        """WBIS on the NP probability and HV maps."""
        return wbis(pred.prob, pred.maps["hv"], self.parse_postproc(postproc))
