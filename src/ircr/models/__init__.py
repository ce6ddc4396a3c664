"""Pure nn.Modules: HoVer-Net with a pre-activation (or torchvision-layout) ResNet-50 encoder.

``build_model(cfg)`` builds the network from a :class:`ModelConfig` and, when
``cfg.pretrained`` is set, loads encoder weights from that local file.
"""

from __future__ import annotations

from ircr.models.config import ModelConfig
from ircr.models.hovernet import HoVerNet

__all__ = ["HoVerNet", "ModelConfig", "build_model"]


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> HoVerNet:
    """Build HoVer-Net from ``cfg`` (Kaiming init), then load ``cfg.pretrained`` if set.

    Args:
        cfg: architecture options.
        load_pretrained: set False when full weights are loaded afterwards (model folders).
    """
    model = HoVerNet(cfg)
    if load_pretrained and cfg.pretrained:
        from ircr.models.pretrained import load_pretrained as _load

        model.pretrained_report = _load(model, cfg.pretrained)  # shown by the trainer
    return model
