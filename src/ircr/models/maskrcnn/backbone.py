"""ResNet-FPN backbones for Mask R-CNN, never downloading weights.

``build_backbone(cfg)`` returns a torchvision ``BackboneWithFPN`` (``out_channels`` set, five
feature maps ``'0'..'3', 'pool'`` at strides 4, 8, 16, 32, 64) over

* ``resnet50`` / ``resnet18``: torchvision ResNets built with ``weights=None``; optional local
  ImageNet weights (``cfg.backbone_weights``, torchvision layout, read with
  ``weights_only=True``);
* ``tiny``: four stride-2 stages of two 3x3 convs (``cfg.tiny_channels``) after a stride-2
  stem, for CPU tests.

Stages outside the ``cfg.n_trainable_layers`` last ones get ``requires_grad=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ircr.errors import IrcrError
from ircr.models.maskrcnn.config import MaskRCNNConfig
from ircr.models.pretrained import (
    PRETRAIN_WEIGHTS,
    PretrainedReport,
    backbone_arch,
    check_arch,
    is_pretrain_output,
    pretrain_detail,
    read_pretrain_file,
)

log = logging.getLogger(__name__)

__all__ = ["build_backbone", "load_backbone_weights", "TinyBody"]

_RETURN = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


def _stage(cin: int, cout: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
    )


class TinyBody(nn.Module):
    """A small ResNet-shaped body: stem (stride 2) + ``layer1..layer4`` (strides 4..32)."""

    def __init__(self, channels: list[int], norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = norm(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(channels[0], channels[0], norm)
        self.layer2 = _stage(channels[0], channels[1], norm)
        self.layer3 = _stage(channels[1], channels[2], norm)
        self.layer4 = _stage(channels[2], channels[3], norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stage outputs are taken by torchvision's IntermediateLayerGetter; this runs all."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_backbone_weights(body: nn.Module, path: str | Path,
                          arch: dict[str, Any] | None = None) -> list[str]:
    """Load a torchvision-layout ResNet state dict from the local file ``path`` into ``body``.

    ``path`` may also be an ``ircr pretrain`` output (folder or its ``encoder.pt``); its
    architecture must equal ``arch`` (:func:`ircr.models.pretrained.backbone_arch`).
    The number of tensors loaded is kept in ``body.pretrained_report``.

    Returns the names of ignored keys (the classifier ``fc.*``). Missing keys, shape
    mismatches, unreadable files and non-state-dict contents raise :class:`IrcrError`.
    """
    p = Path(path)
    if is_pretrain_output(p):
        f, meta, tensors = read_pretrain_file(p)
        if arch is not None:
            check_arch(f, meta["arch"], arch)
        _load_body(body, f, tensors)
        report = getattr(body, "pretrained_report", None)
        if report is not None:
            report.detail = pretrain_detail(meta)
        return []
    if not p.is_file():
        raise IrcrError(f"{p}: backbone weights file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the file's
        raise IrcrError(f"{p}: cannot read backbone weights ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise IrcrError(f"{p}: not a state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith("fc."))
    _load_body(body, p, {k: v for k, v in state.items() if not k.startswith("fc.")})
    return ignored


def _load_body(body: nn.Module, p: Path, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``body``: every tensor must fit, none may be missing or unknown."""
    try:
        result = body.load_state_dict(state, strict=False)
    except RuntimeError:
        raise IrcrError(f"{p}: backbone weights do not fit the network (shape mismatch)") from None
    missing = [k for k in result.missing_keys
               if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
    if missing:
        raise IrcrError(f"{p}: backbone weights lack {len(missing)} tensors (e.g. {missing[0]})")
    if result.unexpected_keys:
        raise IrcrError(f"{p}: backbone weights have unknown tensors "
                        f"(e.g. {result.unexpected_keys[0]}); expected a torchvision ResNet")
    report = PretrainedReport(
        p, "ircr-pretrain" if p.name == PRETRAIN_WEIGHTS else "torchvision", sorted(state))
    setattr(body, "pretrained_report", report)  # noqa: B010 - an nn.Module attribute
    log.info("backbone weights: %s", report.summary())


def _freeze(body: nn.Module, n_trainable: int) -> None:
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:n_trainable]
    if n_trainable == 5:
        trainable.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(t) for t in trainable):
            param.requires_grad_(False)


def build_backbone(cfg: MaskRCNNConfig) -> BackboneWithFPN:
    """ResNet (or tiny) body + FPN with a max-pool level, as configured by ``cfg``."""
    norm: Callable[[int], nn.Module] = FrozenBatchNorm2d if cfg.frozen_norm else nn.BatchNorm2d
    body: nn.Module
    if cfg.backbone == "tiny":
        body = TinyBody(cfg.tiny_channels, norm)
        in_channels = list(cfg.tiny_channels)
    elif cfg.backbone == "resnet18":
        body = resnet18(weights=None, norm_layer=norm)
        in_channels = [64, 128, 256, 512]
    else:
        body = resnet50(weights=None, norm_layer=norm)
        in_channels = [256, 512, 1024, 2048]
    if cfg.backbone_weights:
        load_backbone_weights(body, cfg.backbone_weights,
                              backbone_arch(cfg.backbone, cfg.tiny_channels))
    _freeze(body, cfg.n_trainable_layers)
    fpn = BackboneWithFPN(
        body, return_layers=dict(_RETURN), in_channels_list=in_channels,
        out_channels=cfg.fpn_channels, extra_blocks=LastLevelMaxPool(),
    )
    # what load_backbone_weights loaded (None without weights); the body is re-wrapped above
    setattr(fpn, "pretrained_report", getattr(body, "pretrained_report", None))  # noqa: B010
    return fpn
