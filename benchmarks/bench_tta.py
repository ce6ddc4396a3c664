"""Cost of test-time augmentation: ``segment()`` of real tiles with every ``--tta`` mode.

    OMP_NUM_THREADS=2 python benchmarks/bench_tta.py [--tiles 3 --repeats 2 --threads 2]

One process, the packaged default model on the CPU (eager), every mode loaded once; after a
warm-up call per mode, each repeat runs every tile under every mode, the modes' order rotated
per repeat. Prints per mode the median wall and CPU (``time.process_time``) seconds per
megapixel, the ratio to ``off`` and the nuclei found. Accuracy is not measured here: see
docs/models.md ("Test-time augmentation") for ``ircr evaluate --tta`` on MoNuSeg validation
and CPM-15.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench_segment_speed import real_tiles

MODES = ("off", "mirror", "flips", "d4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/MoNuSeg2018/train"))
    ap.add_argument("--tiles", type=int, default=3, help="real 1000x1000 tiles (3)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import ircr
    from ircr.inference.tta import tta_passes

    torch.set_num_threads(args.threads)
    segs = {m: ircr.load_model(None, device="cpu", tta=m) for m in MODES}
    tiles = real_tiles(args.data, args.tiles)
    for m in MODES:  # warm-up on a whole tile: oneDNN kernels of the window shape, the heap
        segs[m].segment(tiles[0][1], mpp=0.25)
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    nuclei: dict[str, int] = dict.fromkeys(MODES, 0)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.threads} torch threads; "
          f"{len(tiles)} tiles x {args.repeats} repeats", flush=True)
    for r in range(args.repeats):
        order = MODES[r % len(MODES):] + MODES[: r % len(MODES)]
        for name, image in tiles:
            mp = image.shape[0] * image.shape[1] / 1e6
            for m in order:
                c0, t0 = time.process_time(), time.perf_counter()
                res = segs[m].segment(image, mpp=0.25)
                wall[m].append((time.perf_counter() - t0) / mp)
                cpu[m].append((time.process_time() - c0) / mp)
                if r == 0:
                    nuclei[m] += len(res)
            print(f"  repeat {r + 1} {name} done", file=sys.stderr, flush=True)
    base_w, base_c = statistics.median(wall["off"]), statistics.median(cpu["off"])
    print("\n| mode | passes | wall s/MP | CPU s/MP | x off (wall / CPU) | nuclei |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in MODES:
        w, c = statistics.median(wall[m]), statistics.median(cpu[m])
        print(f"| {m} | {tta_passes(m)} | {w:.2f} | "
              f"{c:.2f} | {w / base_w:.2f}x / {c / base_c:.2f}x | {nuclei[m]} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
