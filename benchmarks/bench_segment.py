"""Segmentation engine speed: seconds per megapixel (end to end and per stage) and peak RAM.

    .venv/bin/python benchmarks/bench_segment.py                      # tiny net, 2 slide sizes
    .venv/bin/python benchmarks/bench_segment.py --model paper --sizes 1024
    .venv/bin/python benchmarks/bench_segment.py --device cuda --model paper --sizes 4096 8192

Each run writes a synthetic pyramidal TIFF "slide" (0.25 µm/px; a tissue block of synthetic
H&E covering ``--tissue`` of the area, glass elsewhere; zlib-compressed, i.e. lossless with
tifffile's built-in codec, so no imagecodecs is needed) and runs the full ``ircr segment``
slide pipeline on it (tissue detection, network, WBIS, stitching, all five outputs) in a fresh
subprocess, so ``peak RSS`` is that run's own high-water mark. ``tiny`` is HoVer-Net width
0.125, blocks [1,1,1,1], trained 80 steps on synthetic tiles (so WBIS sees real-looking maps);
``paper`` is the full-size network (width 1, blocks [3,4,6,3]) with random weights: its
network time is representative, its post-processing time is not (random maps).
Without tiffslide/OpenSlide (or with ``--no-tiffslide``) the slide is read with tifffile alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from peak_memory import peak_rss_mib


def make_model(kind: str, folder: Path, steps: int = 80) -> None:
    """Write a model folder: 'tiny' (trained ``steps`` steps on synthetic tiles) or 'paper'."""
    import torch

    from ircr.data.synthetic import make_tile
    from ircr.data.targets import hover_targets
    from ircr.inference.model_folder import save_model_folder
    from ircr.losses import hovernet_loss
    from ircr.models import ModelConfig, build_model
    from ircr.postproc.watershed import WBISParams

    torch.manual_seed(0)
    cfg = (ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]) if kind == "tiny"
           else ModelConfig())
    model = build_model(cfg, load_pretrained=False)
    if kind == "tiny":
        rng = np.random.default_rng(0)
        tiles = [make_tile(rng, 256) for _ in range(min(8, max(1, steps)))]
        targets = [hover_targets(inst) for _, inst in tiles]
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            idx = rng.integers(0, len(tiles), 4)
            ys, xs = rng.integers(0, 160, 4), rng.integers(0, 160, 4)
            img = np.stack([tiles[k][0][y:y + 96, x:x + 96] for k, y, x in zip(idx, ys, xs)])
            npt = np.stack([targets[k][0][y:y + 96, x:x + 96] for k, y, x in zip(idx, ys, xs)])
            hv = np.stack([targets[k][1][:, y:y + 96, x:x + 96] for k, y, x in zip(idx, ys, xs)])
            out = model(torch.from_numpy(img).permute(0, 3, 1, 2).float())
            loss, _ = hovernet_loss(out, torch.from_numpy(npt).long(), torch.from_numpy(hv))
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_model_folder(folder, model, cfg, dataclasses.asdict(WBISParams()), mpp=0.25,
                      patch_size=256)


def make_slide(path: Path, size: int, tissue: float) -> None:
    """Square pyramidal TIFF at 0.25 µm/px with a centred synthetic tissue block.

    The block is tiled from four 512 px synthetic tiles (flipped / transposed per position, so
    neighbours differ) to keep an 8192 px slide quick to write; zlib compression (lossless,
    built into tifffile).
    """
    import tifffile

    from ircr.data.synthetic import make_tile

    img = np.full((size, size, 3), (243, 241, 246), np.uint8)
    side = int(size * tissue**0.5) // 8 * 8
    y0 = (size - side) // 2
    rng = np.random.default_rng(1)
    pool = [make_tile(rng, 512)[0] for _ in range(4)]
    k = 0
    for by in range(0, side, 512):
        for bx in range(0, side, 512):
            h, w = min(512, side - by), min(512, side - bx)
            t = pool[k % 4]
            t = t[::-1] if (k // 4) % 2 else t
            t = t.transpose(1, 0, 2) if (k // 8) % 2 else t
            img[y0 + by:y0 + by + h, y0 + bx:y0 + bx + w] = t[:h, :w]
            k += 1
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib",
            "compressionargs": {"level": 1}, "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        n = 0
        while size // 2 ** (n + 1) >= 512:
            n += 1
        tif.write(img, subifds=n, resolution=(4e4, 4e4), **opts)
        for k in range(1, n + 1):
            tif.write(img[:: 2**k, :: 2**k], subfiletype=1, resolution=(4e4 / 2**k,) * 2, **opts)


def worker(args: argparse.Namespace) -> None:
    """Run one slide in this process and print a JSON line."""
    import torch

    import ircr

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_tiffslide:
        sys.modules["tiffslide"] = None  # type: ignore[assignment]  # -> tifffile reader
        sys.modules["openslide"] = None  # type: ignore[assignment]
    seg = ircr.load_model(args.model_dir, device=args.device, batch_size=args.batch_size,
                          amp=args.amp, tile=args.tile)
    t0 = time.perf_counter()
    summary = seg.process(args.slide, args.out, tissue=True)
    wall = time.perf_counter() - t0
    rss = peak_rss_mib()  # this process's own VmHWM (not the parent's: peak_memory.py)
    from ircr.io.wsi import open_slide

    with open_slide(args.slide) as slide:
        backend = slide.backend
    print(json.dumps({"wall": wall, "summary": summary, "peak_rss_mib": rss,
                      "device": seg.describe(), "reader": backend}))


def parser() -> argparse.ArgumentParser:
    """Command-line options (also used by benchmarks/gpu_suite.py)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "paper"), default="tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096],
                    help="slide side lengths in px (0.25 µm/px)")
    ap.add_argument("--tissue", type=float, default=0.5, help="tissue fraction of the slide")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--no-tiffslide", action="store_true",
                    help="read the slide with tifffile alone (as without tiffslide/OpenSlide)")
    ap.add_argument("--train-steps", type=int, default=80, help="training steps of 'tiny'")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds allowed per slide run (0 = no limit)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return ap


def run(args: argparse.Namespace) -> list[tuple[int, dict]]:
    """Write the model and each slide, segment each in a subprocess; (size, result) rows.

    A slide whose run fails or passes ``args.timeout`` gives ``{"error": "..."}``.
    """
    rows: list[tuple[int, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(args.model, root / "model", args.train_steps)
        for size in args.sizes:
            slide = root / f"slide_{size}.tif"
            make_slide(slide, size, args.tissue)
            cmd = [sys.executable, __file__, "--worker", "--model-dir", str(root / "model"),
                   "--slide", str(slide), "--out", str(root / f"out_{size}"),
                   "--device", args.device, "--batch-size", str(args.batch_size),
                   "--tile", str(args.tile), "--threads", str(args.threads)]
            cmd += ["--amp"] if args.amp else []
            cmd += ["--no-tiffslide"] if args.no_tiffslide else []
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      timeout=args.timeout or None)
            except subprocess.TimeoutExpired:
                rows.append((size, {"error": f"timed out after {args.timeout:.0f} s"}))
                continue
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append((size, {"error": f"exit {proc.returncode}: {tail}"}))
                continue
            rows.append((size, json.loads(proc.stdout.strip().splitlines()[-1])))
    return rows


STAGES = ("read", "network", "network_wait", "postprocess", "stitch", "measure", "write",
          "labels_and_wait")


def table(rows: list[tuple[int, dict]]) -> list[str]:
    """Markdown table lines of :func:`run`'s rows."""
    lines = ["| slide px | reader | tissue mm² | tiles run/total | nuclei | s/MP of tissue tiles | "
             "s/mm² tissue | " + " | ".join(f"{s} s/MP" for s in STAGES) + " | peak RSS MiB |",
             "|" + "---|" * (8 + len(STAGES))]
    for size, res in rows:
        if "error" in res:
            lines.append(f"| {size}² | failed: {res['error']} |" + " |" * (7 + len(STAGES)))
            continue
        s = res["summary"]
        tiles = s.get("tiles", {"processed": 0, "total": 0, "processed_megapixels": 0.0})
        mp = max(1e-9, tiles["processed_megapixels"])  # the processed tiles' cores
        t = s["timings_s"]
        lines.append(
            f"| {size}² | {res.get('reader', '?')} | {s['tissue_area_mm2']:.3f} | "
            f"{tiles['processed']}/{tiles['total']} | {s['n_nuclei']} | "
            f"{res['wall'] / mp:.2f} | {res['wall'] / max(1e-9, s['tissue_area_mm2']):.2f} | "
            + " | ".join(f"{t.get(k, 0.0) / mp:.3f}" for k in STAGES)
            + f" | {res['peak_rss_mib']:.0f} |")
    return lines


def main() -> None:
    args = parser().parse_args()
    if args.worker:
        worker(args)
        return
    rows = run(args)
    ok = [r for _, r in rows if "error" not in r]
    print(f"model {args.model}; {ok[0]['device'] if ok else args.device}")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
