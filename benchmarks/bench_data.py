"""Data-layer timings: HV targets, synthetic tiles, prepare, window reads.

Run: ``.venv/bin/python benchmarks/bench_data.py [--monuseg PATH]`` (prints a table).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000.0


def main() -> None:
    from ircr.data.prepare import prepare_dataset
    from ircr.data.store import PreparedDataset
    from ircr.data.synthetic import make_tile
    from ircr.data.targets import hover_targets

    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "MoNuSeg2018" / "train"
    ap = argparse.ArgumentParser()
    ap.add_argument("--monuseg", type=Path, default=default)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []

    _, syn = make_tile(np.random.default_rng(0), 352, density=0.35, mean_area=250)
    n = len(np.unique(syn[48:304, 48:304])) - 1
    ms = _time(lambda: hover_targets(syn, crop=(48, 48, 256, 256)), 30)
    rows.append((f"hover_targets 352 ctx -> 256 crop, synthetic ({n} nuclei)", f"{ms:.1f} ms"))
    for size, rep in ((256, 5), (512, 3)):
        ms = _time(lambda s=size: make_tile(np.random.default_rng(1), s), rep)
        rows.append((f"make_tile {size}x{size}", f"{ms:.0f} ms"))

    if args.monuseg.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            prepare_dataset("monuseg", args.monuseg, Path(tmp) / "m")
            dt = time.perf_counter() - t0
            rows.append(("prepare MoNuSeg train (30 x 1000x1000)", f"{dt:.1f} s"))
            ds = PreparedDataset(Path(tmp) / "m")
            i = ds.index_of("TCGA-HE-7130-01Z-00-DX1")
            t0 = time.perf_counter()
            for k in range(len(ds)):
                ds.load_image(k)
                ds.load_inst(k)
            dt = time.perf_counter() - t0
            rows.append(("PreparedDataset decode all 30 images + maps", f"{dt:.2f} s"))
            inst = ds.load_inst(i)
            n = len(np.unique(inst[400:656, 400:656])) - 1
            ms = _time(lambda: hover_targets(inst[352:704, 352:704], crop=(48, 48, 256, 256)), 30)
            what = f"hover_targets 352 ctx -> 256 crop, MoNuSeg HE-7130 ({n} nuclei)"
            rows.append((what, f"{ms:.1f} ms"))
            ms = _time(lambda: hover_targets(inst, crop=(400, 400, 256, 256)), 30)
            what = "hover_targets whole 1000 map -> 256 crop (adaptive window)"
            rows.append((what, f"{ms:.1f} ms"))
            ms = _time(lambda: ds.read_window(i, -48, -48, 352, 352), 50)
            rows.append(("read_window 352x352 at a corner (reflect, cached)", f"{ms:.2f} ms"))
            ms = _time(lambda: ds.read_window(i, 300, 300, 352, 352), 50)
            rows.append(("read_window 352x352 inside (cached)", f"{ms:.2f} ms"))

    width = max(len(r[0]) for r in rows)
    print(f"| {'what'.ljust(width)} | time |")
    print(f"|{'-' * (width + 2)}|------|")
    for what, t in rows:
        print(f"| {what.ljust(width)} | {t} |")


if __name__ == "__main__":
    main()
