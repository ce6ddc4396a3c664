"""What the false positives of a model are: per-object features of matched vs unmatched nuclei.

    python scripts/false_positive_features.py                          # packaged default model
    python scripts/false_positive_features.py --set min_prob=0 --set min_size=30   # as before

Segments the 3 validation images of the default model's split (MoNuSeg 2018) and the 15
CPM-15 tiles with ``ircr.load_model(MODEL)`` (WBIS values overridden by ``--set``), matches
every predicted nucleus to the annotation by its best IoU, and prints quartiles of the
per-object table columns (``ircr segment``'s CSV: mean NP probability, solidity, haematoxylin
OD, ...) for matched nuclei (IoU > 0.5) and for objects matching no nucleus (IoU < 0.1), and
the predicted / true counts. docs/models.md, "False positives", records a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VAL = ("TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1")
FEATURES = ("np_prob_mean", "solidity", "haematoxylin", "circularity", "area_um2", "prior_score")


def best_iou(gt: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Best IoU of each predicted id (H, W int maps) with any annotated nucleus."""
    fg = pred > 0
    pairs, inter = np.unique(np.stack([pred[fg], gt[fg]]), axis=1, return_counts=True)
    parea = np.bincount(pred.ravel())
    garea = np.bincount(gt.ravel())
    best = {int(i): 0.0 for i in np.unique(pred[fg])}
    for (p, g), c in zip(pairs.T, inter):
        if g:
            best[int(p)] = max(best[int(p)], c / (parea[p] + garea[g] - c))
    return best


def samples(monuseg: Path, cpm15: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    """(set, image, instance labels, mpp) of the validation images, then of CPM-15."""
    from ircr.data.datasets.cpm15 import iter_cpm15
    from ircr.data.datasets.monuseg import iter_monuseg

    for s in iter_monuseg(monuseg):
        if s.meta["name"] in VAL:
            yield "validation", s.image, s.inst, 0.25
    for s in iter_cpm15(cpm15, fix_known_swaps=True):
        yield "CPM-15", s.image, s.inst, float(s.meta["mpp"])


def overrides(params: Any, items: list[str]) -> dict[str, Any]:
    """``["min_prob=0", ...]`` -> {key: number} for numeric fields of ``params``; one-line exit
    on a malformed item, an unknown or non-numeric key, or a value that is not a number."""
    numeric = {f.name for f in dataclasses.fields(params)
               if isinstance(getattr(params, f.name), (int, float))}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in numeric:
            sys.exit(f"--set: expected KEY=NUMBER with KEY one of {', '.join(sorted(numeric))}, "
                     f"got {item!r}")
        try:
            out[key] = type(getattr(params, key))(value)
        except ValueError:
            sys.exit(f"--set {key}: not a number: {value!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or packaged name (default)")
    ap.add_argument("--monuseg", type=Path, default=SHARED / "MoNuSeg2018" / "train")
    ap.add_argument("--cpm15", type=Path, default=SHARED / "CPM15" / "train")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a WBIS value of the model's postproc.yaml (repeatable)")
    args = ap.parse_args()
    import ircr

    seg = ircr.load_model(args.model, device="cpu")
    seg.postproc = dataclasses.replace(seg.postproc, **overrides(seg.postproc, args.set))
    rows: dict[str, list[list[float]]] = {"validation": [], "CPM-15": []}
    counts = {k: [0, 0] for k in rows}
    for name, image, gt, mpp in samples(args.monuseg, args.cpm15):
        res = seg.segment(image, mpp=mpp)
        iou = best_iou(gt, res.inst)
        rows[name] += [[iou.get(int(i), 0.0)] + [float(res.table[f][k]) for f in FEATURES]
                       for k, i in enumerate(res.table["id"])]
        counts[name][0] += len(res.table["id"])
        counts[name][1] += len(np.unique(gt)) - 1
    print(f"postproc: {seg.postproc}")
    for name, r in rows.items():
        a = np.asarray(r)
        matched, none = a[a[:, 0] > 0.5], a[a[:, 0] < 0.1]
        print(f"\n{name}: {counts[name][0]} predicted / {counts[name][1]} true; "
              f"{len(matched)} matched (IoU > 0.5), {len(none)} matching none (IoU < 0.1)")
        print("| feature | matched 25/50/75 % | matching none 25/50/75 % |\n|---|---|---|")
        for j, f in enumerate(FEATURES, 1):
            q = [" / ".join(f"{v:.3g}" for v in np.percentile(x[:, j], [25, 50, 75]))
                 if len(x) else "-" for x in (matched, none)]
            print(f"| {f} | {q[0]} | {q[1]} |")


if __name__ == "__main__":
    main()
