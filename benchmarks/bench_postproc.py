"""Benchmark WBIS post-processing and the instance metrics on real MoNuSeg maps.

    .venv/bin/python benchmarks/bench_postproc.py [--data DIR] [--repeats 15]

Uses the densest MoNuSeg training tile (TCGA-HE-7130-01Z-00-DX1, 1,862 nuclei). WBIS inputs:
"targets" = the exact NP/HV targets of the tile (many equal elevation values, so the fast
path often hands the flood to the plain call); "network-like" = the targets blurred
(sigma 1.5 px) plus Gaussian noise (sd 0.1), i.e. continuous maps like a trained network's.
256x256 numbers are the median over 9 patches of the tile. The metrics prediction is a
perturbed copy of the ground truth (1 px erosion, 2 px shift, 10% of nuclei dropped,
touching pairs merged). One thread (OpenCV set to 1 thread); medians of ``--repeats`` runs,
wall clock and CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from ircr.data.targets import hover_targets  # noqa: E402
from ircr.metrics import instance_metrics  # noqa: E402
from ircr.postproc import wbis, wbis_batch, wbis_reference  # noqa: E402
from ircr.postproc.batch import shutdown_pools  # noqa: E402

TILE = "TCGA-HE-7130-01Z-00-DX1"


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn`` (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def _network_like(prob: np.ndarray, hv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p = np.clip(ndi.gaussian_filter(prob, 1.5) + rng.normal(0, 0.1, prob.shape), 0, 1)
    h = ndi.gaussian_filter(hv, (0, 1.5, 1.5)) + rng.normal(0, 0.1, hv.shape)
    return p.astype(np.float32), h.astype(np.float32)


def _perturbed(gt: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    pred = ndi.grey_erosion(gt, size=(2, 2))
    pred = np.roll(pred, 2, axis=1)
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, rng.choice(ids, ids.size // 10, replace=False))] = 0
    a, b = pred[:, :-1], pred[:, 1:]
    touch = (a > 0) & (b > 0) & (a != b)
    lut = np.arange(int(pred.max()) + 1)
    lut[b[touch][::4]] = a[touch][::4]  # merge a quarter of the touching neighbours
    return lut[pred].astype(np.int32)


def _row(label: str, ref: tuple[float, float] | None, fast: tuple[float, float]) -> str:
    r = f"{ref[0]:8.1f} {ref[1]:8.1f}" if ref else f"{'-':>8} {'-':>8}"
    return f"{label:<44} {r} {fast[0]:8.1f} {fast[1]:8.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("IRCR_SHARED_DATA",
                             str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", default=default, help="shared data root (holds MoNuSeg2018/)")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    path = Path(args.data) / "MoNuSeg2018" / "train" / "labels_inst" / f"{TILE}.png"
    if not path.is_file():
        print(f"bench_postproc: {path} not found (pass --data)", file=sys.stderr)
        return 2
    gt = np.array(Image.open(path)).astype(np.int32)
    npt, hv = hover_targets(gt)
    inputs = {"targets": (npt.astype(np.float32), hv), "network-like": _network_like(
        npt.astype(np.float32), hv)}
    n = args.repeats
    head = f"case (ms, median of {n})"
    print(f"{head:<44} {'ref wall':>8} {'ref cpu':>8} "
          f"{'fastwall':>8} {'fast cpu':>8}")
    for kind, (prob, h) in inputs.items():
        ref = _time(partial(wbis_reference, prob, h), max(3, n // 3))
        fast = _time(partial(wbis, prob, h), n)
        print(_row(f"WBIS 1000x1000 tile, {kind}", ref, fast))
        crops = [(y, x) for y in (0, 372, 744) for x in (0, 372, 744)]
        rs, fs = [], []
        for y, x in crops:
            pp, hh = prob[y:y + 256, x:x + 256].copy(), h[:, y:y + 256, x:x + 256].copy()
            rs.append(_time(partial(wbis_reference, pp, hh), n))
            fs.append(_time(partial(wbis, pp, hh), n))
        med = lambda v: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))  # noqa: E731
        print(_row(f"WBIS 256x256 patch, {kind}", med(rs), med(fs)))
    prob, h = inputs["network-like"]
    probs = np.stack([prob[y:y + 256, x:x + 256] for y, x in crops[:8]])
    hvs = np.stack([h[:, y:y + 256, x:x + 256] for y, x in crops[:8]])
    for workers, backend in ((0, "thread"), (2, "thread"), (2, "process")):
        t = _time(partial(wbis_batch, probs, hvs, workers=workers, backend=backend), n)
        print(_row(f"wbis_batch 8 x 256x256, workers={workers} {backend}", None, t))
    shutdown_pools()
    pred = _perturbed(gt)
    t = _time(lambda: instance_metrics(gt, pred), n)
    print(_row("metrics (Dice+AJI+AJI+ +PQ+F1) 1000x1000 pair", None, t))
    t = _time(lambda: instance_metrics(gt, pred, f1_mode="centroid"), n)
    print(_row("  same with centroid F1", None, t))
    m = instance_metrics(gt, pred)
    print(f"(pair: {m.n_gt} GT, {m.n_pred} predicted nuclei; AJI {m.aji:.3f}, PQ {m.pq:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
