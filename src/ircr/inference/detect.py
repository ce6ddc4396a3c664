"""Tiled instance detection (Mask R-CNN): image -> detections -> instance map, seam-exact.

A detector sees the image in ``window`` x ``window`` windows (the training patch size, so the
network's own resizing, e.g. 256 -> 800 px, is the one it was trained with); images smaller
than a window are reflect-padded at the bottom/right. Windows start every
``window - overlap`` px (the last one flush with the image end).

Responsible-window rule: along each axis the windows' **cores** partition the image, the
boundary between two neighbours lying in the middle of their overlap. A detection belongs to
the window whose core holds its **box centre** (image coordinates); detections centred
elsewhere (a neighbour's nucleus, a nucleus cut by the window edge, a mirrored one in the
padding) are only used to resolve overlaps. A nucleus whose box reaches at most
``overlap // 2`` px beyond its centre's core lies whole in its window, so every nucleus is
found once, neither lost nor doubled at the seams.

Painting (:func:`paint_tiled`) runs :func:`ircr.postproc.detections.paint_detections` per
window on all of that window's detections (score wins overlaps, thresholds, fragments, min
area, dilation as in :class:`~ircr.postproc.detections.PaintParams`), then pastes the instances
of the responsible detections into the image map, taking only pixels still free (windows in
raster order), so instances never overlap.

Foreground probability (the ``prob`` of a prediction): per pixel the maximum over the
detections of its core's window of ``score x mask probability`` (our definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.inference.device import AmpSetting, amp_dtype, autocast, eval_mode
from ircr.postproc.detections import PaintParams, paint_detections

__all__ = ["Window", "TiledDetections", "detection_windows", "predict_detections",
           "paint_tiled"]


@dataclass(frozen=True)
class Window:
    """One window: top-left (y, x) in the (padded) image and its core (y0, x0, y1, x1)."""

    y: int
    x: int
    core: tuple[int, int, int, int]


@dataclass
class TiledDetections:
    """Detections of one image in image coordinates (K detections over all windows).

    ``crops[k]`` is detection k's mask probability inside ``crop_boxes[k]`` = (y0, x0, y1, x1)
    in its window's coordinates (the pasted mask is 0 outside it).
    """

    shape: tuple[int, int]
    window: int
    windows: list[Window]
    boxes: np.ndarray                       # (K, 4) float32 xyxy, image coordinates
    scores: np.ndarray                      # (K,) float32
    win_index: np.ndarray                   # (K,) int64
    responsible: np.ndarray                 # (K,) bool
    crop_boxes: np.ndarray                  # (K, 4) int64
    crops: list[np.ndarray] = field(default_factory=list)


def _axis(size: int, padded: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, core start, core end) of the windows along one axis."""
    step = window - overlap
    starts = list(range(0, padded - window + 1, step))
    if starts[-1] + window < padded:
        starts.append(padded - window)
    bounds = [0] + [(a + b + window) // 2 for a, b in zip(starts, starts[1:])] + [size]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def detection_windows(height: int, width: int, window: int, overlap: int) -> list[Window]:
    """Windows (raster order) covering an image of ``height`` x ``width`` px; cores partition it."""
    if window < 1 or not 0 <= overlap < window:
        raise IrcrError(f"inference: need window >= 1 and 0 <= overlap < window, got window "
                        f"{window}, overlap {overlap}")
    ys = _axis(height, max(height, window), window, overlap)
    xs = _axis(width, max(width, window), window, overlap)
    return [Window(y, x, (cy0, cx0, cy1, cx1)) for y, cy0, cy1 in ys for x, cx0, cx1 in xs]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise IrcrError(f"image: expected an (H, W, 3) RGB array, got shape "
                        f"{getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        raise IrcrError(f"image: expected uint8 RGB, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise IrcrError(f"image: empty image {image.shape}")


def _pad(image: np.ndarray, window: int) -> np.ndarray:
    h, w = image.shape[:2]
    pad = ((0, max(0, window - h)), (0, max(0, window - w)), (0, 0))
    if pad[0][1] == 0 and pad[1][1] == 0:
        return image
    return np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")


def _crop_box(box: np.ndarray, window: int) -> tuple[int, int, int, int]:
    """Window-coordinate region holding a pasted mask (its box + the paste's expansion)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    m = 2 + math.ceil(0.05 * max(x1 - x0, y1 - y0))
    return (max(0, math.floor(y0) - m), max(0, math.floor(x0) - m),
            min(window, math.ceil(y1) + m), min(window, math.ceil(x1) + m))


class _Collector:
    """Accumulates per-window detector outputs into :class:`TiledDetections` + prob."""

    def __init__(self, shape: tuple[int, int], window: int, windows: list[Window]) -> None:
        self.shape, self.window, self.windows = shape, window, windows
        self.prob = np.zeros(shape, np.float32)
        self.rows: list[tuple[np.ndarray, float, int, bool, tuple[int, int, int, int]]] = []
        self.crops: list[np.ndarray] = []

    def add(self, wi: int, det: dict[str, torch.Tensor]) -> None:
        win = self.windows[wi]
        boxes = det["boxes"].float().cpu().numpy().reshape(-1, 4)
        scores = det["scores"].float().cpu().numpy().reshape(-1)
        masks = det["masks"].float().cpu().numpy().reshape(-1, self.window, self.window)
        cy0, cx0, cy1, cx1 = win.core
        if len(scores):
            best = (scores[:, None, None] * masks).max(axis=0)
            self.prob[cy0:cy1, cx0:cx1] = best[cy0 - win.y:cy1 - win.y, cx0 - win.x:cx1 - win.x]
        for box, score, mask in zip(boxes, scores, masks):
            img_box = box + np.array([win.x, win.y, win.x, win.y], np.float32)
            cx, cy = (img_box[0] + img_box[2]) / 2, (img_box[1] + img_box[3]) / 2
            resp = bool(cy0 <= cy < cy1 and cx0 <= cx < cx1)
            cb = _crop_box(box, self.window)
            self.rows.append((img_box, float(score), wi, resp, cb))
            self.crops.append(mask[cb[0]:cb[2], cb[1]:cb[3]].copy())

    def result(self) -> TiledDetections:
        k = len(self.rows)
        return TiledDetections(
            shape=self.shape, window=self.window, windows=self.windows,
            boxes=np.array([r[0] for r in self.rows], np.float32).reshape(k, 4),
            scores=np.array([r[1] for r in self.rows], np.float32),
            win_index=np.array([r[2] for r in self.rows], np.int64),
            responsible=np.array([r[3] for r in self.rows], bool),
            crop_boxes=np.array([r[4] for r in self.rows], np.int64).reshape(k, 4),
            crops=self.crops,
        )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def predict_detections(
    model: nn.Module, image: np.ndarray, window: int = 256, overlap: int = 64,
    batch_size: int = 8, device: str | torch.device | None = None, amp: AmpSetting = False,
) -> tuple[TiledDetections, np.ndarray]:
    """Run a detector over ``image`` window by window.

    Args:
        model: eval-mode callable on a list of (3, h, w) float 0..255 tensors returning
            ``[{boxes, scores, masks (K, 1, h, w)}]`` (e.g. :class:`BassMaskRCNN`).
        image: (H, W, 3) uint8 RGB.
        window, overlap, batch_size, device, amp: the inference setting.

    Returns:
        The detections and the (H, W) float32 foreground probability.
    """
    _check_image(image)
    h, w = image.shape[:2]
    windows = detection_windows(h, w, window, overlap)
    dev = _model_device(model) if device is None else torch.device(device)
    if device is not None:
        model.to(dev)
    padded = _pad(image, window)
    acc = _Collector((h, w), window, windows)
    with eval_mode(model):
        for b0 in range(0, len(windows), max(1, batch_size)):
            idx = list(range(b0, min(len(windows), b0 + max(1, batch_size))))
            tiles = [torch.from_numpy(np.ascontiguousarray(
                padded[windows[i].y:windows[i].y + window, windows[i].x:windows[i].x + window]))
                .to(dev).permute(2, 0, 1).float() for i in idx]
            with autocast(dev, amp_dtype(amp, dev)):
                out = model(tiles)
            for i, det in zip(idx, out):
                acc.add(i, det)
    return acc.result(), acc.prob


def paint_tiled(dets: TiledDetections, params: PaintParams | None = None) -> np.ndarray:
    """Instance map (H, W) int32 of the responsible detections (see the module docstring)."""
    p = (params or PaintParams()).check("postproc")
    h, w = dets.shape
    inst = np.zeros((h, w), np.int32)
    next_id = 1
    for wi, win in enumerate(dets.windows):
        sel = np.flatnonzero(dets.win_index == wi)
        if not dets.responsible[sel].any():
            continue
        masks = np.zeros((len(sel), dets.window, dets.window), np.float32)
        for j, k in enumerate(sel):
            y0, x0, y1, x1 = dets.crop_boxes[k]
            masks[j, y0:y1, x0:x1] = dets.crops[k]
        painted = paint_detections(dets.scores[sel], masks, p, shape=(dets.window,) * 2)
        lut = np.zeros(len(painted.source) + 1, np.int32)
        for pid, src in enumerate(painted.source, start=1):
            if dets.responsible[sel[src]]:
                lut[pid] = next_id
                next_id += 1
        lh, lw = min(dets.window, h - win.y), min(dets.window, w - win.x)
        new = lut[painted.inst[:lh, :lw]]
        target = inst[win.y:win.y + lh, win.x:win.x + lw]
        take = (new > 0) & (target == 0)
        target[take] = new[take]
    return inst
