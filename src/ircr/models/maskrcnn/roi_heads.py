"""R-CNN heads with the BASS mask branch: a torchvision ``RoIHeads`` whose mask part is ours.

The box part is torchvision's (sampling, box head, Fast R-CNN loss, post-processing), reused
through the inherited methods. The mask part:

* training: the sampled positive proposals (label > 0) and their matched GT indices ->
  14x14 (and, with CRC, 28x28) RoIAlign on FPN levels '0'..'3' -> :class:`BassMaskHead` ->
  ``loss_mask`` (BCE of the fused 28x28 logits against binarised 28x28 targets), ``loss_lrd``
  (BCE of the 14x14 LRD logits against 14x14 targets, boundary-weighted by
  ``lrd_boundary_weight``), ``loss_crc`` (``crc_weight`` x the contrastive loss, already
  weighted). Without positives these are 0 with a graph.
* inference: the detected boxes -> fused 28x28 logits -> sigmoid -> ``masks`` (K, 1, 28, 28)
  (GeneralizedRCNNTransform pastes them into the image).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from ircr.models.maskrcnn.config import MaskRCNNConfig
from ircr.models.maskrcnn.contrastive import crc_loss
from ircr.models.maskrcnn.mask_head import BassMaskHead
from ircr.models.maskrcnn.mask_losses import boundary_weights, roi_mask_targets, weighted_bce

__all__ = ["BassRoIHeads"]

_LEVELS = ["0", "1", "2", "3"]


class BassRoIHeads(RoIHeads):
    """Box branch (torchvision) + the BASS mask branch; one foreground class."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        c = cfg.fpn_channels
        super().__init__(
            box_roi_pool=MultiScaleRoIAlign(_LEVELS, 7, sampling_ratio=2),
            box_head=TwoMLPHead(c * 49, cfg.box_representation),
            box_predictor=FastRCNNPredictor(cfg.box_representation, 2),
            fg_iou_thresh=cfg.box_fg_iou_thresh, bg_iou_thresh=cfg.box_bg_iou_thresh,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=cfg.box_positive_fraction, bbox_reg_weights=None,
            score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.box_detections_per_img,
        )
        self.cfg = cfg
        self.bass_roi_pool = MultiScaleRoIAlign(_LEVELS, 14, sampling_ratio=2)
        self.crc_roi_pool = MultiScaleRoIAlign(_LEVELS, 28, sampling_ratio=2)
        self.bass_mask_head = BassMaskHead(c, cfg.mask_channels, cfg.mask_branches,
                                           cfg.crc_channels)

    def _mask_outputs(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]], with_embed: bool,
    ) -> dict[str, torch.Tensor]:
        head: nn.Module = self.bass_mask_head
        feats = self.bass_roi_pool(features, boxes, image_shapes)
        crc = (self.crc_roi_pool(features, boxes, image_shapes)
               if self.bass_mask_head.needs_crc_features else None)
        out: dict[str, torch.Tensor] = head(feats, crc, with_embed=with_embed)
        return out

    def _mask_losses(
        self, out: dict[str, torch.Tensor], boxes: list[torch.Tensor],
        matched: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        gt = [t["masks"] for t in targets]
        t28 = torch.cat([roi_mask_targets(g, b, i, 28) for g, b, i in zip(gt, boxes, matched)])
        losses = {"loss_mask": weighted_bce(out["mask"][:, 0], t28)}
        if "lrd" in out:
            t14 = torch.cat([roi_mask_targets(g, b, i, 14) for g, b, i in zip(gt, boxes, matched)])
            w = (boundary_weights(t14, cfg.lrd_boundary_weight)
                 if cfg.lrd_boundary_weight != 1.0 else None)
            losses["loss_lrd"] = weighted_bce(out["lrd"][:, 0], t14, w)
        if "crc" in cfg.mask_branches:
            embed = out["embed"]
            cl = crc_loss(embed, t28 > 0.5, d=cfg.crc_band, alpha=cfg.crc_alpha,
                          min_pixels=cfg.crc_min_pixels, tau_hard=cfg.crc_tau_hard,
                          tau_easy=cfg.crc_tau_easy, form=cfg.crc_form,
                          query=cfg.crc_query)
            losses["loss_crc"] = cfg.crc_weight * cl
        return losses

    def forward(  # type: ignore[override]
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """torchvision's RoIHeads contract: (detections, {}) in eval, ([], losses) in training."""
        if self.training:
            if targets is None:
                raise ValueError("BassRoIHeads: targets are required in training mode")
            proposals, matched, labels, reg_targets = self.select_training_samples(
                proposals, targets)
        box_feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_feats)
        if self.training:
            assert targets is not None
            loss_cls, loss_reg = fastrcnn_loss(class_logits, box_regression, labels, reg_targets)
            pos = [torch.where(lab > 0)[0] for lab in labels]
            boxes = [p[i] for p, i in zip(proposals, pos)]
            pos_matched = [m[i] for m, i in zip(matched, pos)]
            out = self._mask_outputs(features, boxes, image_shapes, with_embed=True)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_reg}
            losses.update(self._mask_losses(out, boxes, pos_matched, targets))
            return [], losses
        det_boxes, det_scores, det_labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes)
        out = self._mask_outputs(features, det_boxes, image_shapes, with_embed=False)
        probs = out["mask"].sigmoid().split([len(b) for b in det_boxes])
        result = [
            {"boxes": b, "labels": lab, "scores": s, "masks": p}
            for b, lab, s, p in zip(det_boxes, det_labels, det_scores, probs)
        ]
        return result, {}
