"""``ircr demo``: IRCR-Net vs supervised-only on synthetic H&E-like tiles, on a CPU.

Steps (everything under ``out``):

1. generate synthetic labelled tiles (:mod:`ircr.data.synthetic`) and prepare them like any
   dataset (``data/``: patches, a seeded split with a small labelled fraction, val images);
2. train a small HoVer-Net with ``supervised`` and with ``ircr`` for the same number of
   iterations, same seed and same initialisation (``runs/<method>/``);
3. evaluate both final students on the validation images (whole-image sliding window, WBIS,
   AJI / Dice / PQ / F1);
4. segment one validation tile with :func:`ircr.load_model` and draw overlays;
5. write ``report.md`` with the numbers, loss curves and overlays — saying plainly which did
   better (on a tiny CPU budget the difference can go either way).

No downloads, no GPU; the full demo takes about 10 minutes on 2 cores, ``quick`` about a minute.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ircr.errors import IrcrError

METHODS = ("supervised", "ircr")
METRICS = ("aji", "dice", "pq", "f1")


@dataclass
class DemoSettings:
    """Sizes of one demo run (full or quick)."""

    n_images: int
    image_size: int
    patch_size: int
    ratio: float
    iterations: int
    epochs: int
    batch: int
    width: float
    lr: float


FULL = DemoSettings(n_images=20, image_size=256, patch_size=96, ratio=0.125, iterations=240,
                    epochs=6, batch=4, width=0.25, lr=2e-3)
QUICK = DemoSettings(n_images=6, image_size=128, patch_size=64, ratio=0.25, iterations=4,
                     epochs=2, batch=2, width=0.125, lr=1e-3)


@dataclass
class DemoResult:
    """What the demo produced."""

    out: Path
    report: Path
    metrics: dict[str, dict[str, float]]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def winner(self) -> str | None:
        """The method with the higher validation AJI (None on a tie or missing numbers)."""
        a = {m: self.metrics.get(m, {}).get("aji", float("nan")) for m in METHODS}
        if any(math.isnan(v) for v in a.values()) or a["ircr"] == a["supervised"]:
            return None
        return max(a, key=lambda m: a[m])

    def summary(self) -> str:
        """One line per method with its validation metrics."""
        lines = []
        for m in METHODS:
            r = self.metrics.get(m, {})
            lines.append(f"{m:>10}: " + "  ".join(f"{k.upper()} {r.get(k, float('nan')):.3f}"
                                                   for k in METRICS))
        return "\n".join(lines)


def _log(msg: str) -> None:
    print(f"[ircr demo] {msg}", flush=True)


def prepare_data(out: Path, s: DemoSettings, seed: int) -> tuple[Path, str]:
    """Generate + prepare the synthetic set; returns (prepared folder, split name)."""
    from ircr.data.prepare import prepare_dataset

    folder = out / "data"
    info = prepare_dataset(
        "synthetic", None, folder, patch=s.patch_size, ratio=s.ratio, seed=seed,
        val_fraction=0.2, options={"n_images": s.n_images, "size": s.image_size, "seed": seed},
        overwrite=True,
    )
    return folder, info.split_paths[0].stem


def experiment(folder: Path, split: str, s: DemoSettings, method: str, seed: int) -> Any:
    """The experiment config of one demo run (tiny HoVer-Net, CPU, fixed iterations)."""
    from ircr.train.config import experiment_from_dict

    ipe = max(1, s.iterations // s.epochs)
    data = {
        "data": {"dataset": str(folder), "split": split, "patch_size": s.patch_size,
                 "context_margin": s.patch_size // 4, "batch_size": s.batch,
                 "batch_size_unlabelled": s.batch, "workers": 0},
        "model": {"width": s.width, "blocks": [1, 1, 1, 1], "decoder_units": [2, 2]},
        "train": {"epochs": s.epochs, "iterations_per_epoch": ipe, "lr": s.lr,
                  "lr_steps": [max(1, s.epochs - 1)], "seed": seed, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "val_every": 0},
        # warm-up and ramp-up scaled to the demo's short budget (defaults: 100 + 200 iterations)
        "method": {"name": method, "diagnostic_overlays": 2 if method == "ircr" else 0,
                   "warmup_iterations": s.iterations // 8,
                   "rampup_iterations": max(1, s.iterations // 4)},
        "eval": {"window": s.patch_size, "overlap": s.patch_size // 4, "batch_size": 4},
    }
    return experiment_from_dict(data, where=f"demo ({method})")


def train(out: Path, folder: Path, split: str, s: DemoSettings, method: str, seed: int) -> Path:
    """Train one method (resumes a half-finished demo run); returns its model folder."""
    from ircr.train.trainer import Trainer

    run_dir = out / "runs" / method
    done = run_dir / "model" / "weights.pt"
    if done.is_file():
        return done.parent
    trainer = Trainer(experiment(folder, split, s, method, seed), run_dir, resume="auto")
    return trainer.run()


def evaluate(folder: Path, split: str, model_dirs: dict[str, Path], s: DemoSettings,
             seed: int) -> dict[str, dict[str, float]]:
    """Validation metrics of each model folder (whole images, WBIS, per-image mean)."""
    from ircr.engine.evaluate import evaluate_models
    from ircr.engine.model_folder import load_model_folder
    from ircr.train import loaders

    cfg = experiment(folder, split, s, "supervised", seed)
    ds = loaders.open_prepared(folder, "demo")
    sp = loaders.resolve_split(ds, split, "demo")
    models: dict[str, Any] = {m: load_model_folder(p).model for m, p in model_dirs.items()}
    res = evaluate_models(models, ds, sp.val_images, cfg.eval, cfg.postproc, "cpu")
    return {m: {k: float(v) for k, v in r.items()} for m, r in res.items()}


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def plot_curves(out: Path) -> Path:
    """Loss curves (per epoch) of both runs -> ``loss_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for m in METHODS:
        rows = _read_metrics(out / "runs" / m)
        if not rows:
            continue
        it = [float(r["iterations"]) for r in rows]
        axes[0].plot(it, [float(r.get("train_sup") or r["train_loss"]) for r in rows], "o-",
                     label=f"{m}: L_sup")
        if m == "ircr":
            for key, lab in (("train_piac", "γ1·L_PIAC"), ("train_miac", "γ2·L_MIAC")):
                if key in rows[0] and rows[0][key] != "":
                    w = 0.1 if key == "train_piac" else 100.0
                    axes[1].plot(it, [w * float(r[key]) for r in rows], "o-", label=lab)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("supervised loss")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("IRCR consistency terms")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def segment_tile(out: Path, folder: Path, split: str, model_dirs: dict[str, Path]) -> list[Path]:
    """Segment the first validation image with each model; write side-by-side overlays."""
    import ircr
    from ircr.io.writers import overlay_image, write_png
    from ircr.train import loaders

    ds = loaders.open_prepared(folder, "demo")
    sp = loaders.resolve_split(ds, split, "demo")
    idx = ds.index_of(sp.val_images[0])
    image, gt = np.asarray(ds.load_image(idx)), np.asarray(ds.load_inst(idx))
    paths = []
    panels = [overlay_image(image, gt, (0, 200, 0))]
    for m in METHODS:
        seg = ircr.load_model(model_dirs[m], device="cpu").segment(image, mpp=0.25)
        inst = np.asarray(seg.inst)
        panels.append(overlay_image(image, inst, (255, 40, 40)))
    strip = np.concatenate(panels, axis=1)
    path = out / "segmentation.png"
    write_png(path, strip)
    paths.append(path)
    return paths


def write_report(res: DemoResult, s: DemoSettings, split: str, quick: bool) -> None:
    """``report.md``: setup, metric table, verdict, pictures."""
    m = res.metrics
    lines = [
        "# ircr demo report",
        "",
        f"Synthetic H&E-like tiles: {s.n_images} images of {s.image_size}x{s.image_size} px, "
        f"{s.patch_size} px patches, split `{split}` (labelled ratio {s.ratio:g}; the rest of "
        "the training patches are unlabelled), 20% of the images for validation.",
        f"Network: HoVer-Net, width {s.width}, blocks [1, 1, 1, 1], CPU. Both methods: "
        f"{s.iterations} iterations, batch {s.batch} labelled (+ {s.batch} unlabelled for IRCR), "
        f"Adam lr {s.lr:g} (x0.1 in the last epoch), same seed."
        + (" **Quick mode: a pipeline check, the numbers mean nothing.**" if quick else ""),
        "",
        "| method | AJI | Dice | PQ | F1 | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for k in METHODS:
        r = m.get(k, {})
        lines.append(f"| {k} | " + " | ".join(f"{r.get(x, float('nan')):.3f}" for x in METRICS)
                     + f" | {res.seconds.get(k, float('nan')):.0f} |")
    lines.append("")
    w = res.winner
    a_i, a_s = m.get("ircr", {}).get("aji", float("nan")), m.get("supervised", {}).get("aji",
                                                                                     float("nan"))
    if w is None:
        lines.append(f"Validation AJI: IRCR {a_i:.3f} vs supervised {a_s:.3f}: no difference.")
    else:
        lines.append(f"On validation AJI **{w}** did better ({a_i:.3f} IRCR vs {a_s:.3f} "
                     f"supervised, difference {a_i - a_s:+.3f}). One seed on a tiny synthetic "
                     "set and a tiny CPU budget: this is a demonstration of the pipeline, not "
                     "evidence for or against the method.")
    lines += ["", "![loss curves](loss_curves.png)", "",
              "Segmentation of one validation tile (left: ground truth; then supervised, IRCR):",
              "", "![segmentation](segmentation.png)", ""]
    diag = sorted((res.out / "runs" / "ircr" / "diagnostics").glob("*.png"))[:3]
    if diag:
        lines += ["IRCR diagnostics on unlabelled patches (teacher instances green = kept, "
                  "red = rejected by the prior; student outlines blue; yellow lines = matched "
                  "pairs):", ""]
        lines += [f"![{p.stem}]({p.relative_to(res.out)})" for p in diag]
    res.report.write_text("\n".join(lines) + "\n")


def run_demo(out: str | Path = "demo_out", quick: bool = False, seed: int = 0,
             log: Callable[[str], None] = _log) -> DemoResult:
    """Run the whole demo into ``out``; returns the metrics and the report path."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    s = QUICK if quick else FULL
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IrcrError(f"{out}: cannot create the demo folder ({exc.strerror})") from None
    log(f"generating and preparing {s.n_images} synthetic tiles in {out / 'data'}")
    folder, split = prepare_data(out, s, seed)
    model_dirs, seconds = {}, {}
    for m in METHODS:
        log(f"training {m} for {s.iterations} iterations (CPU)")
        t0 = time.time()
        model_dirs[m] = train(out, folder, split, s, m, seed)
        seconds[m] = time.time() - t0
    log("evaluating both models on the validation images")
    metrics = evaluate(folder, split, model_dirs, s, seed)
    res = DemoResult(out=out, report=out / "report.md", metrics=metrics, seconds=seconds)
    plot_curves(out)
    segment_tile(out, folder, split, model_dirs)
    write_report(res, s, split, quick)
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "seconds": seconds},
                                                 indent=2))
    return res
