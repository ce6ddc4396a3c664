"""Timings of the instance-level SSL pieces on real MoNuSeg data (CPU).

* ``nucleus_features`` on the densest MoNuSeg tile (TCGA-HE-7130, 1000x1000, 1,862 nuclei);
* MIAC (matching + pair/band maps, then the vectorised loss) and PIAC (prior scoring -> U,
  then the loss) for one batch of 4 patches of 256x256 (teacher = ground truth, student =
  ground truth shifted by 1 px with 10% of the nuclei dropped).

    .venv/bin/python benchmarks/bench_instance_ssl.py [--data ../shared/data] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ircr.features import nucleus_features
from ircr.ssl.matching import batch_pair_maps, miac_loss
from ircr.ssl.piac import piac_loss, u_mask_batch
from ircr.ssl.prior import load_prior


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time (s) of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Print a table of timings."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import tifffile

    root = Path(a.data) / "MoNuSeg2018" / "train"
    name = "TCGA-HE-7130-01Z-00-DX1"
    img = np.ascontiguousarray(tifffile.imread(root / "images" / f"{name}.tif")[..., :3])
    lab = np.array(Image.open(root / "labels_inst" / f"{name}.png")).astype(np.int32)
    rows = [(f"nucleus_features, 1000x1000, {lab.max()} nuclei",
             best(lambda: nucleus_features(img, lab), a.repeat))]

    rng = np.random.default_rng(0)
    corners = [(0, 0), (0, 500), (500, 0), (500, 500)]
    imgs = np.stack([img[y:y + 256, x:x + 256] for y, x in corners])
    t = np.stack([lab[y:y + 256, x:x + 256] for y, x in corners])
    s = np.roll(t, 1, axis=2).copy()
    for b in range(4):
        ids = np.unique(s[b])[1:]
        s[b][np.isin(s[b], rng.choice(ids, len(ids) // 10, replace=False))] = 0
    fs, ft = torch.rand(4, 3, 256, 256, requires_grad=True), torch.rand(4, 3, 256, 256)
    maps, _ = batch_pair_maps(t, s, 1.5)
    prior = load_prior()
    masks = u_mask_batch(imgs, t, prior, 0.35)

    def miac() -> None:
        loss, _ = miac_loss(fs, ft, fs[:, 0], ft[:, 0], maps.lt, maps.ls, maps.band_t,
                            maps.band_s, maps.band_ts)
        loss.backward()

    def piac() -> None:
        piac_loss(fs, ft, masks.u).backward()

    rows += [
        (f"MIAC maps (match + pair/band maps), 4x256^2, {maps.n_pairs} pairs",
         best(lambda: batch_pair_maps(t, s, 1.5), a.repeat)),
        ("MIAC loss forward+backward, 4x256^2", best(miac, a.repeat)),
        (f"PIAC U masks (features + prior), 4x256^2, {int(masks.n_instances.sum())} nuclei",
         best(lambda: u_mask_batch(imgs, t, prior, 0.35), a.repeat)),
        ("PIAC loss forward+backward, 4x256^2", best(piac, a.repeat)),
    ]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch threads 1, "
          f"best of {a.repeat}")
    print(f"| {'step':<62} | {'ms':>8} |\n|{'-' * 64}|{'-' * 10}|")
    for k, v in rows:
        print(f"| {k:<62} | {v * 1e3:8.1f} |")


if __name__ == "__main__":
    main()
