"""Time the dataset readers and augmentation; prints a Markdown table.

Usage: .venv/bin/python benchmarks/bench_readers.py [--data ../shared/data] [--repeat 3]
MoNuSeg/CPM-15 rows are skipped when the data folder is missing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ircr.data.augment import (
    AugmentConfig,
    apply_geometry,
    photometric,
    sample_geometry,
    strong_view,
    weak_view,
)
from ircr.data.datasets import open_dataset
from ircr.data.datasets.cpm15 import read_cpm15_mask
from ircr.data.datasets.monuseg import read_monuseg_xml


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data, rows = Path(args.data), []
    mon, cpm = data / "MoNuSeg2018" / "train", data / "CPM15" / "train"
    if mon.is_dir():
        t = best_of(lambda: list(open_dataset("monuseg", mon, labels="png")), args.repeat)
        rows.append(("MoNuSeg: 30 LZW TIFF tiles + 16-bit label PNGs", t * 1000 / 30, "per tile"))
        xmls = sorted((mon / "annotations_xml_partial").glob("*.xml.gz"))
        t = best_of(lambda: [read_monuseg_xml(f, (1000, 1000)) for f in xmls], 1)
        what = "MoNuSeg: parse + rasterise 13 XMLs (4,951 regions)"
        rows.append((what, t * 1000 / 13, "per XML"))
    if cpm.is_dir():
        masks = sorted((cpm / "labels_txt").glob("*.txt.gz"))
        t = best_of(lambda: [read_cpm15_mask(m) for m in masks], args.repeat)
        rows.append(("CPM-15: parse 15 ASCII masks (.txt.gz)", t * 1000 / 15, "per mask"))
        t = best_of(lambda: list(open_dataset("cpm15", cpm, fix_known_swaps=True)), args.repeat)
        rows.append(("CPM-15: full reader, 15 samples", t * 1000 / 15, "per sample"))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (540, 540, 3), dtype=np.uint8)
    lab = rng.integers(0, 300, (540, 540)).astype(np.int32)
    cfg = AugmentConfig()

    def geo() -> None:
        for _ in range(50):
            apply_geometry(img, lab, sample_geometry(rng, cfg), (256, 256))

    small = img[:256, :256].copy()

    def pho() -> None:
        for _ in range(50):
            photometric(small, rng, cfg)

    def views() -> None:
        for _ in range(50):
            weak_view(small, rng)
            strong_view(small, rng, cfg)

    for what, fn in (("apply_geometry 540 -> 256, image + labels", geo),
                     ("photometric 256x256 (HoVer-Net list)", pho),
                     ("weak_view + strong_view 256x256", views)):
        rows.append((what, best_of(fn, args.repeat) * 20, "call"))  # 50 calls: s * 1000 / 50
    print("| what | ms | per |\n|---|---|---|")
    for what, ms, unit in rows:
        print(f"| {what} | {ms:.1f} | {unit} |")


if __name__ == "__main__":
    main()
