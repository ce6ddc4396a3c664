"""``ircr demo``: IRCR-Net vs supervised-only on synthetic H&E-like tiles, on a CPU.

Steps (everything under ``out``):

1. generate synthetic labelled tiles (:mod:`ircr.data.synthetic`) and prepare them like any
   dataset (``data/``: patches, a seeded split with a small labelled fraction, val images);
2. train a small HoVer-Net with ``supervised`` and with ``ircr`` for the same number of
   iterations, same seed and same initialisation (``runs/<method>/``);
3. evaluate both final students on the validation images (whole-image sliding window, WBIS,
   AJI / Dice / PQ / F1);
4. segment one validation tile with :func:`ircr.load_model` (both demo models and the
   packaged ``default`` model) and draw overlays;
5. write ``report.md`` with the numbers, loss curves and overlays — saying plainly which did
   better (on a tiny CPU budget the difference can go either way).

No downloads, no GPU. Each stage prints what it does, its elapsed time and an estimate of
what is left (training shows a progress bar with ETA). A second run into the same folder
resumes: finished trainings are reused and interrupted ones continue from their checkpoint.
Times for an idle 2-core CPU (:data:`EXPECTED_TIME`) and measurements on a loaded one are in
``docs/results.md`` ("ircr demo timing"); they scale with the machine's load.
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
CURVES_INCHES = (11.0, 4.0)  # loss_curves.png: 1100 x 400 px
GT_COLOR = (0, 200, 0)
PRED_COLOR = (255, 40, 40)
METRICS = ("aji", "dice", "pq", "f1")
# minutes on an idle 2-core CPU (docs/results.md, "ircr demo timing"); shown before it starts
EXPECTED_TIME = {"full": "3-6 min", "quick": "10-30 s"}
IRCR_COST = 1.55  # IRCR / supervised training time of the full demo (9:00 / 5:52, measured)


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


def demo_threads() -> tuple[int, str]:
    """Torch threads for the demo and why: 2 on an idle machine, 1 when the cores are busy.

    On a shared machine extra threads mostly wait for a core (measured on 2 cores at load 15:
    12 supervised iterations took 87 s with 2 threads and 15 s with 1; docs/results.md).
    """
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores - 0.5:
        return 1, f"load {load:.1f} on {cores} cores: using 1 thread"
    n = max(1, min(2, cores))
    return n, f"load {load:.1f} on {cores} cores: using {n} thread{'s' if n > 1 else ''}"


def _mmss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


class Stages:
    """Numbered stage messages with elapsed time and an estimate of the time left."""

    def __init__(self, names: list[str], log: Callable[[str], None]) -> None:
        self.names, self.log = names, log
        self.t0 = time.time()
        self.k = 0

    def start(self, detail: str = "", eta_s: float | None = None) -> None:
        """Announce the next stage (``eta_s``: expected seconds of this stage, if known)."""
        self.k += 1
        eta = f"; expected ~{_mmss(eta_s)}" if eta_s else ""
        self.log(f"[{self.k}/{len(self.names)}] {self.names[self.k - 1]}"
                 + (f": {detail}" if detail else "")
                 + f" (elapsed {_mmss(time.time() - self.t0)}{eta})")


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


def experiment(folder: Path, split: str, s: DemoSettings, method: str, seed: int,
               progress: bool = False, device: str = "cpu") -> Any:
    """The experiment config of one demo run (tiny HoVer-Net, fixed iterations, ``device``)."""
    from ircr.train.config import experiment_from_dict, method_takes

    ipe = max(1, s.iterations // s.epochs)
    data = {
        "data": {"dataset": str(folder), "split": split, "patch_size": s.patch_size,
                 "context_margin": s.patch_size // 4, "batch_size": s.batch,
                 "batch_size_unlabelled": s.batch, "workers": 0},
        "model": {"width": s.width, "blocks": [1, 1, 1, 1], "decoder_units": [2, 2]},
        "train": {"epochs": s.epochs, "iterations_per_epoch": ipe, "lr": s.lr,
                  "lr_steps": [max(1, s.epochs - 1)], "seed": seed, "device": device,
                  "amp": "off", "progress": progress, "tensorboard": False, "val_every": 0,
                  "checkpoint_minutes": 1.0},
        # warm-up and ramp-up scaled to the demo's short budget (defaults: 100 + 200 iterations)
        "method": {"name": method, **({"diagnostic_overlays": 2} if method == "ircr" else {}),
                   **({"warmup_iterations": s.iterations // 8,
                       "rampup_iterations": max(1, s.iterations // 4)}
                      if method_takes(method, "warmup_iterations") else {})},
        "eval": {"window": s.patch_size, "overlap": s.patch_size // 4, "batch_size": 4},
    }
    return experiment_from_dict(data, where=f"demo ({method})")


def train(out: Path, folder: Path, split: str, s: DemoSettings, method: str, seed: int,
          progress: bool = False, log: Callable[[str], None] = _log,
          device: str = "cpu") -> Path:
    """Train one method (resumes a half-finished demo run); returns its model folder."""
    from ircr.train.trainer import Trainer

    run_dir = out / "runs" / method
    done = run_dir / "model" / "weights.pt"
    if done.is_file():
        log(f"{method}: finished model found in {done.parent}; reusing it (delete "
            f"{run_dir} to train again)")
        return done.parent
    if (run_dir / "checkpoints" / "last.pt").is_file():
        log(f"{method}: resuming the interrupted run in {run_dir}")
    trainer = Trainer(experiment(folder, split, s, method, seed, progress, device), run_dir,
                      resume="auto", config_source=f"demo ({method})")
    return trainer.run()


def evaluate(folder: Path, split: str, model_dirs: dict[str, Path], s: DemoSettings,
             seed: int, progress: bool = False,
             device: str = "cpu") -> dict[str, dict[str, float]]:
    """Validation metrics of each model folder (whole images, WBIS, per-image mean)."""
    from ircr.inference.evaluate import evaluate_models
    from ircr.inference.model_folder import load_model_folder
    from ircr.train import loaders

    cfg = experiment(folder, split, s, "supervised", seed)
    ds = loaders.open_prepared(folder, "demo")
    sp = loaders.resolve_split(ds, split, "demo")
    models: dict[str, Any] = {m: load_model_folder(p).model for m, p in model_dirs.items()}
    res = evaluate_models(models, ds, sp.val_images, cfg.eval, cfg.postproc, device,
                          progress=progress)
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
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=CURVES_INCHES, dpi=100)
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
    axes[0].set_title("supervised loss (mean over each epoch)", fontsize=10)
    axes[0].set_ylabel("L_sup (NP CE + Dice + HV MSE + MSGE)")
    axes[1].set_title("IRCR consistency terms, weighted as in the loss", fontsize=10)
    axes[1].set_ylabel("weighted loss")
    for ax in axes:
        ax.set_xlabel("training iteration (end of epoch)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def segment_tile(out: Path, folder: Path, split: str, model_dirs: dict[str, Path],
                 metrics: dict[str, dict[str, float]] | None = None,
                 device: str = "cpu") -> list[Path]:
    """Segment the first validation image with each model; write titled side-by-side panels."""
    import ircr
    from ircr.io.figures import panel_figure, thick_overlay
    from ircr.train import loaders

    ds = loaders.open_prepared(folder, "demo")
    sp = loaders.resolve_split(ds, split, "demo")
    idx = ds.index_of(sp.val_images[0])
    image, gt = np.asarray(ds.load_image(idx)), np.asarray(ds.load_inst(idx))
    n_gt = len(np.unique(gt[gt > 0]))
    panels = [(thick_overlay(image, gt, GT_COLOR), f"ground truth ({n_gt} nuclei)")]
    for m in METHODS:
        seg = ircr.load_model(model_dirs[m], device=device).segment(image, mpp=0.25)
        aji = (metrics or {}).get(m, {}).get("aji")
        score = f", val AJI {aji:.3f}" if aji is not None else ""
        panels.append((thick_overlay(image, np.asarray(seg.inst), PRED_COLOR),
                       f"{m} ({len(seg)} nuclei{score})"))
    panels.append(default_model_panel(image, gt, device))
    h, w = image.shape[:2]
    path = panel_figure(out / "segmentation.png", panels,
                        f"validation tile {sp.val_images[0]}: ground truth, both models and "
                        "the packaged default model",
                        legend=[(GT_COLOR, "ground-truth outline"),
                                (PRED_COLOR, "predicted outline")], ncols=4,
                        note=f"{w}x{h} px at 0.25 µm/px ({w * 0.25:.0f} µm wide)")
    return [path]


def diagnostics_figure(out: Path) -> Path | None:
    """All IRCR diagnostic overlays in one titled figure with a legend (``diagnostics.png``)."""
    import cv2

    from ircr.io.figures import panel_figure
    from ircr.ssl.diagnostics import KEPT, PAIR, REJECTED, STUDENT

    files = sorted((out / "runs" / "ircr" / "diagnostics").rglob("*.png"))
    if not files:
        return None
    panels = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            continue
        ep, _, patch = f.stem.removeprefix("overlay_").partition("_")
        panels.append((cv2.cvtColor(img, cv2.COLOR_BGR2RGB),
                       f"epoch {int(ep.lstrip('e') or 0)}, unlabelled patch {patch[1:]}"))
    legend = [(KEPT, "teacher nucleus kept (outline)"), (REJECTED, "rejected by the prior"),
              (STUDENT, "student outline"), (PAIR, "matched teacher-student pair")]
    return panel_figure(out / "diagnostics.png", panels,
                        "IRCR on unlabelled patches: teacher pseudo-labels, prior and matches",
                        legend=legend, ncols=4,
                        note="teacher pseudo-labels (green, red = rejected) and student "
                             "prediction (blue outlines) "
                             "on the same unlabelled patch, at the end of the epoch shown")


def default_model_panel(image: np.ndarray, gt: np.ndarray,
                        device: str = "cpu") -> tuple[np.ndarray, str]:
    """The same tile segmented by the packaged ``default`` model (trained on real MoNuSeg)."""
    import ircr
    from ircr.io.figures import thick_overlay
    from ircr.metrics import instance_metrics

    seg = ircr.load_model("default", device=device).segment(image, mpp=0.25)
    aji = instance_metrics(gt, np.asarray(seg.inst)).aji
    return (thick_overlay(image, np.asarray(seg.inst), PRED_COLOR),
            f"default model ({len(seg)} nuclei, AJI {aji:.3f})")


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
              "Segmentation of one validation tile (ground truth; supervised; IRCR; and the "
              "packaged `default` model, trained on real MoNuSeg tiles, that `ircr segment "
              "INPUT -o OUT` uses; its AJI is on this tile, the others' on all validation "
              "tiles):",
              "", "![segmentation](segmentation.png)", ""]
    if (res.out / "diagnostics.png").is_file():
        n = len(list((res.out / "runs" / "ircr" / "diagnostics").rglob("*.png")))
        lines += [f"IRCR diagnostics on unlabelled patches (all {n} overlays written during "
                  "training):", "", "![IRCR diagnostics](diagnostics.png)", ""]
    res.report.write_text("\n".join(lines) + "\n")


def run_demo(out: str | Path = "demo_out", quick: bool = False, seed: int = 0,
             log: Callable[[str], None] = _log, progress: bool = True,
             device: str = "cpu") -> DemoResult:
    """Run the whole demo into ``out``; returns the metrics and the report path.

    Rerunning into the same ``out`` resumes (finished trainings are reused, interrupted ones
    continue from their checkpoint). ``progress``: training/evaluation progress bars.
    ``device``: where training and inference run (``--device``; the timings and results in
    the docs are on CPU).
    """
    from ircr.inference.device import select_device

    device = str(select_device(device))  # an unknown/unavailable device fails before any work
    import torch

    from ircr.train.stop import TrainingStopped

    threads, why = demo_threads()
    torch.set_num_threads(threads)
    s = QUICK if quick else FULL
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IrcrError(f"{out}: cannot create the demo folder ({exc.strerror})") from None
    expected = EXPECTED_TIME["quick" if quick else "full"]
    log(f"{'quick' if quick else 'full'} demo into {out}: about {expected} on an idle "
        f"2-core CPU; longer when the machine is busy ({why})")
    st = Stages(["prepare synthetic data", *(f"train {m}" for m in METHODS),
                 "evaluate on validation images", "segment a tile, write figures + report"], log)
    st.start(f"{s.n_images} tiles of {s.image_size} px -> {out / 'data'}")
    folder, split = prepare_data(out, s, seed)
    model_dirs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for m in METHODS:
        eta = seconds.get("supervised", 0.0) * (IRCR_COST if m == "ircr" else 1.0) or None
        st.start(f"{s.iterations} iterations on {device}", eta)
        t0 = time.time()
        try:
            model_dirs[m] = train(out, folder, split, s, m, seed, progress, log, device)
        except TrainingStopped as stop:
            raise TrainingStopped(f"{stop}".split("; resume with")[0] + "; run the same "
                                  f"`ircr demo --out {out}` again to resume") from None
        seconds[m] = time.time() - t0
        log(f"{m} trained in {_mmss(seconds[m])}")
    st.start("whole-image sliding window + WBIS")
    metrics = evaluate(folder, split, model_dirs, s, seed, progress, device)
    res = DemoResult(out=out, report=out / "report.md", metrics=metrics, seconds=seconds)
    st.start()
    plot_curves(out)
    segment_tile(out, folder, split, model_dirs, metrics, device)
    diagnostics_figure(out)
    write_report(res, s, split, quick)
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "seconds": seconds},
                                                 indent=2))
    log(f"done in {_mmss(time.time() - st.t0)}")
    return res
