"""Experiment plots (matplotlib, Agg): AJI vs label ratio (paper Fig. 4), training curves."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path
from typing import Any

# Seeds of one method share its colour and differ in marker and line style (curves).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seed_points(runs: list[dict[str, Any]], method: str, chosen: str
                 ) -> list[tuple[Fraction, float]]:
    """(ratio, student AJI) of every finished run of ``method`` on set ``chosen``."""
    pts = []
    for r in runs:
        res = r.get("result", {})
        v = (res.get(chosen) or {}).get("student", {}).get("aji")
        if r["method"] == method and res.get("status") == "done" and isinstance(v, float):
            pts.append((Fraction(r["ratio"]), v))
    return pts


def plot_aji_vs_ratio(rows: list[dict[str, Any]], path: Path,
                      runs: list[dict[str, Any]] | None = None) -> Path:
    """Mean AJI (student; test images when evaluated, else validation) vs ratio, std bars,
    and (``runs`` given) every seed's AJI as a small open marker of the method's colour."""
    plt = _plt()
    chosen = "test" if any(r["set"] == "test" and r["aji_mean"] is not None for r in rows) \
        else "val"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        pts = sorted((Fraction(r["ratio"]), r["aji_mean"], r["aji_std"] or 0.0) for r in rows
                     if r["set"] == chosen and r["model"] == "student"
                     and r["method"] == method and r["aji_mean"] is not None)
        if not pts:
            continue
        shift = 2 ** (0.04 * (i - (len(methods) - 1) / 2))  # side by side, not on top
        xs = [float(p[0]) * shift for p in pts]
        bars = ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                           capsize=3, label=method)
        seeds = _seed_points(runs or [], method, chosen)
        if seeds:
            ax.scatter([float(x) * shift * 1.03 for x, _ in seeds], [y for _, y in seeds], s=14,
                       facecolors="none", edgecolors=bars[0].get_color(), linewidths=0.8,
                       zorder=3)
    ratios = sorted({Fraction(r["ratio"]) for r in rows})
    ax.set_xscale("log", base=2)
    if ratios:
        ax.set_xlim(float(min(ratios)) / 1.5, float(max(ratios)) * 1.5)
    ax.set_xticks([float(r) for r in ratios], [str(r) for r in ratios])
    ax.minorticks_off()
    ax.set_xlabel("labelled ratio")
    ax.set_ylabel(f"AJI ({'test' if chosen == 'test' else 'validation'} images, student)")
    ax.set_title("AJI vs label ratio (mean ± sample std; open markers: seeds)"
                 if runs else "AJI vs label ratio (mean ± sample std over seeds)")
    ax.grid(alpha=0.3)
    if methods:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(key) and r.get("iterations"):
            xs.append(float(r["iterations"]))
            ys.append(float(r[key]))
    return xs, ys


def _unsup(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Weighted unsupervised part of the loss: train_loss - train_sup (when both logged)."""
    out = []
    for r in rows:
        if r.get("train_loss") and r.get("train_sup"):
            out.append({**r, "unsup": str(float(r["train_loss"]) - float(r["train_sup"]))})
    return out


def plot_curves(out: Path, runs: list[dict[str, Any]]) -> list[Path]:
    """One page per ratio: supervised loss, unsupervised loss, val AJI of every run.

    Colour = method; each seed pair (split, train) its own marker and line style (the same
    on every page), so the seeds of one method stay apart even as single points.
    """
    plt = _plt()
    pages = []
    methods = list(dict.fromkeys(r["method"] for r in runs))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ratio in sorted({r["ratio"] for r in runs}, key=Fraction):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        seeds: dict[tuple[int, int], int] = {}
        for r in [r for r in runs if r["ratio"] == ratio]:
            rows = _read_csv(out / "runs" / r["run_id"] / "metrics.csv")
            k = seeds.setdefault((r["split_seed"], r["train_seed"]), len(seeds))
            label = f"{r['method']} s{r['split_seed']}/{r['train_seed']}"
            # colour = method; marker and line style = seed (short runs are only points)
            kw = {"color": colors[r["method"]], "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
                  "label": label, "marker": MARKERS[k % len(MARKERS)], "markersize": 4}
            sup = "train_sup" if any(x.get("train_sup") for x in rows) else "train_loss"
            axes[0].plot(*_series(rows, sup), **kw)
            axes[1].plot(*_series(_unsup(rows), "unsup"), **kw)
            axes[2].plot(*_series(rows, "val_student_aji"), **kw)
        for ax, title in zip(axes, ("supervised loss", "unsupervised loss (weighted)",
                                    "val AJI (student)"), strict=True):
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        axes[2].legend(fontsize=7)
        fig.suptitle(f"training curves, labelled ratio {ratio}")
        fig.tight_layout()
        path = out / f"curves_r{ratio.replace('/', '-')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        pages.append(path)
    return pages
