"""Mask R-CNN / BASS architecture as data: :class:`MaskRCNNConfig`.

Defaults follow the BASS released configuration (``mask_rcnn_r50_fpn`` of mmdetection 2.18,
reference-algorithms §7.2): ResNet-50-FPN, anchors 32..512 px (scale 8 x strides 4..64) with
ratios {0.5, 1, 2}, RoI sampler 512 per image with 25 % positives at IoU 0.5, test score
threshold 0.05, NMS 0.5, at most 100 detections per image, a 256 px patch upscaled to 800 px
(``min_size 800``, ``max_size 1333``). ``backbone: tiny`` with small heads gives a network
that trains on CPU in seconds (tests, smoke runs).

Choices that are OURS (not in the paper or the released code) are marked "(our choice)":
``lrd_boundary_weight`` (the paper says boundary pixels get a lower LRD weight, the released
code uses none; default 1.0 = the released code), the ReLU between the two 1x1 convs of the
CRC mask logits, and ``crc_form: paper`` as the default (the released code is ``hard_only``).
The contrastive weight default 0.25 is what the released code effectively uses (its epoch hook
fires once under the iteration runner), not the paper's unstated value.

Build with ``ircr.config.from_dict(MaskRCNNConfig, mapping, where=file)``: unknown keys and
wrong types are one-line errors; :meth:`MaskRCNNConfig.validate` checks the values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ircr.config import bounded, check_ranges, short_repr
from ircr.errors import IrcrError

__all__ = ["MaskRCNNConfig", "MASK_BRANCHES"]

#: the mask-head branches: naive 28x28 head, low-resolution denoising 14x14 head, cross-RoI
#: contrastive head (its 28x28 logits); their 28x28 logits are fused by a 1x1 conv.
MASK_BRANCHES = ("nmh", "lrd", "crc")
# upper bounds of sizes (larger values only exhaust memory)
MAX_CHANNELS = 4096
MAX_SIDE = 8192  # px, image sides after resizing and anchor sizes
MAX_BOXES = 100_000  # proposals, sampled RoIs, detections per image


@dataclass
class MaskRCNNConfig:
    """Mask R-CNN (one nucleus class) with the BASS mask head.

    Attributes:
        backbone: "resnet50" (paper), "resnet18", or "tiny" (4 conv stages of
            ``tiny_channels``; CPU tests).
        backbone_weights: local file of torchvision-layout ResNet weights (ImageNet), loaded
            with ``torch.load(weights_only=True)``; None = random init. Nothing is downloaded.
        trainable_layers: ResNet stages trained (0..5, 5 = all); None = 3 when
            ``backbone_weights`` is given (mmdetection ``frozen_stages=1``), else 5.
        norm: "frozen" (BatchNorm with fixed statistics, as with ImageNet weights in the paper),
            "batch" (ordinary BatchNorm, needed from scratch) or "auto" (frozen with
            ``backbone_weights``, batch without).
        tiny_channels: the 4 stage widths of the tiny backbone.
        fpn_channels: FPN output channels (256 in the paper).
        min_size: shorter image side after resizing; several values = one drawn per training
            image (multi-scale); inference uses the last one.
        max_size: longer side limit after resizing.
        anchor_sizes: one anchor size per FPN level (5 levels, strides 4..64).
        anchor_ratios: anchor aspect ratios (h/w).
        rpn_*: RPN training/test settings (torchvision names).
        box_*: R-CNN box branch settings; ``box_detections_per_img`` caps detections per image.
        box_representation: hidden size of the two-layer box MLP (1024 in the paper).
        mask_channels: channels of the mask-head convs (256 in the paper).
        mask_branches: active branches of the mask head (any non-empty subset of
            ``nmh``, ``lrd``, ``crc``); ``[nmh]`` is a plain Mask R-CNN (the BASS teacher).
        lrd_boundary_weight: BCE weight of the 14x14 LRD target pixels within 1 px of the
            target boundary (our choice; 1.0 = unweighted, the released code; the paper says
            lower, e.g. 0.5).
        crc_channels: CRC encoder/embedding channels (64).
        crc_form: "paper" (four InfoNCE terms, tau in numerator and denominator) or
            "hard_only" (the released code: two hard terms, keys shifted by the query, no tau
            on the positive in the denominator).
        crc_query: "all_rois" (the released code: per-RoI means of all pixels, averaged over
            every kept RoI) or "two_rois" (the paper's Eq. 5: two RoIs drawn at random, the
            queries the means of their sampled keys).
        crc_tau_hard / crc_tau_easy: temperatures of the boundary (hard) / inner (easy) terms.
        crc_band: d, band = pixels at Euclidean distance < d from the edge, edge excluded.
        crc_alpha: fraction of each pixel set sampled (ceil(alpha * |set|)).
        crc_min_pixels: RoIs with fewer pixels in any of the four sets are dropped.
        crc_weight: weight of the contrastive loss in the total loss.
    """

    backbone: Literal["resnet50", "resnet18", "tiny"] = "resnet50"
    backbone_weights: str | None = None
    trainable_layers: int | None = None
    norm: Literal["auto", "frozen", "batch"] = "auto"
    tiny_channels: list[int] = bounded(lo=1, hi=MAX_CHANNELS,
                                       factory=lambda: [16, 32, 64, 128])
    fpn_channels: int = bounded(256, 1, MAX_CHANNELS)
    min_size: list[int] = bounded(lo=1, hi=MAX_SIDE, factory=lambda: [800])
    max_size: int = bounded(1333, 1, MAX_SIDE)
    anchor_sizes: list[int] = bounded(lo=1, hi=MAX_SIDE,
                                      factory=lambda: [32, 64, 128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int = bounded(2000, 1, MAX_BOXES)
    rpn_pre_nms_top_n_test: int = bounded(1000, 1, MAX_BOXES)
    rpn_post_nms_top_n_train: int = bounded(1000, 1, MAX_BOXES)
    rpn_post_nms_top_n_test: int = bounded(1000, 1, MAX_BOXES)
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = bounded(256, 1, MAX_BOXES)
    rpn_positive_fraction: float = 0.5
    box_batch_size_per_image: int = bounded(512, 1, MAX_BOXES)
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = bounded(100, 1, MAX_BOXES)
    box_representation: int = bounded(1024, 1, 16 * MAX_CHANNELS)
    mask_channels: int = bounded(256, 1, MAX_CHANNELS)
    mask_branches: list[str] = field(default_factory=lambda: list(MASK_BRANCHES))
    lrd_boundary_weight: float = 1.0
    crc_channels: int = bounded(64, 1, MAX_CHANNELS)
    crc_form: Literal["paper", "hard_only"] = "paper"
    crc_query: Literal["all_rois", "two_rois"] = "all_rois"
    crc_tau_hard: float = 0.7
    crc_tau_easy: float = 0.3
    crc_band: int = bounded(4, 0, 256)
    crc_alpha: float = 0.7
    crc_min_pixels: int = bounded(5, 1, 10**6)
    crc_weight: float = 0.25

    def validate(self, where: str = "model") -> None:
        """Raise :class:`IrcrError` (naming ``where`` and the key) for unusable values."""
        def bad(key: str, problem: str) -> IrcrError:
            return IrcrError(f"{where}: model.{key} {problem}")

        check_ranges(self, where, "model.")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise bad("trainable_layers", f"must be in 0..5 or null, got {self.trainable_layers}")
        if len(self.tiny_channels) != 4 or any(c < 1 for c in self.tiny_channels):
            raise bad("tiny_channels", "must be 4 positive integers, got "
                      f"{short_repr(self.tiny_channels)}")
        for key in ("fpn_channels", "max_size", "box_representation", "mask_channels",
                    "crc_channels", "box_detections_per_img", "rpn_batch_size_per_image",
                    "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
                    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                    "rpn_post_nms_top_n_test", "crc_min_pixels"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if not self.min_size or any(s < 1 for s in self.min_size):
            raise bad("min_size", f"must be a non-empty list of positive sizes, got "
                      f"{short_repr(self.min_size)}")
        if len(self.anchor_sizes) != 5 or any(s <= 0 for s in self.anchor_sizes):
            raise bad("anchor_sizes", f"must be 5 positive sizes (one per FPN level), "
                      f"got {short_repr(self.anchor_sizes)}")
        if not self.anchor_ratios or any(r <= 0 for r in self.anchor_ratios):
            raise bad("anchor_ratios", f"must be positive, got {short_repr(self.anchor_ratios)}")
        for key in ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh",
                    "rpn_positive_fraction", "box_positive_fraction", "box_fg_iou_thresh",
                    "box_bg_iou_thresh", "box_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, f"must be in [0, 1], got {getattr(self, key)}")
        self._validate_head(bad)

    def _validate_head(self, bad: Callable[[str, str], IrcrError]) -> None:
        branches = self.mask_branches
        unknown = [b for b in branches if b not in MASK_BRANCHES]
        if unknown or not branches or len(set(branches)) != len(branches):
            raise bad("mask_branches", f"must be a non-empty subset of {list(MASK_BRANCHES)} "
                      f"without repeats, got {short_repr(branches)}")
        if self.lrd_boundary_weight < 0:
            raise bad("lrd_boundary_weight", f"must be >= 0, got {self.lrd_boundary_weight}")
        if self.crc_tau_hard <= 0 or self.crc_tau_easy <= 0:
            raise bad("crc_tau_hard", "and crc_tau_easy must be > 0")
        if self.crc_band < 0:
            raise bad("crc_band", f"must be >= 0, got {self.crc_band}")
        if not 0.0 < self.crc_alpha <= 1.0:
            raise bad("crc_alpha", f"must be in (0, 1], got {self.crc_alpha}")
        if self.crc_weight < 0:
            raise bad("crc_weight", f"must be >= 0, got {self.crc_weight}")

    @property
    def frozen_norm(self) -> bool:
        """True when the backbone BatchNorm layers keep fixed statistics."""
        if self.norm == "auto":
            return self.backbone_weights is not None
        return self.norm == "frozen"

    @property
    def n_trainable_layers(self) -> int:
        """ResNet stages left trainable (resolves ``trainable_layers: null``)."""
        if self.trainable_layers is not None:
            return self.trainable_layers
        return 3 if self.backbone_weights is not None else 5
