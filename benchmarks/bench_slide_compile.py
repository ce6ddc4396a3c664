"""``ircr segment`` on a larger slide: the default (compile auto) vs ``--no-compile``.

    OMP_NUM_THREADS=2 python benchmarks/bench_slide_compile.py [--size 8192]

A square pyramidal TIFF at 0.25 µm/px filled with a mosaic of real MoNuSeg 2018 tiles
(``--size`` px, default 8192: 67 MP of tissue, above ``AUTO_COMPILE_MP``) is segmented by the
CLI twice, each in a fresh process, with the packaged default model: ``ircr segment SLIDE -o
OUT`` (compile auto: the slide is compiled on CPU) and ``ircr segment --no-compile ...`` (the
eager network). Printed per run: wall and CPU seconds (including the compilation, i.e. the
first slide of a process), seconds per megapixel, the process's own peak RSS (``VmHWM``), the
nuclei; and between the two label maps: nuclei counts, foreground Dice and AJI on the central
2048² crop. Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts
from bench_segment_speed import mosaic, real_tiles, write_slide  # noqa: E402
from peak_memory import peak_rss_mib  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "MoNuSeg2018" / "train"


def worker(argv: list[str]) -> None:
    """In this fresh process: ``ircr`` with ``argv``; print wall, CPU, peak RSS as JSON."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from ircr.cli.main import main as ircr_main

    c0, t0 = time.process_time(), time.perf_counter()
    rc = ircr_main(argv)
    print(json.dumps({"rc": rc, "wall": time.perf_counter() - t0,
                      "cpu": time.process_time() - c0, "peak_mib": peak_rss_mib()}))


def run(label: str, argv: list[str]) -> dict[str, float]:
    """One CLI run in a fresh subprocess (its stderr passed through)."""
    print(f"bench_slide_compile: {label}: ircr {' '.join(argv)}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(argv)],
                          stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        sys.exit(f"bench_slide_compile: {label} failed (exit {proc.returncode})")
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def compare(a: Path, b: Path) -> tuple[int, int, float, float]:
    """Nuclei of both label maps, foreground Dice, AJI on the central 2048² crop."""
    import tifffile

    from ircr.metrics import instance_metrics

    la, lb = tifffile.imread(a), tifffile.imread(b)
    fa, fb = la > 0, lb > 0
    dice = float(2 * (fa & fb).sum() / max(fa.sum() + fb.sum(), 1))
    c = la.shape[0] // 2
    crop = (slice(max(c - 1024, 0), c + 1024),) * 2
    aji = instance_metrics(la[crop], lb[crop]).aji
    return len(np.unique(la)) - 1, len(np.unique(lb)) - 1, dice, aji


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="MoNuSeg 2018 train folder")
    ap.add_argument("--size", type=int, default=8192, help="slide side px (8192)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slide = root / "slide.tif"
        write_slide(slide, args.size, mosaic(real_tiles(args.data, 3), args.size), 0, 0)
        rows = {}
        for label, extra in (("auto (default)", []), ("--no-compile", ["--no-compile"])):
            out = root / label.split()[0].strip("-")
            rows[label] = run(label, ["segment", *extra, str(slide), "-o", str(out),
                                      "--outputs", "labels,summary"])
            summary = json.loads(next(out.glob("*summary*.json")).read_text())
            rows[label]["nuclei"] = summary["n_nuclei"]
        labels = [next((root / d).glob("*labels*.tif")) for d in ("auto", "no-compile")]
        na, nb, dice, aji = compare(*labels)
    mp = args.size**2 / 1e6
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nslide {args.size}² ({mp:.1f} MP, all tissue), packaged default model, CPU, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; load average now {load}\n")
    print("| run | wall s | CPU s | s/MP wall | peak RSS MiB | nuclei |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['wall'] / mp:.2f} | "
              f"{r['peak_mib']:.0f} | {r['nuclei']} |")
    eager, auto = rows["--no-compile"], rows["auto (default)"]
    print(f"\nspeed-up of the default over --no-compile: {eager['wall'] / auto['wall']:.2f}x "
          f"wall ({eager['cpu'] / auto['cpu']:.2f}x CPU), compilation included; label maps: "
          f"{na} vs {nb} nuclei, foreground Dice {dice:.4f}, AJI {aji:.3f} (central 2048²)")


if __name__ == "__main__":
    main()
