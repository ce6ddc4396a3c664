"""Self-supervised pretraining networks: an encoder plus BYOL-style global and dense heads.

The encoder is exactly the one a later training uses, so its weights load 1:1:

* :class:`HoVerNetEncoder` -- the HoVer-Net encoder of a :class:`~ircr.models.ModelConfig`
  (any encoder type, width, depth); its state-dict keys are HoVer-Net's (``encoder.*``).
  Input 0..255, divided by 255 as :class:`~ircr.models.HoVerNet` does; output d3 (stride 8).
* :class:`BackboneBody` -- the ResNet body of the BASS Mask R-CNN backbone (``resnet50``,
  ``resnet18`` or ``tiny``) with ordinary BatchNorm; keys in torchvision layout (``body.*``
  here, saved without the prefix); input normalised with the ImageNet mean/std as the Mask
  R-CNN transform does; output layer4 (stride 32).
* :class:`DenseNetBody` -- CDCL's DenseNet-161 encoder (``target: cdcl``, architecture in
  ``densenet:``); keys ``encoder.features.*`` as in :class:`~ircr.models.cdcl_net.CDCLNet`;
  ImageNet normalisation; output norm5 + ReLU (stride 32).

:class:`PretrainNet` adds a global projector (average pool -> MLP) and a dense projector
(1x1 convs on the feature map), each followed by a predictor in the online network (BYOL).
The architecture a weights file was trained for is described by
:func:`ircr.models.pretrained.hovernet_arch` / ``backbone_arch``; :mod:`ircr.models.pretrained`
compares it with the model that loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ircr.models.checkpointing import set_checkpointing
from ircr.models.config import ModelConfig
from ircr.models.hovernet import init_weights
from ircr.models.preact_resnet import Bottleneck, PreactResNet, PreactUnit, ResNetEncoder
from ircr.models.pretrained import backbone_arch, hovernet_arch

__all__ = ["HeadConfig", "HoVerNetEncoder", "BackboneBody", "DenseNetBody", "PretrainNet",
           "BACKBONE_CHANNELS"]

#: layer4 channels of the BASS backbone bodies (tiny: its last tiny_channels entry)
BACKBONE_CHANNELS = {"resnet50": 2048, "resnet18": 512}


class HoVerNetEncoder(nn.Module):
    """The HoVer-Net encoder of ``cfg``: (N, 3, H, W) 0..255 -> d3 (N, C, H/8, W/8)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = PreactResNet(cfg) if cfg.encoder == "preact" else ResNetEncoder(cfg)
        self.out_channels = int(self.encoder.out_channels[3])
        init_weights(self)
        set_checkpointing(self, cfg.activation_checkpointing, (PreactUnit, Bottleneck))

    def forward(self, x: Tensor) -> Tensor:
        """x: float 0..255 -> last feature map (stride 8)."""
        return self.encoder(x / 255.0)[3]

    def arch(self) -> dict[str, Any]:
        """:func:`hovernet_arch` of this encoder."""
        return hovernet_arch(self.cfg)

    def weights(self) -> dict[str, Tensor]:
        """State dict in HoVer-Net's key layout (``encoder.*``)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}


class BackboneBody(nn.Module):
    """BASS backbone body: (N, 3, H, W) 0..255 -> layer4 (N, C, H/32, W/32)."""

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: str, tiny_channels: list[int] | None = None) -> None:
        # torchvision only here: HoVer-Net pretraining never needs it
        from torchvision.models import resnet18, resnet50

        from ircr.models.maskrcnn.backbone import TinyBody
        from ircr.models.maskrcnn.model import IMAGENET_MEAN, IMAGENET_STD

        super().__init__()
        self.backbone = backbone
        self.tiny_channels = list(tiny_channels or [16, 32, 64, 128])
        body: nn.Module
        if backbone == "tiny":
            body = TinyBody(self.tiny_channels, nn.BatchNorm2d)
            self.out_channels = self.tiny_channels[3]
        else:
            body = (resnet50 if backbone == "resnet50" else resnet18)(weights=None)
            self.out_channels = BACKBONE_CHANNELS[backbone]
        self.body = body
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: float 0..255 -> layer4 output (stride 32)."""
        b: Any = self.body
        x = (x - self.mean) / self.std
        x = b.relu(b.bn1(b.conv1(x)))
        if hasattr(b, "maxpool"):
            x = b.maxpool(x)
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def arch(self) -> dict[str, Any]:
        """:func:`backbone_arch` of this body."""
        return backbone_arch(self.backbone, self.tiny_channels)

    def weights(self) -> dict[str, Tensor]:
        """State dict in torchvision layout (no ``fc.*``), as the BASS backbone loads it."""
        return {k: v.detach().cpu().clone() for k, v in self.body.state_dict().items()
                if not k.startswith("fc.")}


@dataclass
class HeadConfig:
    """Projector/predictor sizes (BYOL: hidden 4096, out 256; smaller suits CPU runs)."""

    hidden: int = 1024
    dim: int = 256
    dense_hidden: int = 512
    dense_dim: int = 128

    def validate(self, where: str = "heads") -> None:
        """Every size must be positive."""
        from ircr.errors import IrcrError

        for key in ("hidden", "dim", "dense_hidden", "dense_dim"):
            if int(getattr(self, key)) < 1:
                raise IrcrError(f"{where}: heads.{key} must be >= 1")


def _mlp(cin: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def _conv_mlp(cin: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out, 1))


class DenseNetBody(nn.Module):
    """CDCL's DenseNet encoder (:class:`~ircr.models.cdcl_net.DenseEncoder`):
    (N, 3, H, W) 0..255 -> norm5 + ReLU (N, C, H/32, W/32); keys ``encoder.features.*``, those
    of :class:`~ircr.models.cdcl_net.CDCLNet`."""

    def __init__(self, cfg: Any) -> None:
        from ircr.models.cdcl_net import IMAGENET_MEAN, IMAGENET_STD, DenseEncoder, encoder_channels

        super().__init__()
        self.cfg = cfg
        self.encoder = DenseEncoder(cfg)
        self.out_channels = encoder_channels(cfg)[3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: float 0..255, H, W multiples of 32 -> last feature map (stride 32)."""
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.encoder((x - mean) / std)[3]

    def arch(self) -> dict[str, Any]:
        """:meth:`~ircr.models.cdcl_net.CDCLNetConfig.arch` of this encoder."""
        arch: dict[str, Any] = self.cfg.arch()
        return arch

    def weights(self) -> dict[str, Tensor]:
        """State dict with CDCLNet's keys (``encoder.features.*``)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}


class PretrainNet(nn.Module):
    """Encoder + global and dense projectors (+ predictors when ``predictors``; BYOL online).

    forward(x (N, 3, H, W) 0..255) -> {"global": (N, dim), "dense": (N, dense_dim, h, w)}
    (predictor outputs when ``predictors``, projections otherwise).
    """

    def __init__(self, encoder: HoVerNetEncoder | BackboneBody | DenseNetBody, heads: HeadConfig,
                 predictors: bool = True) -> None:
        super().__init__()
        c = encoder.out_channels
        self.encoder = encoder
        self.projector = _mlp(c, heads.hidden, heads.dim)
        self.dense_projector = _conv_mlp(c, heads.dense_hidden, heads.dense_dim)
        self.predictor = _mlp(heads.dim, heads.hidden, heads.dim) if predictors else None
        self.dense_predictor = (_conv_mlp(heads.dense_dim, heads.dense_hidden, heads.dense_dim)
                                if predictors else None)

    def project(self, x: Tensor) -> dict[str, Tensor]:
        """Projections only (the target network's output)."""
        f = self.encoder(x)
        return {"global": self.projector(f.mean(dim=(2, 3))), "dense": self.dense_projector(f)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predictions of the projections (online network)."""
        z = self.project(x)
        if self.predictor is None or self.dense_predictor is None:
            return z
        return {"global": self.predictor(z["global"]), "dense": self.dense_predictor(z["dense"])}
