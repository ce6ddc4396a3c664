"""Paired significance tests of an experiment's rows against its reference row (report.md).

For every row (method, label ratio) and headline metric the report compares the row with the
protocol's reference row (``reference``; default ``supervised``, the paper's SupOnly) at the
same label ratio, on the same evaluation set and model:

* **over seeds**: pairs are the runs with the same (split seed, train seed); the test is the
  two-sided **paired t-test** (``scipy.stats.ttest_rel``, i.e. a one-sample t-test of the
  differences, n - 1 degrees of freedom). With 3 seeds it has little power: only large,
  consistent differences reach p < 0.05, and a signed-rank test could not go below p = 0.25.
* **over images**: the test images' metrics of both rows (``test_per_image`` of each run's
  ``metrics.json``; patches of ``test_unit: patch`` first averaged per image), paired by
  image; an image's difference is averaged over the seed pairs in which both rows scored it
  (the same image under three seeds is one observation, not three). The test is the two-sided
  **Wilcoxon signed-rank test** (``scipy.stats.wilcoxon``: exact for small n without ties,
  normal approximation otherwise; zero differences dropped), which does not assume normal
  differences: per-image AJI differences are skewed and heavy-tailed.
* each with a **95 % percentile bootstrap interval** of the mean difference: ``bootstrap``
  resamples (default 10000) of the pairs with replacement, numpy generator seeded with
  :data:`BOOTSTRAP_SEED`, so a report is reproducible.

Differences are row minus reference (positive = the row is better for every metric here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = (("aji", "AJI"), ("dice", "Dice"), ("f1", "F1_obj"), ("pq", "PQ"),
           ("aji_plus", "AJI+"))
BOOTSTRAP_SEED = 0


def paired_t_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test on ``diffs`` (row - reference); None when n < 2 or
    the differences do not vary (the t statistic is undefined)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2 or float(np.ptp(d)) == 0.0:
        return None
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def wilcoxon_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the Wilcoxon signed-rank test on ``diffs``; None when every
    difference is zero (nothing to rank)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if not np.any(d != 0.0):
        return None
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_ci(diffs: Sequence[float], resamples: int = 10000,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of the mean of ``diffs`` (None for fewer than 2
    values: one pair has no spread to resample)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // d.size)
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start:start + n] = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _seed_values(runs: list[dict[str, Any]], method: str, ratio: str, s: str, model: str,
                 metric: str) -> dict[tuple[int, int], float]:
    out = {}
    for r in runs:
        res = r["result"]
        if r["method"] != method or r["ratio"] != ratio or res.get("status") != "done":
            continue
        v = (res.get(s) or {}).get(model, {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[(int(r["split_seed"]), int(r["train_seed"]))] = float(v)
    return out


def _image_values(runs: list[dict[str, Any]], method: str, ratio: str, model: str,
                  metric: str) -> dict[tuple[int, int], dict[str, float]]:
    """Per seed pair: image -> metric (a patch row ``<image>@y,x`` averaged into its image)."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for r in runs:
        res = r["result"]
        if r["method"] != method or r["ratio"] != ratio or res.get("status") != "done":
            continue
        groups: dict[str, list[float]] = {}
        for row in (res.get("test_per_image") or {}).get(model, []):
            v = row.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                groups.setdefault(str(row["image"]).split("@")[0], []).append(float(v))
        if groups:
            out[(int(r["split_seed"]), int(r["train_seed"]))] = {
                k: sum(v) / len(v) for k, v in groups.items()}
    return out


def image_diffs(row: dict[tuple[int, int], dict[str, float]],
                ref: dict[tuple[int, int], dict[str, float]]) -> list[float]:
    """Row - reference per image, each averaged over the seed pairs where both scored it."""
    per_image: dict[str, list[float]] = {}
    for seeds, images in row.items():
        for name, v in images.items():
            if name in ref.get(seeds, {}):
                per_image.setdefault(name, []).append(v - ref[seeds][name])
    return [sum(v) / len(v) for _, v in sorted(per_image.items())]


def _stats(diffs: list[float], test: Any, resamples: int) -> dict[str, Any]:
    return {"n": len(diffs), "diff": (sum(diffs) / len(diffs)) if diffs else None,
            "p": test(diffs) if diffs else None, "ci": bootstrap_ci(diffs, resamples)}


def compare(runs: list[dict[str, Any]], reference: str, sets: Sequence[str],
            models: Sequence[str], resamples: int = 10000) -> list[dict[str, Any]]:
    """One dict per (set, model, method, ratio, metric) with the seed- and image-level
    comparison against ``reference`` at the same ratio: ``seeds`` / ``images`` each
    ``{n, diff, p, ci}`` (None where not computable)."""
    methods = [m for m in dict.fromkeys(r["method"] for r in runs) if m != reference]
    out = []
    for s in sets:
        for model in models:
            for method in methods:
                ratios = list(dict.fromkeys(r["ratio"] for r in runs if r["method"] == method))
                for ratio in ratios:
                    if not any(r["method"] == reference and r["ratio"] == ratio for r in runs):
                        continue
                    for metric, _ in METRICS:
                        a = _seed_values(runs, method, ratio, s, model, metric)
                        b = _seed_values(runs, reference, ratio, s, model, metric)
                        seeds = [a[k] - b[k] for k in sorted(a) if k in b]
                        imgs = (image_diffs(_image_values(runs, method, ratio, model, metric),
                                            _image_values(runs, reference, ratio, model,
                                                          metric)) if s == "test" else [])
                        if not seeds and not imgs:
                            continue
                        out.append({"set": s, "model": model, "method": method, "ratio": ratio,
                                    "metric": metric,
                                    "seeds": _stats(seeds, paired_t_p, resamples),
                                    "images": _stats(imgs, wilcoxon_p, resamples)})
    return out
