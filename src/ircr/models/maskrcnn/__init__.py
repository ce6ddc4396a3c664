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

torchvision is imported only when a network is built (``build_maskrcnn``, or the names
``BassMaskRCNN``/``total_loss``): importing this package (the config, for model folders and
the ``bass`` method's options) never needs it, so HoVer-Net work runs even where torchvision
is missing or built for another torch. :func:`require_torchvision` checks the pair first and
raises one line instead of the import traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ircr.compat import torchvision_problem
from ircr.errors import IrcrError
from ircr.models.maskrcnn.config import MASK_BRANCHES, MaskRCNNConfig

if TYPE_CHECKING:
    from ircr.models.maskrcnn.model import BassMaskRCNN, total_loss

__all__ = ["MASK_BRANCHES", "BassMaskRCNN", "MaskRCNNConfig", "build_maskrcnn",
           "require_torchvision", "total_loss"]


def require_torchvision() -> None:
    """Raise a one-line IrcrError if torchvision cannot be used with the installed torch."""
    problem = torchvision_problem()
    if problem is not None:
        raise IrcrError(f"Mask R-CNN (BASS) models need torchvision: {problem}")


def __getattr__(name: str) -> Any:
    """``BassMaskRCNN`` and ``total_loss`` load torchvision on first use (checked first)."""
    if name in ("BassMaskRCNN", "total_loss"):
        require_torchvision()
        from ircr.models.maskrcnn import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_maskrcnn(cfg: MaskRCNNConfig) -> BassMaskRCNN:
    """Build :class:`BassMaskRCNN` from ``cfg`` (validated; loads local backbone weights).

    Raises:
        IrcrError: invalid config, or torchvision unusable (one line with both versions).
    """
    cfg.validate()
    require_torchvision()
    from ircr.models.maskrcnn.model import BassMaskRCNN

    return BassMaskRCNN(cfg)
