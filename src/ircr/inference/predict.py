"""Sliding-window HoVer-Net inference: image -> (NP probability, HV maps).

The image is reflect-padded (a margin of ``overlap // 2`` for context plus whatever is needed
to tile it), cut into ``window`` x ``window`` tiles with ``overlap`` pixels of overlap, run in
batches in eval mode under ``torch.inference_mode``, and blended with a separable raised-cosine
weight (ramps of ``overlap`` px at each tile edge, 1 inside; adjacent ramps sum to 1) before
cropping back to the image.

A window never exceeds the padded image: along an axis where the image plus its context margin
fits in one window, that window shrinks to the padded extent (rounded up to a multiple of 8),
so a large ``window`` (the packaged model's 1280 px: one pass per 1024 px slide tile) costs
no padding on smaller images. Images at least one window wide are tiled exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ircr.errors import IrcrError
from ircr.inference.compiled import compiled
from ircr.inference.device import AmpSetting, amp_dtype, autocast, eval_mode

STRIDE_MULTIPLE = 8
# sane upper bounds of a sliding-window setting, checked before anything is allocated
MAX_WINDOW = 4096  # px (the default is 256)
MAX_BATCH = 1024  # windows per forward pass
MAX_BATCH_PIXELS = 2**26  # window^2 x batch_size: 0.75 GiB of float32 input alone at the cap


def window_size_problem(window: int, batch_size: int) -> tuple[str, str] | None:
    """(key, problem) when ``window``/``batch_size`` exceed the bounds above, else None.

    The memory estimate (window^2 x batch_size x 3 float32 input values per batch; the
    network's activations are a multiple of it) is made before anything is allocated.
    """
    if window > MAX_WINDOW:
        return "window", f"must be <= {MAX_WINDOW}, got {window}"
    if batch_size > MAX_BATCH:
        return "batch_size", f"must be <= {MAX_BATCH}, got {batch_size}"
    pixels = window * window * batch_size
    if pixels > MAX_BATCH_PIXELS:
        gib = pixels * 3 * 4 / 2**30
        return "batch_size", (f"{batch_size} windows of {window} x {window} px need "
                              f"{gib:.1f} GiB per batch for the input alone (at most "
                              f"{MAX_BATCH_PIXELS} px per batch); lower batch_size or window")
    return None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _ramp(window: int, overlap: int) -> np.ndarray:
    """(window,) float64 1-D weight: raised-cosine ramps of ``overlap`` px, 1 inside."""
    w = np.ones(window, dtype=np.float64)
    n = min(overlap, window // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
        w[:n] = ramp
        w[window - n :] = ramp[::-1]
    return w


def blend_weight(window: int, overlap: int, width: int | None = None) -> np.ndarray:
    """(window, width or window) float32 separable weight: raised-cosine ramps of ``overlap``.

    Every value is > 0; for ``overlap <= window / 2`` the ramps of two adjacent tiles sum to
    exactly 1 (larger overlaps use ramps of window/2 px; the result is normalised anyway).
    """
    wx = _ramp(window if width is None else width, overlap)
    return np.outer(_ramp(window, overlap), wx).astype(np.float32)


def fitted_window(size: int, window: int) -> int:
    """Window length along an axis of padded extent ``size``: ``window``, or less when the
    whole extent fits in one window (then ``size`` rounded up to a multiple of 8)."""
    if size >= window:
        return window
    return -(-size // STRIDE_MULTIPLE) * STRIDE_MULTIPLE


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise IrcrError(f"{name}: expected an (H, W, 3) RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise IrcrError(f"{name}: expected uint8 RGB, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise IrcrError(f"{name}: empty image {image.shape}")


def _check_window(window: int, overlap: int, batch_size: int) -> None:
    if window <= 0 or window % STRIDE_MULTIPLE:
        raise IrcrError(f"inference: window must be a positive multiple of 8, got {window}")
    if not 0 <= overlap < window:
        raise IrcrError(f"inference: overlap must be in [0, window), got {overlap}")
    if batch_size < 1:
        raise IrcrError(f"inference: batch_size must be >= 1, got {batch_size}")
    too_big = window_size_problem(window, batch_size)
    if too_big is not None:
        raise IrcrError(f"inference: {too_big[0]} {too_big[1]}")


def _tile_starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts covering ``size`` (already padded to (n-1)*stride + window)."""
    n = 1 if size <= window else math.ceil((size - window) / stride) + 1
    return [i * stride for i in range(n)]


def _forward(
    model: nn.Module, batch: np.ndarray, device: torch.device, amp: AmpSetting
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) uint8 -> prob (B, H, W), hv (B, 2, H, W) float32 numpy."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    x = x.permute(0, 3, 1, 2).float()
    with autocast(device, amp_dtype(amp, device)):
        out = model(x)
    prob = torch.softmax(out["np"].float(), dim=1)[:, 1]
    hv = out["hv"].float()
    return prob.cpu().numpy(), hv.cpu().numpy()


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return _model_device(model)
    dev = torch.device(device)
    model.to(dev)
    return dev


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array on ``device``: through pinned memory without blocking to CUDA."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _blend_on_device(run: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                     padded: np.ndarray, starts: list[tuple[int, int]],
                     window: tuple[int, int],
                     weight: np.ndarray, batch_size: int, device: torch.device,
                     amp: AmpSetting, pad_batches: bool = False) -> torch.Tensor:
    """Every window through ``run``, blended on the device -> (3, ph, pw) (prob, hv x, hv y).

    Same arithmetic, in the same order, as host blending (float32 products then sums).
    ``pad_batches`` fills the last batch with blank windows (static shapes for compiled
    graphs; their outputs are dropped).
    """
    ph, pw = padded.shape[:2]
    wy, wx = window
    img = _to_device(padded, device)
    wt = _to_device(weight, device)
    acc = torch.zeros((3, ph, pw), dtype=torch.float32, device=device)
    norm = torch.zeros((ph, pw), dtype=torch.float32, device=device)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        tiles = torch.stack([img[y : y + wy, x : x + wx] for y, x in chunk])
        if pad_batches and len(chunk) < batch_size:
            tiles = torch.cat([tiles, tiles.new_zeros((batch_size - len(chunk),
                                                       *tiles.shape[1:]))])
        with autocast(device, amp_dtype(amp, device)):
            out = run(tiles.permute(0, 3, 1, 2).float())
        prob = torch.softmax(out["np"].float(), dim=1)[:, 1]
        hv = out["hv"].float()
        for j, (y, x) in enumerate(chunk):
            acc[0, y : y + wy, x : x + wx] += prob[j] * wt
            acc[1:, y : y + wy, x : x + wx] += hv[j] * wt
            norm[y : y + wy, x : x + wx] += wt
    return acc / norm


class MapsFuture:
    """(prob, hv) still being computed on the device; :meth:`result` waits for them.

    On CUDA the copy back is queued at once (pinned memory, non-blocking) right behind the
    image's own work, with an event; ``result`` (any thread) waits only for that event, so
    the thread that queued it can queue the next image meanwhile.
    """

    def __init__(self, maps: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if maps.device.type == "cuda":
            self._host = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
            self._host.copy_(maps, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = maps

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """prob (H, W) float32 and hv (2, H, W) float32."""
        if self._event is not None:
            self._event.synchronize()
        arr = self._host.numpy()
        return np.ascontiguousarray(arr[0]), np.ascontiguousarray(arr[1:])


def predict_maps(model: nn.Module, image: np.ndarray, window: int = 256, overlap: int = 64,
                 batch_size: int = 8, device: str | torch.device | None = None,
                 amp: AmpSetting = False, channels_last: bool = False,
                 compile: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window NP/HV prediction for one image of any size (:func:`launch_maps`).

    Returns:
        prob (H, W) float32 in [0, 1] (softmax channel 1) and hv (2, H, W) float32.
    """
    return launch_maps(model, image, window, overlap, batch_size, device, amp,
                       channels_last, compile).result()


def launch_maps(
    model: nn.Module,
    image: np.ndarray,
    window: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: AmpSetting = False,
    channels_last: bool = False,
    compile: bool = False,
) -> MapsFuture:
    """Queue the sliding-window NP/HV prediction of one image; :meth:`MapsFuture.result`.

    The image goes to the device once (pinned, non-blocking on CUDA); windows are cut,
    run and blended there, and the maps come back with one copy at the end, so the loop never
    waits for the device. The result equals the per-batch host blending it replaced bit for
    bit (tests/test_inference_speed.py).

    Args:
        model: HoVerNet-like module returning {"np": logits, "hv": maps} (moved to ``device``
            when one is given; otherwise the model's own device is used).
        image: (H, W, 3) uint8 RGB.
        window: tile size (multiple of 8); overlap: pixels shared by adjacent tiles (< window).
        batch_size: tiles per forward pass; amp: autocast setting (True: bf16, fp16 on CUDA
            without bf16; see :func:`ircr.inference.device.amp_dtype`).
        channels_last: convert the model to channels_last memory format (faster convolutions
            on recent GPUs; the model is converted in place).
        compile: run the network through ``torch.compile`` (cached per model; a compile
            failure is reported once and the eager network runs; :mod:`ircr.inference.compiled`).

    Returns:
        a :class:`MapsFuture` of prob (H, W) float32 in [0, 1] (softmax channel 1) and hv
        (2, H, W) float32.
    """
    _check_image(image)
    _check_window(window, overlap, batch_size)
    dev = _resolve_device(model, device)
    h, w = image.shape[:2]
    stride = window - overlap
    margin = overlap // 2
    wy, wx = fitted_window(h + 2 * margin, window), fitted_window(w + 2 * margin, window)
    ys = _tile_starts(h + 2 * margin, wy, stride)
    xs = _tile_starts(w + 2 * margin, wx, stride)
    ph, pw = ys[-1] + wy, xs[-1] + wx
    pads = ((margin, ph - h - margin), (margin, pw - w - margin), (0, 0))
    padded = np.pad(image, pads, mode="reflect")
    starts = [(y, x) for y in ys for x in xs]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    run = compiled(model) if compile else model
    with eval_mode(model):
        acc = _blend_on_device(run, padded, starts, (wy, wx), blend_weight(wy, overlap, wx),
                               batch_size, dev, amp, pad_batches=compile)
        return MapsFuture(acc[:, margin : margin + h, margin : margin + w])


def predict_batch(
    model: nn.Module,
    patches: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: AmpSetting = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-patch prediction (no tiling) for a stack of equally sized patches.

    Args:
        patches: (N, H, W, 3) uint8; H, W that are not multiples of 8 are reflect-padded and
            the outputs cropped back.

    Returns:
        probs (N, H, W) float32 and hvs (N, 2, H, W) float32.
    """
    if not isinstance(patches, np.ndarray) or patches.ndim != 4 or patches.shape[3] != 3:
        shape = getattr(patches, "shape", None)
        raise IrcrError(f"patches: expected (N, H, W, 3), got shape {shape}")
    if patches.dtype != np.uint8:
        raise IrcrError(f"patches: expected uint8 RGB, got dtype {patches.dtype}")
    if batch_size < 1:
        raise IrcrError(f"inference: batch_size must be >= 1, got {batch_size}")
    dev = _resolve_device(model, device)
    n, h, w = patches.shape[:3]
    ph, pw = -(-h // STRIDE_MULTIPLE) * STRIDE_MULTIPLE, -(-w // STRIDE_MULTIPLE) * STRIDE_MULTIPLE
    if (ph, pw) != (h, w):
        patches = np.pad(patches, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    probs = np.zeros((n, h, w), dtype=np.float32)
    hvs = np.zeros((n, 2, h, w), dtype=np.float32)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            prob, hv = _forward(model, patches[i : i + batch_size], dev, amp)
            probs[i : i + batch_size] = prob[:, :h, :w]
            hvs[i : i + batch_size] = hv[:, :, :h, :w]
    return probs, hvs
