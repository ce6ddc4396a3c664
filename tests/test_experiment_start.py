"""Issue 26 points 1-2: the protocol's ``start: paper | stable`` and the consistency warm-up /
ramp-up compressed with the schedule under ``--budget-minutes``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.experiment import runner
from ircr.experiment.plan import Rate, format_plan, make_plan, plan_to_dict
from ircr.experiment.protocol import expand, load_protocol
from ircr.experiment.start import scaled
from ircr.train.config import experiment_from_dict

REPO = Path(__file__).resolve().parents[1]
PAPER = {"warmup_iterations": 0, "rampup_iterations": 0, "clamp_teacher_hv": False}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic 128 px images, 64 px patches: 3 train images = 12 patches (3 labelled at
    1/4, 9 unlabelled), 1 val image."""
    out = tmp_path_factory.mktemp("startds") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.25)
    return out


def write_protocol(path: Path, ds: Path, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(ds),
        "ratios": ["1/4"], "split_seeds": [0], "train_seeds": [10], "val_fraction": 0.25,
        "overrides": {"data.batch_size": 2, "data.batch_size_unlabelled": 1,
                      "data.context_margin": 8},
        "methods": [{"name": "supervised"}], **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


ROWS = [{"name": "supervised"}, {"name": "self_training"},
        {"name": "mt", "method": "mean_teacher"}, {"name": "ircr"},
        {"name": "mt_stable", "method": "mean_teacher", "start": "stable"}]


def test_paper_start_sets_the_paper_values_where_a_method_has_them(ds: Path,
                                                                    tmp_path: Path) -> None:
    paper = expand(load_protocol(write_protocol(tmp_path / "p.yaml", ds, methods=ROWS,
                                                start="paper")))
    stable = expand(load_protocol(write_protocol(tmp_path / "s.yaml", ds, methods=ROWS)))
    by_p = {r.method: r.config["method"] for r in paper}
    by_s = {r.method: r.config["method"] for r in stable}
    for row in ("mt", "ircr"):
        assert {k: by_p[row][k] for k in PAPER} == PAPER
        opts = experiment_from_dict(dict(next(r for r in paper if r.method == row).config),
                                    where="t").method.options
        assert (opts.warmup_iterations, opts.rampup_iterations, opts.clamp_teacher_hv) == \
            (0, 0, False)
        assert not set(PAPER) & set(by_s[row])  # stable: the config's (default) values
    # methods without those options are unchanged (no refusal, no new keys)
    assert by_p["supervised"] == by_s["supervised"] == {"name": "supervised"}
    assert by_p["self_training"] == by_s["self_training"] == {"name": "self_training"}
    # a row's own start wins over the protocol's
    assert not set(PAPER) & set(by_p["mt_stable"])
    # ... and a row may ask for the paper start under a stable protocol
    one = expand(load_protocol(write_protocol(tmp_path / "r.yaml", ds, methods=[
        {"name": "ircr", "start": "paper"}, {"name": "mt", "method": "mean_teacher"}])))
    assert {k: one[0].config["method"][k] for k in PAPER} == PAPER
    assert not set(PAPER) & set(one[1].config["method"])


@pytest.mark.parametrize("extra,key", [
    ({"start": "papr"}, "'start'"),
    ({"methods": [{"name": "ircr", "start": "fast"}]}, "'methods[0].start'")])
def test_unknown_start_is_one_line_naming_the_file(ds: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   extra: dict[str, Any], key: str) -> None:
    path = write_protocol(tmp_path / "bad.yaml", ds, **extra)
    assert main(["experiment", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error: ") and "\n" not in err and "Traceback" not in err
    assert str(path) in err and key in err and "'paper'" in err and "'stable'" in err


def test_report_states_the_start_of_each_row(ds: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    path = write_protocol(tmp_path / "p.yaml", ds, start="paper", iterations=2,
                          budget_epochs=1, evaluate=["student"], methods=[
                              {"name": "supervised"}, {"name": "mt", "method": "mean_teacher"},
                              {"name": "mt_stable", "method": "mean_teacher",
                               "start": "stable"}])
    out = tmp_path / "o"
    assert main(["experiment", str(path), "--out", str(out), "--progress-every", "0"]) == 0
    printed = capsys.readouterr().out
    # hand: 2 of 4 epochs x 9 it = 36 -> scale 1/18: warm-up 100 -> 6 -> floor 20, ramp-up 200
    # -> 11 -> floor 20
    assert "mt_r1-4_s0_t10" in printed and ", start paper" in printed
    assert ", start stable, warm-up 20 + ramp-up 20 (100 + 200 x 0.0556, floor 20)" in printed
    run = json.loads((out / "runs" / "mt_r1-4_s0_t10" / "run.json").read_text())
    assert {k: run["config"]["method"][k] for k in PAPER} == PAPER and run["start"] == "paper"
    md = (out / "report.md").read_text().split("## Significance")[0]  # the metric tables
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1]
            for line in md.splitlines() if line.startswith("| ") and " | 1/4 | " in line}
    assert rows == {"supervised": "—", "mt": "paper", "mt_stable": "stable"}
    with open(out / "report.csv", newline="") as fh:
        starts = {r["method"]: r["start"] for r in csv.DictReader(fh)}
    assert starts == {"supervised": "", "mt": "paper", "mt_stable": "stable"}


def test_budget_compresses_warmup_and_rampup_like_the_epochs(ds: Path, tmp_path: Path) -> None:
    path = write_protocol(tmp_path / "p.yaml", ds, budget_epochs=10, methods=[
        {"name": "supervised"}, {"name": "mt", "method": "mean_teacher"},
        {"name": "ircr_p", "method": "ircr", "start": "paper"},
        {"name": "mt_w5", "method": "mean_teacher",
         "overrides": {"method.warmup_iterations": 5}}],
        overrides={"data.batch_size": 2, "data.batch_size_unlabelled": 1,
                   "data.context_margin": 8, "train.epochs": 100, "train.lr_steps": [50]})
    proto = load_protocol(path)
    runs = expand(proto)
    runner.ensure_splits(runs, proto.val_fraction)
    rates = {r.method: Rate(10.0, 0.0, 0.0, 0.0, 1) for r in runs}
    # hand: 9 unlabelled patches / batch 1 = 9 it per epoch x 100 epochs = 900 iterations,
    # lr step at epoch 50 = iteration 450. 4 runs x N / 10 it/s <= 72 s -> N = 180 = 10
    # epochs x 18 it, lr step at epoch 5 = iteration 90: everything x 180/900 = 0.2
    plan = {p.method: p for p in make_plan(proto, runs, rates, budget_s=72.0)}
    mt = plan["mt"]
    assert (mt.epochs, mt.iterations_per_epoch, mt.lr_steps) == (10, 18, [5])
    assert mt.lr_steps[0] * mt.iterations_per_epoch == 0.2 * 450
    assert (mt.config["method"]["warmup_iterations"],
            mt.config["method"]["rampup_iterations"]) == (20, 40)  # 100 x 0.2, 200 x 0.2
    assert mt.start == "stable" and mt.consistency == {
        "warmup_iterations": 20, "rampup_iterations": 40, "scale": 0.2,
        "configured": {"warmup_iterations": 100, "rampup_iterations": 200}}
    assert plan_to_dict([mt])[0]["consistency"]["warmup_iterations"] == 20  # in plan.json
    assert "start stable, warm-up 20 + ramp-up 40 (100 + 200 x 0.2, floor 20)" in \
        format_plan([mt], 1, 1.2)
    # the paper's start stays 0 + 0; a row's own override wins; supervised has none
    assert {k: plan["ircr_p"].config["method"][k] for k in PAPER} == PAPER
    assert plan["ircr_p"].start == "paper"
    assert (plan["mt_w5"].config["method"]["warmup_iterations"],
            plan["mt_w5"].config["method"]["rampup_iterations"]) == (5, 40)
    assert plan["supervised"].consistency == {} and plan["supervised"].start == ""
    assert "warmup_iterations" not in plan["supervised"].config["method"]
    # the floor: 4 x N / 10 <= 24 s -> N = 60 = 10 x 6 it, scale 1/15: warm-up 100/15 = 6.7
    # and ramp-up 200/15 = 13.3 are raised to the floor of 20 iterations each
    low = {p.method: p for p in make_plan(proto, runs, rates, budget_s=24.0)}["mt"]
    assert (low.iterations, low.lr_steps) == (60, [5])
    assert (low.config["method"]["warmup_iterations"],
            low.config["method"]["rampup_iterations"]) == (20, 20)
    # a budget that fits the whole schedule changes nothing
    full = {p.method: p for p in make_plan(proto, runs, rates, budget_s=1000.0)}["mt"]
    assert full.iterations == 900 and full.consistency["scale"] == 1.0
    assert (full.config["method"]["warmup_iterations"],
            full.config["method"]["rampup_iterations"]) == (100, 200)


def test_scaled_rounds_half_up_within_floor_and_value() -> None:
    assert scaled(100, 0.255, 20) == 26  # 25.5 -> 26
    assert scaled(200, 0.3, 20) == 60
    assert scaled(100, 0.05, 20) == 20  # the floor
    assert scaled(10, 0.5, 20) == 10  # never above the configured value
    assert scaled(0, 0.5, 20) == 0 and scaled(100, 1.0, 20) == 100
