"""Issue 25 point 5: paired tests of the report on hand-made numbers.

Expected values are computed by hand / textbook formulas in this file, not by the code under
test: the t distribution with 2 degrees of freedom has the closed-form CDF
F(t) = 1/2 + t / (2 sqrt(t^2 + 2)); the exact Wilcoxon signed-rank p-value counts subsets of
the ranks; bootstrap intervals of tiny samples follow from the binomial distribution.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ircr.experiment.report import write_report
from ircr.experiment.significance import (
    bootstrap_ci,
    compare,
    image_diffs,
    paired_t_p,
    wilcoxon_p,
)


def t_p_df2(diffs: list[float]) -> float:
    """Two-sided p of a one-sample t-test with 3 values, by the df = 2 closed form."""
    n = len(diffs)
    assert n == 3
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = abs(mean) / (sd / math.sqrt(n))
    return 1.0 - t / math.sqrt(t * t + 2.0)  # 2 * (1 - F(t))


def test_paired_t_matches_the_df2_closed_form() -> None:
    # mean 0.02, sd 0.01 -> t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3; p = 1 - t / sqrt 14
    assert paired_t_p([0.01, 0.03, 0.02]) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14),
                                                           rel=1e-9)
    assert paired_t_p([0.01, 0.03, 0.02]) == pytest.approx(0.0741799, abs=1e-6)
    assert paired_t_p([-0.05, 0.01, -0.02]) == pytest.approx(t_p_df2([-0.05, 0.01, -0.02]),
                                                             rel=1e-9)
    assert paired_t_p([0.02]) is None  # one pair: no test
    assert paired_t_p([0.02, 0.02, 0.02]) is None  # no variation: t undefined


def test_wilcoxon_exact_p_by_counting_rank_subsets() -> None:
    # n = 5, all differences positive: W- = 0; only the empty subset of ranks sums to <= 0
    # -> p = 2 * 1/32
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # ranks 1..5, the third negative: W- = 3; subsets of {1..5} with sum <= 3:
    # {}, {1}, {2}, {3}, {1, 2} = 5 -> p = 2 * 5/32
    assert wilcoxon_p([1.0, 2.0, -3.0, 4.0, 5.0]) == pytest.approx(10 / 32)
    assert wilcoxon_p([0.0, 0.0]) is None


def test_bootstrap_interval_of_tiny_samples() -> None:
    # two values: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], 10000) == (0.0, 1.0)
    # nine zeros and a one: mean = Binomial(10, 0.1) / 10; P(X = 0) = 0.349 > 0.025 and
    # P(X <= 2) = 0.930 < 0.975 <= P(X <= 3) = 0.987 -> [0.0, 0.3]
    lo, hi = bootstrap_ci([0.0] * 9 + [1.0], 10000)  # type: ignore[misc]
    assert lo == 0.0 and hi == pytest.approx(0.3)
    assert bootstrap_ci([0.25, 0.25, 0.25], 500) == (0.25, 0.25)
    assert bootstrap_ci([], 100) is None and bootstrap_ci([0.5], 100) is None
    # seeded: the same interval twice
    xs = [0.1, -0.3, 0.2, 0.05, 0.4]
    assert bootstrap_ci(xs, 2000) == bootstrap_ci(xs, 2000)


def run(method: str, seeds: tuple[int, int], aji: float, images: dict[str, float] | None = None,
        status: str = "done") -> dict[str, Any]:
    res: dict[str, Any] = {"status": status}
    if status == "done":
        res["test"] = {"student": {"aji": aji, "dice": 0.7, "f1": 0.6, "pq": 0.5,
                                   "aji_plus": 0.5}}
        res["test_per_image"] = {"student": [{"image": k, "aji": v}
                                             for k, v in (images or {}).items()]}
    return {"run_id": f"{method}_r1-8_s{seeds[0]}_t{seeds[1]}", "method": method,
            "ratio": "1/8", "split_seed": seeds[0], "train_seed": seeds[1],
            "iterations": 1000, "result": res}


def hand_made_runs() -> list[dict[str, Any]]:
    """Seed-level AJI differences 0.01, 0.03, 0.02; image-level differences 0.1 .. 0.5."""
    s = [(0, 10), (1, 11), (2, 12)]
    return [
        # the reference row; image A is scored as two patches (mean 0.4)
        run("supervised", s[0], 0.50, {"A@0,0": 0.3, "A@0,128": 0.5, "B": 0.4, "C": 0.4}),
        run("supervised", s[1], 0.52, {"A": 0.4, "D": 0.4, "E": 0.4}),
        run("supervised", s[2], 0.48),
        run("supervised", (3, 13), 0.10, status="failed"),
        # the compared row: A differs by 0.05 and 0.15 (mean 0.1), B 0.2, C 0.3, D 0.4, E 0.5
        run("ircr", s[0], 0.51, {"A@0,0": 0.45, "A@0,128": 0.45, "B": 0.6, "C": 0.7}),
        run("ircr", s[1], 0.55, {"A": 0.55, "D": 0.8, "E": 0.9, "Z": 0.1}),
        run("ircr", s[2], 0.50),
        run("ircr", (4, 14), 0.99),  # no reference run with these seeds: unpaired, ignored
    ]


def test_pairs_by_seeds_and_by_image() -> None:
    runs = hand_made_runs()
    comps = compare(runs, "supervised", ["test"], ["student"], resamples=2000)
    aji = next(c for c in comps if c["metric"] == "aji")
    assert (aji["method"], aji["ratio"], aji["seeds"]["n"]) == ("ircr", "1/8", 3)
    assert aji["seeds"]["diff"] == pytest.approx(0.02)
    assert aji["seeds"]["p"] == pytest.approx(t_p_df2([0.01, 0.03, 0.02]), rel=1e-9)
    # 3 values: all three draws the smallest (0.01) with probability 1/27 = 0.037 > 0.025
    # -> the interval is [min, max]
    assert aji["seeds"]["ci"] == pytest.approx((0.01, 0.03))
    assert aji["images"]["n"] == 5
    assert aji["images"]["diff"] == pytest.approx(0.3)
    assert aji["images"]["p"] == pytest.approx(2 / 32)  # all five differences positive
    # metrics equal in both rows: difference 0, no t statistic
    dice = next(c for c in comps if c["metric"] == "dice")
    assert dice["seeds"]["diff"] == pytest.approx(0.0) and dice["seeds"]["p"] is None


def test_image_diffs_average_an_image_over_seeds() -> None:
    row = {(0, 10): {"A": 0.5, "B": 0.2}, (1, 11): {"A": 0.7}}
    ref = {(0, 10): {"A": 0.4, "B": 0.3}, (1, 11): {"A": 0.4}}
    assert image_diffs(row, ref) == pytest.approx([0.2, -0.1])  # A: (0.1 + 0.3) / 2


def write_folder(out: Path, runs: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    entries = []
    for r in runs:
        entries.append({k: r[k] for k in ("run_id", "method", "ratio", "split_seed",
                                          "train_seed", "iterations")}
                       | {"epochs": 1, "iterations_per_epoch": 1000, "lr_steps": [],
                          "expected_s": None, "config": {"method": {"name": "supervised"}}})
        d = out / "runs" / r["run_id"]
        d.mkdir(parents=True)
        doc = {**r["result"], "run_id": r["run_id"], "iterations": 1000, "wall_s": 1.0}
        (d / "metrics.json").write_text(json.dumps(doc))
    (out / "plan.json").write_text(json.dumps({
        "budget_minutes": None, "evaluate": ["student"], "test_dataset": "x",
        "significance": settings, "runs": entries}))


def test_report_has_the_significance_section(tmp_path: Path) -> None:
    write_folder(tmp_path, hand_made_runs(), {"reference": "supervised", "bootstrap": 1000})
    text = write_report(tmp_path, plots=False).read_text()
    assert "## Significance" in text and "reference row **supervised**" in text
    assert "1000 resamples" in text
    line = next(x for x in text.splitlines() if x.startswith("| ircr | 1/8 | AJI |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:6] == ["+0.0200", "3", f"{t_p_df2([0.01, 0.03, 0.02]):.3f}"]
    assert cells[7:10] == ["+0.3000", "5", "0.062"]
    with open(tmp_path / "significance.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    aji = next(r for r in rows if r["metric"] == "aji")
    assert float(aji["seeds_diff"]) == pytest.approx(0.02)
    assert float(aji["images_p"]) == pytest.approx(2 / 32)


def test_fig4_seed_points_are_every_finished_run() -> None:
    from fractions import Fraction

    from ircr.experiment.figures import _seed_points

    pts = sorted(_seed_points(hand_made_runs(), "ircr", "test"))
    assert pts == [(Fraction(1, 8), 0.50), (Fraction(1, 8), 0.51), (Fraction(1, 8), 0.55),
                   (Fraction(1, 8), 0.99)]
    assert _seed_points(hand_made_runs(), "supervised", "val") == []


def test_report_says_when_there_is_no_reference(tmp_path: Path) -> None:
    runs = [r for r in hand_made_runs() if r["method"] == "ircr"]
    write_folder(tmp_path, runs, {"reference": None, "bootstrap": 1000})
    text = write_report(tmp_path, plots=False).read_text()
    assert "No paired tests: no reference row (set 'reference:' in the protocol)." in text
