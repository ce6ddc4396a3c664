"""The PG-FANet family: blended sliding-window 3-class probabilities, then interior components.

* ``model.yaml``: ``family: pgfanet`` and ``model:`` a
  :class:`~ircr.models.pgfanet_net.PGFANetConfig` mapping.
* ``postproc.yaml``: :class:`~ircr.postproc.interior.InteriorParams` (min size 20, dilation
  radius 2).
* ``predict``: the network's final ("seg") softmax, blended over windows exactly as
  HoVer-Net's maps (:func:`ircr.inference.predict.launch_maps`, same padding, raised-cosine
  weights, AMP, channels_last, compile): ``prob`` is the foreground probability 1 − p(background),
  ``maps["probs"]`` the (2, h, w) float32 interior and boundary probabilities.
* ``instances``: argmax class -> :func:`ircr.postproc.interior.interior_instances`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ircr.inference import predict as tiled
from ircr.inference.family import InferenceSetting, ModelFamily, Prediction, register_family
from ircr.inference.module_cache import cached
from ircr.models.pgfanet_net import PGFANetConfig, build_pgfanet
from ircr.postproc.interior import InteriorParams, interior_instances


class AsBlendedMaps(nn.Module):
    """Presents PG-FANet's 3-class softmax in the form the HoVer-Net blender stitches.

    ``{"np": (N, 2, H, W), "hv": (N, 2, H, W)}``: ``np`` holds log(p_bg) and log(1 − p_bg), so
    its softmax channel 1 is the foreground probability; ``hv`` holds (p_interior,
    p_boundary). Blending is linear in ``hv`` and in the softmax, so the three stitched maps
    are the blended class probabilities.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N, 3, H, W) float 0..255 -> the two (N, 2, H, W) maps above."""
        p = torch.softmax(self.net(x)["seg"].float(), dim=1)
        bg = p[:, :1].clamp(1e-12, 1.0)
        fg = (1.0 - p[:, :1]).clamp(1e-12, 1.0)
        return {"np": torch.cat([bg.log(), fg.log()], dim=1), "hv": p[:, 1:]}


def _wrapped(model: nn.Module) -> AsBlendedMaps:
    """One wrapper per network (so a compiled graph is cached once per model)."""
    return cached(model, "pgfanet_blended_maps", lambda: AsBlendedMaps(model))


def _prediction(prob: np.ndarray, maps: np.ndarray) -> Prediction:
    return Prediction(prob=prob, maps={"probs": maps})


@register_family
class PGFANetFamily(ModelFamily):
    """PG-FANet (two dilated ResNet-34 stages, 3-class output; reference §8.3)."""

    name = "pgfanet"
    config_class = PGFANetConfig
    postproc_class = InteriorParams

    def build(self, cfg: Any) -> nn.Module:
        """The network of ``cfg``, random init (the folder's weights replace every tensor)."""
        return build_pgfanet(cfg, load_pretrained=False)

    def predict(self, model: nn.Module, image: np.ndarray,
                setting: InferenceSetting) -> Prediction:
        """Blended sliding-window prediction: prob (h, w), ``maps["probs"]`` (2, h, w)."""
        return self.predict_later(model, image, setting)()

    def predict_later(self, model: nn.Module, image: np.ndarray,
                      setting: InferenceSetting) -> Callable[[], Prediction]:
        """The windows queued on the device; the call waits for the maps' copy back."""
        fut = tiled.launch_maps(_wrapped(model), image, window=setting.window,
                                overlap=setting.overlap, batch_size=setting.batch_size,
                                device=setting.device, amp=setting.amp,
                                channels_last=setting.channels_last, compile=setting.compile)
        return lambda: _prediction(*fut.result())

    def instances(self, pred: Prediction, postproc: Any) -> np.ndarray:
        """Argmax of (background, interior, boundary), then interior components."""
        fg = np.asarray(pred.prob, dtype=np.float32)
        probs = np.concatenate([(1.0 - fg)[None], np.asarray(pred.maps["probs"])], axis=0)
        return interior_instances(probs.argmax(axis=0), self.parse_postproc(postproc))
