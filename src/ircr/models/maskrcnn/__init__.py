"""Mask R-CNN model family with the BASS mask head (pure ``nn.Module``s, no downloads).

Public API::

    from ircr.models.maskrcnn import MaskRCNNConfig, BassMaskRCNN, build_maskrcnn, total_loss
    cfg = from_dict(MaskRCNNConfig, {"backbone": "tiny", "min_size": [256], ...})
    model = build_maskrcnn(cfg)          # == BassMaskRCNN(cfg)
    model.train(); losses = model(images_0_255, targets)   # dict of scalar losses
    model.eval();  dets = model(images_0_255)              # [{boxes, scores, labels, masks}]

Modules: ``config`` (MaskRCNNConfig), ``backbone`` (ResNet-50/18/tiny + FPN, local weights),
``mask_head`` (NMH + LRD + CRC + fusion), ``mask_losses`` (RoI mask targets, LRD boundary
weights, BCE), ``contrastive`` (CRC pixel sets, sampling, InfoNCE), ``roi_heads``
(torchvision RoIHeads with the BASS mask branch), ``model`` (BassMaskRCNN; input/output
conventions in its docstring).
"""

from __future__ import annotations

from ircr.models.maskrcnn.config import MASK_BRANCHES, MaskRCNNConfig
from ircr.models.maskrcnn.model import BassMaskRCNN, total_loss

__all__ = ["MASK_BRANCHES", "BassMaskRCNN", "MaskRCNNConfig", "build_maskrcnn", "total_loss"]


def build_maskrcnn(cfg: MaskRCNNConfig) -> BassMaskRCNN:
    """Build :class:`BassMaskRCNN` from ``cfg`` (validated; loads local backbone weights)."""
    cfg.validate()
    return BassMaskRCNN(cfg)
