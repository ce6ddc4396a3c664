"""Test-time augmentation for a detector (BASS pseudo-labels, reference §7.2).

A *detector* is any callable ``image (H, W, 3) uint8 -> {"boxes" (K, 4) xyxy pixel edges,
"scores" (K,), "masks" (K, H, W) or (K, 1, H, W) probabilities pasted at image size}``.

Views: the image itself, optionally its horizontal flip, at each scale in ``scales``
(bilinear resize; boxes and masks are mapped back to the original frame exactly).

Merging (our choice; the reference re-runs mmdetection's heads on every view, which a
black-box detector cannot): **score-weighted voting over clusters**. All mapped-back
detections are sorted by score; the best unassigned one opens a cluster that takes, from
every *other* view, its best unassigned detection with box IoU >= ``iou``. A cluster becomes
one detection with

* score = (sum of its members' scores) / (number of views): a nucleus seen in every view
  keeps its mean score, one seen in a single view out of V is divided by V (agreement
  counts, as in box voting);
* box = score-weighted mean of the members' boxes; mask = mean of the members' masks.

With a single view the detector's output is returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ircr.errors import IrcrError

__all__ = ["TTAConfig", "Detector", "as_detections", "detect_tta", "box_iou"]

Detector = Callable[[np.ndarray], dict[str, Any]]


@dataclass
class TTAConfig:
    """Views: optional horizontal flip x scales; ``iou``: cluster threshold of the vote."""

    hflip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    iou: float = 0.5

    def check(self, where: str = "tta") -> TTAConfig:
        """Validate; raises a one-line IrcrError naming ``where``."""
        if not self.scales or any(not 0.25 <= float(s) <= 4.0 for s in self.scales):
            raise IrcrError(f"{where}.scales: need one or more scales in [0.25, 4], "
                            f"got {self.scales}")
        if not 0.0 < float(self.iou) <= 1.0:
            raise IrcrError(f"{where}.iou: must be in (0, 1], got {self.iou}")
        return self

    @property
    def n_views(self) -> int:
        """Number of views (scales x (1 + hflip))."""
        return len(self.scales) * (2 if self.hflip else 1)


def as_detections(det: dict[str, Any], shape: tuple[int, int], where: str = "detector"
                  ) -> dict[str, np.ndarray]:
    """Detector output (numpy or torch) -> numpy boxes (K, 4) f32, scores (K,) f32,
    masks (K, H, W) f32; a one-line IrcrError when it does not fit the image."""
    try:
        out = {k: np.asarray(det[k].detach().cpu().numpy() if hasattr(det[k], "detach")
                             else det[k], np.float32) for k in ("boxes", "scores", "masks")}
    except KeyError as exc:
        raise IrcrError(f"{where}: output lacks '{exc.args[0]}'") from None
    k = out["scores"].reshape(-1).shape[0]
    out["scores"] = out["scores"].reshape(-1)
    out["boxes"] = out["boxes"].reshape(k, 4) if out["boxes"].size == 4 * k else out["boxes"]
    m = out["masks"]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if k == 0:
        m = np.zeros((0, *shape), np.float32)
    if out["boxes"].shape != (k, 4) or m.shape != (k, *shape):
        raise IrcrError(f"{where}: expected boxes ({k}, 4) and masks ({k}, {shape[0]}, "
                        f"{shape[1]}), got {out['boxes'].shape} and {m.shape}")
    out["masks"] = m
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _view(detect: Detector, image: np.ndarray, scale: float, flip: bool
          ) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    img = image[:, ::-1] if flip else image
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if (sh, sw) != (h, w):
        img = cv2.resize(np.ascontiguousarray(img), (sw, sh), interpolation=cv2.INTER_LINEAR)
    det = as_detections(detect(np.ascontiguousarray(img)), (sh, sw))
    boxes = det["boxes"] * np.array([w / sw, h / sh, w / sw, h / sh], np.float32)
    masks = det["masks"]
    if (sh, sw) != (h, w) and len(masks):
        masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in masks])
    if flip:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        masks = masks[:, :, ::-1]
    return {"boxes": boxes, "scores": det["scores"], "masks": np.ascontiguousarray(masks)}


def _vote(views: Sequence[dict[str, np.ndarray]], iou: float, shape: tuple[int, int]
          ) -> dict[str, np.ndarray]:
    boxes = np.concatenate([v["boxes"] for v in views]).reshape(-1, 4)
    scores = np.concatenate([v["scores"] for v in views])
    view_of = np.concatenate([np.full(len(v["scores"]), i) for i, v in enumerate(views)])
    masks = np.concatenate([v["masks"] for v in views]).reshape(-1, *shape)
    order = np.argsort(-scores, kind="stable")
    free = np.ones(len(scores), bool)
    ious = box_iou(boxes, boxes)
    out_b, out_s, out_m = [], [], []
    for i in order:
        if not free[i]:
            continue
        members = [int(i)]
        free[i] = False
        for v in range(len(views)):
            if v == view_of[i]:
                continue
            cand = np.flatnonzero(free & (view_of == v) & (ious[i] >= iou))
            if cand.size:
                j = int(cand[np.argmax(scores[cand])])
                members.append(j)
                free[j] = False
        s = scores[members]
        out_s.append(s.sum() / len(views))
        out_b.append((boxes[members] * s[:, None]).sum(0) / max(float(s.sum()), 1e-12))
        out_m.append(masks[members].mean(0))
    if not out_s:
        return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "masks": np.zeros((0, *shape), np.float32)}
    return {"boxes": np.stack(out_b).astype(np.float32),
            "scores": np.asarray(out_s, np.float32), "masks": np.stack(out_m).astype(np.float32)}


def detect_tta(detect: Detector, image: np.ndarray, cfg: TTAConfig | None = None
               ) -> dict[str, np.ndarray]:
    """Detections of ``image`` merged over the views of ``cfg`` (see the module docstring)."""
    c = (cfg or TTAConfig()).check()
    shape = (int(image.shape[0]), int(image.shape[1]))
    flips = [False, True] if c.hflip else [False]
    views = [_view(detect, image, float(s), f) for s in c.scales for f in flips]
    if len(views) == 1:
        return views[0]
    return _vote(views, float(c.iou), shape)
