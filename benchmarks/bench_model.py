"""Model throughput: forward and training-step speed, FLOPs and peak memory of HoVer-Net.

Usage::

    python benchmarks/bench_model.py                      # CPU, and CUDA when present
    python benchmarks/bench_model.py --device cuda --iters 20
    python benchmarks/bench_model.py --device cpu --iters 2 --width 0.25
    python benchmarks/bench_model.py --device cpu --lite --batch 8 --size 128 --threads 2 \
        --memory-format both     # the packaged model's training step, NCHW vs channels_last

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
(forward; forward + backward for a training step), so the achieved TFLOP/s are exact-count
FLOPs divided by measured time. On CUDA both passes run under bf16 autocast. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ircr.losses import hovernet_loss
from ircr.models import HoVerNet, ModelConfig, build_model
from ircr.train.memory_format import apply_channels_last


def count_flops(cfg: ModelConfig, batch: int, size: int) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) for one batch, counted on the meta device."""
    with torch.device("meta"):
        model = HoVerNet(cfg)
        x = torch.zeros(batch, 3, size, size)
    with FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as both:
        out = model(x)
        sum(v.float().sum() for v in out.values()).backward()  # type: ignore[union-attr]
    return fwd.get_total_flops(), both.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20


def _time(step: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds per call after one warm-up call."""
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_device(cfg: ModelConfig, device: torch.device, batch: int, size: int, iters: int,
                 channels_last: bool = False) -> dict:
    """Measure forward and training-step speed and peak memory on one device
    (``channels_last``: the network as ``train.channels_last`` runs it)."""
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained=False).to(device)
    if channels_last:
        apply_channels_last(model)
    x = torch.rand(batch, 3, size, size, device=device) * 255
    np_t = (torch.rand(batch, size, size, device=device) > 0.7).long()
    hv_t = torch.rand(batch, 2, size, size, device=device) * 2 - 1
    amp = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    model.eval()
    t_fwd = _time(forward, iters, device)
    mem_fwd = _peak_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with autocast:
            out = model(x)
        loss, _ = hovernet_loss(out, np_t, hv_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t_train = _time(train_step, iters, device)
    return {"t_fwd": t_fwd, "t_train": t_train, "mem_fwd": mem_fwd, "mem_train": _peak_mb(device)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) + " (bf16 autocast)"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads, fp32"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu + cuda if present)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = paper)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--lite", action="store_true",
                    help="the packaged model's network (width 0.25, blocks 2-2-2-2, decoder 4-2)")
    ap.add_argument("--memory-format", choices=("nchw", "channels_last", "both"), default="nchw")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    cfg = (ModelConfig(width=0.25, blocks=[2, 2, 2, 2], decoder_units=[4, 2]) if args.lite
           else ModelConfig(width=args.width))
    formats = ["nchw", "channels_last"] if args.memory_format == "both" else [args.memory_format]
    n_params = sum(p.numel() for p in HoVerNet(cfg).parameters())
    fwd_flops, train_flops = count_flops(cfg, args.batch, args.size)
    print(f"HoVer-Net width {cfg.width}, blocks {cfg.blocks}, decoder {cfg.decoder_units}: "
          f"{n_params / 1e6:.2f} M parameters, "
          f"{fwd_flops / args.batch / 1e12:.4f} TFLOP per {args.size}x{args.size} forward, "
          f"{train_flops / args.batch / 1e12:.4f} TFLOP per patch fwd+bwd; "
          f"batch {args.batch}, {args.iters} timed iterations; torch {torch.__version__}")
    print()
    print("| device | layout | pass | it/s | patches/s | ms/it | TFLOP/s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in devices:
        device = torch.device(name)
        for layout in formats:
            r = bench_device(cfg, device, args.batch, args.size, args.iters,
                             channels_last=layout == "channels_last")
            label = device_name(device)
            for pass_name, t, flops, mem in (
                ("forward", r["t_fwd"], fwd_flops, r["mem_fwd"]),
                ("train step", r["t_train"], train_flops, r["mem_train"]),
            ):
                print(f"| {label} | {layout} | {pass_name} | {1 / t:.3f} | "
                      f"{args.batch / t:.2f} | {t * 1e3:.0f} | {flops / t / 1e12:.3f} | "
                      f"{mem:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
