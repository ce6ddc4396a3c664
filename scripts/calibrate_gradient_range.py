"""Calibrate WBIS ``gradient_low`` / ``gradient_high`` (``gradient_range: fixed``) for a model.

HoVer-Net's per-call min-max (``gradient_range: tile``) maps each HV channel's Sobel response
from [min, max] of the map to [0, 1]; the marker cut then lies at a fixed fraction of that
image's range. This script runs the model on a prepared dataset's images, records per image and
per channel (x, y) the min and max of ``Sobel(HV) / (2 K)`` (the Sobel response of
``(HV + 1) / 2`` in units of the unit-step response ``K``, the units of ``gradient_low`` /
``gradient_high``), and prints their medians over the images: fixed bounds that put the cut
where min-max puts it on a typical image, without depending on the map's extent.

Usage: python scripts/calibrate_gradient_range.py MODEL DATASET [--split all] [--cache DIR]
(``--cache``: keep the predicted maps as .npz there and reuse them on the next run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ircr.engine.packaged import resolve_model
from ircr.engine.tune import predict_for_tuning
from ircr.inference.model_folder import load_model_folder
from ircr.postproc.gradient_range import sobel_step_response


def sobel_extremes(hv: np.ndarray, ksize: int) -> list[tuple[float, float]]:
    """Per channel (x, y): (min, max) of Sobel(hv[c]) / (2 K); hv (2, H, W) float."""
    k = sobel_step_response(ksize)
    out = []
    for ch, (dx, dy) in ((0, (1, 0)), (1, (0, 1))):
        s = cv2.Sobel(hv[ch].astype(np.float32), cv2.CV_64F, dx, dy, ksize=ksize) / (2 * k)
        out.append((float(s.min()), float(s.max())))
    return out


def load_maps(model: str, dataset: Path, split: str, cache: Path | None
              ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (prob (H, W), hv (2, H, W), gt (H, W)); predicted, or read from ``cache``."""
    if cache is not None and (cache / "names.json").exists():
        names = json.loads((cache / "names.json").read_text())
        maps = {}
        for n in names:
            z = np.load(cache / f"{n}.npz")
            maps[n] = (z["prob"], z["hv"], z["gt"])
        return maps
    _, pred, names = predict_for_tuning(resolve_model(model), dataset, split, "cpu",
                                        progress=True)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for n, (prob, hv, gt) in zip(names, pred):
            np.savez(cache / f"{n}.npz", prob=prob, hv=hv, gt=gt)
        (cache / "names.json").write_text(json.dumps(names))
    return dict(zip(names, pred))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="all")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    ksize = load_model_folder(resolve_model(args.model), device="cpu").postproc.effective().ksize
    maps = load_maps(args.model, args.dataset, args.split, args.cache)
    rows = []
    for name, (_, hv, _) in maps.items():
        (lx, hx), (ly, hy) = sobel_extremes(hv, ksize)
        rows.append((lx, hx, ly, hy))
        print(f"{name}: x [{lx:+.4f}, {hx:+.4f}] mid {(lx + hx) / 2:+.4f}   "
              f"y [{ly:+.4f}, {hy:+.4f}] mid {(ly + hy) / 2:+.4f}")
    a = np.array(rows)
    med = np.median(a, axis=0)
    mids = np.median(np.stack([(a[:, 0] + a[:, 1]) / 2, (a[:, 2] + a[:, 3]) / 2], 1), axis=0)
    print(f"ksize {ksize}, {len(rows)} images; median low/high x [{med[0]:+.4f}, {med[1]:+.4f}]"
          f" y [{med[2]:+.4f}, {med[3]:+.4f}]; median midpoint x {mids[0]:+.4f} "
          f"y {mids[1]:+.4f}")
    print(f"gradient_low: [{med[0]:.3f}, {med[2]:.3f}]\ngradient_high: [{med[1]:.3f}, "
          f"{med[3]:.3f}]")


if __name__ == "__main__":
    main()
