"""``BassMaskRCNN``: Mask R-CNN (ResNet-FPN, one nucleus class) with the BASS mask head.

Input convention (the project's, as HoVer-Net): a list of (3, H, W) float tensors (or one
(N, 3, H, W) tensor) with values **0..255** RGB; the network divides by 255, then
torchvision's ``GeneralizedRCNNTransform`` normalises with the ImageNet mean/std, resizes
(shorter side ``min_size``, longer at most ``max_size``; a 256 px patch becomes 800 px with
the defaults) and pads to a multiple of 32.

* ``model.train(); losses = model(images, targets)``: targets are one dict per image with
  ``boxes`` (K, 4) float pixel-edge xyxy, ``labels`` (K,) int64 (1 = nucleus), ``masks``
  (K, H, W) uint8 {0, 1} (``ircr.data.detection.detection_targets``; K may be 0). Returns
  ``{loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask[, loss_lrd]
  [, loss_crc]}`` (loss_crc already multiplied by ``crc_weight``); the total is their sum.
* ``model.eval(); dets = model(images)``: one dict per image with ``boxes`` (K, 4) float xyxy
  in input pixels, ``scores`` (K,), ``labels`` (K,) int64, ``masks`` (K, 1, H, W) float
  probabilities pasted in pixel-edge box coordinates (:mod:`~ircr.models.maskrcnn.paste`;
  threshold them, e.g. at 0.5, then paint; scores above
  ``box_score_thresh``, at most ``box_detections_per_img``, sorted by decreasing score).

RPN and box losses are torchvision's (BCE/CE + smooth L1 with beta 1/9); the released BASS
config (mmdetection) uses plain L1 for the box regression, a difference we keep.

Bad targets (wrong shapes/dtypes, degenerate boxes) raise :class:`ircr.errors.IrcrError`
naming ``targets[i].<key>``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ircr.errors import IrcrError
from ircr.models.maskrcnn.backbone import build_backbone
from ircr.models.maskrcnn.config import MaskRCNNConfig
from ircr.models.maskrcnn.paste import PixelEdgeTransform
from ircr.models.maskrcnn.roi_heads import BassRoIHeads

__all__ = ["BassMaskRCNN", "total_loss"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _rpn(cfg: MaskRCNNConfig, in_channels: int) -> RegionProposalNetwork:
    sizes = tuple((s,) for s in cfg.anchor_sizes)
    ratios = (tuple(cfg.anchor_ratios),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors, head, cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh,
        cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction,
        {"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        {"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        cfg.rpn_nms_thresh,
    )


def _check_targets(targets: list[dict[str, torch.Tensor]], images: list[torch.Tensor]) -> None:
    if len(targets) != len(images):
        raise IrcrError(f"targets: {len(targets)} target dicts for {len(images)} images")
    for i, (t, img) in enumerate(zip(targets, images)):
        missing = [k for k in ("boxes", "labels", "masks") if k not in t]
        if missing:
            raise IrcrError(f"targets[{i}]: missing key '{missing[0]}'")
        boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
        k = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise IrcrError(f"targets[{i}].boxes: must be a (K, 4) float tensor, got "
                            f"{tuple(boxes.shape)} {boxes.dtype}")
        if labels.shape != (k,) or labels.dtype != torch.int64:
            raise IrcrError(f"targets[{i}].labels: must be ({k},) int64, got "
                            f"{tuple(labels.shape)} {labels.dtype}")
        if masks.shape != (k, *img.shape[-2:]):
            raise IrcrError(f"targets[{i}].masks: must be ({k}, {img.shape[-2]}, "
                            f"{img.shape[-1]}), got {tuple(masks.shape)}")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(1)
        if bool(bad.any()):
            j = int(torch.where(bad)[0][0])
            raise IrcrError(f"targets[{i}].boxes: box {j} {boxes[j].tolist()} has no area")


class BassMaskRCNN(GeneralizedRCNN):
    """Mask R-CNN with a ResNet-FPN backbone and the BASS (NMH + LRD + CRC) mask head."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        backbone = build_backbone(cfg)
        transform = PixelEdgeTransform(
            min_size=tuple(cfg.min_size), max_size=cfg.max_size,
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        )
        super().__init__(backbone, _rpn(cfg, backbone.out_channels), BassRoIHeads(cfg), transform)
        self.cfg = cfg

    def forward(  # type: ignore[override]
        self, images: list[torch.Tensor] | torch.Tensor,
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> Any:
        """Losses (training, targets required) or detections (eval); see the module docstring."""
        imgs = list(images)
        for i, img in enumerate(imgs):
            if img.ndim != 3 or img.shape[0] != 3 or not img.is_floating_point():
                raise IrcrError(f"images[{i}]: must be a (3, H, W) float tensor 0..255, got "
                                f"{tuple(img.shape)} {img.dtype}")
        if self.training:
            if targets is None:
                raise IrcrError("targets: required in training mode")
            _check_targets(targets, imgs)
        return super().forward([img / 255.0 for img in imgs], targets)


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of a loss dict returned by :class:`BassMaskRCNN` in training mode."""
    return torch.stack(list(losses.values())).sum()
