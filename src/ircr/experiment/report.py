"""Experiment report from the run folders: report.md, report.csv, Fig.-4 plot, training curves.

Rows are (evaluation set, model, method, label ratio) — the paper's Table 2 layout (one block per
evaluation set and model, methods x ratios). Each metric is ``mean ± std`` over the seeds of
the finished runs; **std is the sample standard deviation (ddof = 1)**, shown as ``—`` (empty in
the CSV) when fewer than two runs finished. Every planned run is counted: the Runs column says
``done/planned`` and how many failed, are incomplete or missing, and the run table at the end
lists each run with its status and error, so nothing is dropped silently. The Start column
says which consistency start the row's runs used (``paper`` / ``stable`` / ``custom``,
``—`` for a method without one; :mod:`ircr.experiment.start`).

Significance (:mod:`ircr.experiment.significance`): every row against the reference row
(``reference:`` of the protocol, default ``supervised``) at the same label ratio — the mean
difference with a paired t-test over seeds and a Wilcoxon signed-rank test over test images,
each with a seeded 95 % bootstrap interval; also in ``significance.csv``.

``ircr experiment report DIR`` calls :func:`write_report` (the run folders are the truth).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.experiment.status import run_status

COLUMNS = (("aji", "AJI"), ("dice", "Dice"), ("f1", "F1_obj"), ("pq", "PQ"),
           ("aji_plus", "AJI+"))
SETS = (("test", "Test images"), ("val", "Validation images"))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None when fewer than 2 values)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def load_runs(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``plan.json`` and, per planned run, its plan entry merged with its status."""
    from ircr.experiment.planfile import read_plan
    from ircr.experiment.short import short_reason

    plan_path = out / "plan.json"
    if not plan_path.is_file():
        raise IrcrError(f"{out}: not an experiment folder (no plan.json)")
    plan = read_plan(plan_path, fix="rerun the experiment with --replan")
    runs = []
    for entry in plan["runs"]:
        st = run_status(out / "runs" / entry["run_id"])
        runs.append({**{k: v for k, v in entry.items() if k != "config"}, "result": st,
                     "short": short_reason(entry["config"], int(entry["iterations"])),
                     "start": _start_of(entry)})
    return plan, runs


def _start_of(entry: dict[str, Any]) -> str:
    """The run's consistency start (plans made before the ``start`` key: from its config)."""
    from ircr.experiment.start import start_label

    if isinstance(entry.get("start"), str):
        return str(entry["start"])
    return start_label(entry["config"])


def _ratio_key(r: str) -> Fraction:
    return Fraction(r)


def summarize(plan: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (set, model, method, ratio) with counts and mean/std of each metric."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    ratios = sorted({r["ratio"] for r in runs}, key=_ratio_key)
    sets = [s for s, _ in SETS if any(r["result"].get(s) for r in runs)
            or (s == "test" and plan.get("test_dataset"))]
    rows = []
    for s in sets:
        for model in plan.get("evaluate", ["student"]):
            for ratio in ratios:
                for method in methods:
                    group = [r for r in runs if r["method"] == method and r["ratio"] == ratio]
                    if group:
                        rows.append(_row(s, model, method, ratio, group))
    return [r for r in rows if r["has_model"] or r["runs_done"] < r["runs_planned"]]


def _row(s: str, model: str, method: str, ratio: str,
         group: list[dict[str, Any]]) -> dict[str, Any]:
    status = [g["result"].get("status", "missing") for g in group]
    done = [g for g in group if g["result"].get("status") == "done"]
    vals = [g["result"].get(s, {}).get(model) for g in done]
    present = [v for v in vals if v]
    row: dict[str, Any] = {
        "set": s, "model": model, "method": method, "ratio": ratio,
        "runs_done": len(done), "runs_planned": len(group),
        "failed": status.count("failed"), "incomplete": status.count("incomplete"),
        "missing": status.count("missing"), "has_model": bool(present) or not done,
        "iterations": "/".join(str(i) for i in sorted({int(g["iterations"]) for g in group})),
        "too_short": sum(1 for g in group if g.get("short")),
        "start": "/".join(sorted({str(g.get("start") or "") for g in group} - {""})),
        "n_values": len(present)}
    for key, _ in COLUMNS:
        xs = [float(v[key]) for v in present if key in v and v[key] is not None]
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(xs) if xs else (None, None)
    return row


def _runs_cell(r: dict[str, Any]) -> str:
    cell = f"{r['runs_done']}/{r['runs_planned']}"
    notes = [f"{r[k]} {k}" for k in ("failed", "incomplete", "missing") if r[k]]
    return cell + (f" ({', '.join(notes)})" if notes else "")


def _cell(r: dict[str, Any], key: str) -> str:
    m, s = r[f"{key}_mean"], r[f"{key}_std"]
    if m is None:
        return "failed" if r["failed"] else "—"
    return f"{m:.4f} ± {s:.4f}" if s is not None else f"{m:.4f} ± —"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``report.csv``: one row per (set, model, method, ratio); empty = not available."""
    cols = ["set", "model", "method", "ratio", "start", "runs_done", "runs_planned", "failed",
            "incomplete", "missing", "iterations", "too_short"]
    cols += [f"{k}_{stat}" for k, _ in COLUMNS for stat in ("mean", "std")]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                        for k, v in r.items()})


def _run_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| Run | Status | Iterations | Wall | Val AJI (student) | Test AJI (student) | Note |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        res = r["result"]
        va = res.get("val", {}).get("student", {}).get("aji")
        ta = res.get("test", {}).get("student", {}).get("aji")
        wall = res.get("wall_s")
        it = res.get("iterations")
        lines.append(
            f"| {r['run_id']} | {res.get('status', 'missing')} | "
            f"{'' if it is None else it}/{r['iterations']} | "
            f"{'' if wall is None else f'{wall / 60:.1f} min'} | "
            f"{'' if va is None else f'{va:.4f}'} | {'' if ta is None else f'{ta:.4f}'} | "
            f"{_note(r).replace('|', '/')} |")
    return lines


def _note(r: dict[str, Any]) -> str:
    parts = [str(r["result"].get("error", ""))] + ([f"TOO SHORT: {r['short']}"]
                                                   if r.get("short") else [])
    return "; ".join(p for p in parts if p)


def short_banner(runs: list[dict[str, Any]]) -> list[str]:
    """The warning at the top of report.md when runs are too short (experiment.short)."""
    from ircr.experiment.short import warning_lines

    short = {str(r["run_id"]): str(r["short"]) for r in runs if r.get("short")}
    lines = warning_lines(short, len(runs))
    if not lines:
        return []
    return ["> **" + lines[0] + "**", *[">" + line for line in lines[1:]], ""]


def significance(plan: dict[str, Any], runs: list[dict[str, Any]]
                 ) -> tuple[str | None, int, list[dict[str, Any]]]:
    """(reference row, bootstrap resamples, comparisons) of an experiment (plan.json's
    ``significance``; plans made before it: ``supervised`` when present, 10000)."""
    from ircr.experiment.significance import compare

    settings = plan.get("significance") or {}
    names = {r["method"] for r in runs}
    ref = settings.get("reference", "supervised" if "supervised" in names else None)
    resamples = int(settings.get("bootstrap", 10000))
    if ref is None or ref not in names:
        return ref, resamples, []
    sets = [s for s, _ in SETS if any(r["result"].get(s) for r in runs)]
    return ref, resamples, compare(runs, ref, sets, plan.get("evaluate", ["student"]),
                                   resamples)


def _num(v: float | None, fmt: str = "+.4f") -> str:
    return "—" if v is None else format(v, fmt)


def _p(v: float | None) -> str:
    return "—" if v is None else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def _ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def significance_lines(ref: str | None, resamples: int,
                       comps: list[dict[str, Any]]) -> list[str]:
    """The report.md section of the paired tests (:mod:`ircr.experiment.significance`)."""
    from ircr.experiment.significance import METRICS

    lines = ["## Significance", ""]
    if not comps:
        why = ("no reference row (set 'reference:' in the protocol)" if ref is None else
               f"no finished pair of runs with the reference row '{ref}' at the same ratio")
        return lines + [f"No paired tests: {why}.", ""]
    lines += [f"Each row minus the reference row **{ref}** at the same label ratio (positive ="
              " better). Seeds: paired by (split seed, train seed), two-sided paired t-test. "
              "Images: test images paired by image (each image's difference averaged over the "
              "seeds), two-sided Wilcoxon signed-rank test. 95 % CI: percentile bootstrap of "
              f"the mean difference, {resamples} resamples, seed 0. Few seeds give the t-test "
              "little power (3 seeds: p < 0.05 needs |mean| > 4.3 standard errors); p-values "
              "are not corrected for the many comparisons (docs/experiment.md).", ""]
    titles = dict(METRICS)
    for s, title in SETS:
        for model in dict.fromkeys(c["model"] for c in comps):
            block = [c for c in comps if c["set"] == s and c["model"] == model]
            if not block:
                continue
            lines += [f"### {title} — {model}", "",
                      "| Method | Labelled | Metric | Δ (seeds) | n | p (t) | 95 % CI | "
                      "Δ (images) | n | p (Wilcoxon) | 95 % CI |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for c in block:
                a, b = c["seeds"], c["images"]
                lines.append(f"| {c['method']} | {c['ratio']} | {titles[c['metric']]} | "
                             f"{_num(a['diff'])} | {a['n']} | {_p(a['p'])} | {_ci(a['ci'])} | "
                             f"{_num(b['diff'])} | {b['n']} | {_p(b['p'])} | {_ci(b['ci'])} |")
            lines.append("")
    return lines


def write_significance_csv(comps: list[dict[str, Any]], path: Path) -> None:
    """``significance.csv``: one row per comparison (empty = not computable)."""
    cols = ["set", "model", "method", "ratio", "metric"]
    stats = [f"{lvl}_{k}" for lvl in ("seeds", "images")
             for k in ("n", "diff", "p", "ci_low", "ci_high")]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols + stats)
        for c in comps:
            vals: list[Any] = [c[k] for k in cols]
            for lvl in ("seeds", "images"):
                st = c[lvl]
                ci = st["ci"] or (None, None)
                vals += [st["n"], st["diff"], st["p"], ci[0], ci[1]]
            w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                        for v in vals])


def write_markdown(plan: dict[str, Any], runs: list[dict[str, Any]],
                   rows: list[dict[str, Any]], path: Path, figures: list[Path],
                   sig: list[str] | None = None) -> None:
    """``report.md``: Table-2-style blocks, the run list and the figures."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    budget = plan.get("budget_minutes")
    lines = ["# Experiment report", "",
             f"Generated {now} from {len(runs)} planned runs"
             + (f" (--budget-minutes {budget:g})" if budget else "") + ".",
             "Cells: mean ± std over seeds; std is the sample standard deviation (ddof = 1), "
             "— when fewer than two runs finished. Runs: finished/planned.", "",
             *short_banner(runs)]
    for s, title in SETS:
        for model in plan.get("evaluate", ["student"]):
            block = [r for r in rows if r["set"] == s and r["model"] == model]
            if not block:
                continue
            lines += [f"## {title} — {model}", "",
                      "| Method | Labelled | Runs | Iterations | "
                      + " | ".join(t for _, t in COLUMNS) + " | Start |",
                      "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
            for r in block:
                lines.append(f"| {r['method']} | {r['ratio']} | {_runs_cell(r)} | "
                             f"{r['iterations']}{' **TOO SHORT**' if r['too_short'] else ''} | "
                             + " | ".join(_cell(r, k) for k, _ in COLUMNS)
                             + f" | {r['start'] or '—'} |")
            lines.append("")
    lines += [*(sig or []), "## Runs", "", *_run_lines(runs), ""]
    if figures:
        lines += ["## Figures", "", *[f"![{f.stem}]({f.name})" for f in figures], ""]
    path.write_text("\n".join(lines))


def write_report(out: str | Path, plots: bool = True) -> Path:
    """Rebuild ``report.md``, ``report.csv`` and the plots of experiment folder ``out``."""
    out = Path(out)
    plan, runs = load_runs(out)
    rows = summarize(plan, runs)
    write_csv(rows, out / "report.csv")
    ref, resamples, comps = significance(plan, runs)
    write_significance_csv(comps, out / "significance.csv")
    figures: list[Path] = []
    if plots:
        from ircr.experiment.figures import plot_aji_vs_ratio, plot_curves

        figures.append(plot_aji_vs_ratio(rows, out / "fig4_aji.png", runs))
        figures += plot_curves(out, runs)
    write_markdown(plan, runs, rows, out / "report.md", figures,
                   significance_lines(ref, resamples, comps))
    return out / "report.md"
