"""BASS Mask R-CNN throughput: training iteration and inference, at 256 px and upscaled 800 px.

Usage::

    python benchmarks/bench_bass.py                               # CPU (CUDA too when present)
    python benchmarks/bench_bass.py --device cuda --iters 20 --batch 2
    python benchmarks/bench_bass.py --device cpu --iters 1 --threads 1 --sizes 256 800

Each row builds ``BassMaskRCNN`` (ResNet-50-FPN unless ``--backbone``; random init, nothing
downloaded) with ``min_size = max_size = size``: 256 = the patch at its own size, 800 = the
released BASS configuration (a 256 px patch upscaled to 800 px). Inputs are synthetic 256 px
H&E-like patches (``ircr.data.synthetic.make_tile``) with their exact instance masks as
targets. A training iteration is forward + loss + backward + SGD step (lr 0.02, momentum 0.9,
as the paper); inference is an eval forward returning pasted masks. Both the BASS head
(NMH + LRD + CRC) and the plain Mask R-CNN head (``[nmh]``, the teacher) are timed. Peak memory
is ``torch.cuda.max_memory_allocated`` on CUDA, the process peak RSS on CPU. CPU s = process
CPU time (all threads), less sensitive than wall time to other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from ircr.config import from_dict
from ircr.data.detection import detection_targets
from ircr.data.synthetic import make_tile
from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn, total_loss

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def _batch(n: int, device: torch.device) -> Batch:
    images, targets = [], []
    for i in range(n):
        img, inst = make_tile(np.random.default_rng(i), 256)
        t = detection_targets(inst)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float().to(device))
        targets.append({k: torch.from_numpy(t[k]).to(device)
                        for k in ("boxes", "labels", "masks")})
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _time(fn: Callable[[], None], iters: int, device: torch.device) -> tuple[float, float]:
    """(wall s, process CPU s) per call after one warm-up call."""
    fn()  # warm-up
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def bench(size: int, head: list[str], args: argparse.Namespace, device: torch.device) -> list[str]:
    """One table row: train s/it, inference patches/s, peak memory."""
    cfg = from_dict(MaskRCNNConfig, {"backbone": args.backbone, "min_size": [size],
                                     "max_size": size, "mask_branches": head})
    torch.manual_seed(0)
    model = build_maskrcnn(cfg).to(device)
    images, targets = _batch(args.batch, device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02,
                          momentum=0.9, weight_decay=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        model.train()
        loss = total_loss(model(images, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(images)

    t_train, c_train = _time(step, args.iters, device)
    t_inf, c_inf = _time(infer, args.iters, device)
    name = "+".join(head).upper()
    return [f"{args.backbone} {name}", f"256 -> {size}", f"{t_train:.2f}", f"{c_train:.2f}",
            f"{args.batch / t_train:.3f}", f"{args.batch / t_inf:.3f}",
            f"{c_inf / args.batch:.2f}", f"{_peak_mb(device):,.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 800])
    ap.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet18", "tiny"])
    ap.add_argument("--heads", nargs="+", default=["bass", "plain"], choices=["bass", "plain"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
               if args.device == "auto" else [args.device])
    heads = {"bass": ["nmh", "lrd", "crc"], "plain": ["nmh"]}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), batch {args.batch}, {args.iters} timed iteration(s)\n")
    print("| device | model | patch -> network px | train s/it | train CPU s/it "
          "| train patches/s | infer patches/s | infer CPU s/patch | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dev in devices:
        device = torch.device(dev)
        for size in args.sizes:
            for h in args.heads:
                row = bench(size, heads[h], args, device)
                print("| " + " | ".join([dev, *row]) + " |", flush=True)


if __name__ == "__main__":
    main()
