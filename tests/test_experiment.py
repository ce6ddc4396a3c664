"""`ircr experiment` on a tiny synthetic dataset: grid, equal budgets, resume, failures, report."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.experiment import runner
from ircr.experiment.plan import Rate, compress_schedule, make_plan
from ircr.experiment.protocol import expand, load_protocol
from ircr.experiment.report import mean_std, write_report
from ircr.experiment.runner import run_experiment
from ircr.experiment.status import run_status
from ircr.train.methods import Method, register_method

REPO = Path(__file__).resolve().parents[1]


@register_method("test_explodes")
class Explodes(Method):
    """A plug-in that fails at its third iteration (a failed run)."""

    def train_step(self, labelled: dict[str, Tensor],
                   unlabelled: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, float]]:
        if self.trainer.iteration >= 2:
            raise RuntimeError("boom at iteration 3")
        out = self.trainer.model(labelled["image"])
        return self.trainer.supervised_loss(out, labelled)[0], {}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic 128 px images, 64 px patches: 3 train images = 12 patches, 1 val image."""
    out = tmp_path_factory.mktemp("expsynth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.25)
    return out


def protocol(tmp: Path, ds: Path, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(ds),
        "ratios": ["1/4"], "split_seeds": [0, 1], "train_seeds": [10, 11],
        "val_fraction": 0.25,
        "overrides": {"train.epochs": 2, "train.lr_steps": [1], "data.batch_size": 4,
                      "data.batch_size_unlabelled": 2, "data.context_margin": 8,
                      "postproc.threshold": 0.3},
        "methods": [{"name": "supervised"}, {"name": "mt", "method": "mean_teacher"}],
        **extra}
    path = tmp / "proto.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def metrics_json(out: Path, run_id: str) -> dict[str, Any]:
    return json.loads((out / "runs" / run_id / "metrics.json").read_text())


@pytest.fixture(scope="module")
def full(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 methods x 1 ratio x 2 seeds, uninterrupted, evaluated on 2 other synthetic images."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("exp")
    test = tmp / "testset"
    prepare_dataset("synthetic", None, test, options={"n_images": 2, "size": 96, "seed": 7},
                    patch=64, ratio="1/4", val_fraction=0.25)
    run_experiment(protocol(tmp, synth, test_dataset=str(test)), tmp / "out", progress_every=0,
                   log=lambda s: None)
    return tmp / "out"


def split_counts(ds: Path, name: str) -> tuple[int, int]:
    doc = yaml.safe_load((ds / "splits" / f"{name}.yaml").read_text())
    return len(doc["labelled_patches"]), len(doc["unlabelled_patches"])


def test_grid_runs_end_to_end_with_equal_budgets(full: Path, synth: Path) -> None:
    ids = ["supervised_r1-4_s0_t10", "supervised_r1-4_s1_t11", "mt_r1-4_s0_t10",
           "mt_r1-4_s1_t11"]
    for rid in ids:
        doc = metrics_json(full, rid)
        assert doc["status"] == "done", doc
        lab, unl = split_counts(synth, f"ratio_1-4_seed{doc['split_seed']}_val0.25")
        # equal budget: 2 epochs x floor(#unlabelled / 2) for the supervised run too (its own
        # epoch would be floor(#labelled / 4) iterations)
        assert doc["iterations"] == 2 * (unl // 2) and unl // 2 > lab // 4
        assert set(doc["test"]["student"]) >= {"aji", "dice", "f1", "pq", "aji_plus"}
        assert doc["test"]["_images"] == 2
        assert set(doc["val"]["student"]) >= {"aji", "dice", "f1", "pq", "aji_plus"}
        cfg = yaml.safe_load((full / "runs" / rid / "config.yaml").read_text())
        assert cfg["train"]["seed"] == doc["train_seed"]
        assert cfg["data"]["split"] == f"ratio_1-4_seed{doc['split_seed']}_val0.25"
    assert "teacher" in metrics_json(full, "mt_r1-4_s0_t10")["val"]
    assert "teacher" not in metrics_json(full, "supervised_r1-4_s0_t10")["val"]
    for f in ("report.md", "report.csv", "fig4_aji.png", "curves_r1-4.png", "plan.json",
              "protocol.yaml"):
        assert (full / f).is_file(), f


def test_report_values_equal_the_run_metrics(full: Path) -> None:
    with open(full / "report.csv", newline="") as fh:
        rows = {(r["set"], r["model"], r["method"]): r for r in csv.DictReader(fh)}
    assert ("val", "teacher", "supervised") not in rows
    assert {k[0] for k in rows} == {"val", "test"}
    distinct = 0
    for (s, model, method), row in rows.items():
        a, b = (metrics_json(full, f"{method}_r1-4_{t}")[s][model] for t in ("s0_t10", "s1_t11"))
        assert row["runs_done"] == "2" and row["runs_planned"] == "2" and row["failed"] == "0"
        for key in ("aji", "dice", "f1", "pq", "aji_plus"):
            # hand formulas for two values: mean (a+b)/2, sample std |a-b|/sqrt(2)
            assert float(row[f"{key}_mean"]) == pytest.approx((a[key] + b[key]) / 2, abs=1e-6)
            assert float(row[f"{key}_std"]) == pytest.approx(abs(a[key] - b[key]) / math.sqrt(2),
                                                             abs=1e-6)
            distinct += a[key] != b[key]
    assert distinct >= 5  # the seeds really differ, so the check above is not vacuous
    md = (full / "report.md").read_text()
    a = metrics_json(full, "mt_r1-4_s0_t10")["val"]["teacher"]["aji"]
    b = metrics_json(full, "mt_r1-4_s1_t11")["val"]["teacher"]["aji"]
    assert f"{(a + b) / 2:.4f} ± {abs(a - b) / math.sqrt(2):.4f}" in md
    assert "## Validation images — teacher" in md and "| mt | 1/4 | 2/2 |" in md


def test_missing_run_is_counted_not_dropped(full: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(full, out)
    shutil.rmtree(out / "runs" / "mt_r1-4_s1_t11")
    write_report(out, plots=False)
    with open(out / "report.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh)
                   if (r["set"], r["model"], r["method"]) == ("val", "student", "mt"))
    assert (row["runs_done"], row["runs_planned"], row["missing"]) == ("1", "2", "1")
    only = metrics_json(out, "mt_r1-4_s0_t10")["val"]["student"]["aji"]
    assert float(row["aji_mean"]) == pytest.approx(only, abs=1e-6) and row["aji_std"] == ""
    md = (out / "report.md").read_text()
    assert "| mt | 1/4 | 1/2 (1 missing) |" in md and "| mt_r1-4_s1_t11 | missing |" in md


def test_std_is_the_sample_std() -> None:
    # hand: deviations -0.1, 0, 0.1 -> sum of squares 0.02 / (3 - 1) -> 0.1
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    # 1..4: mean 2.5, squares 2.25+0.25+0.25+2.25 = 5, / 3 -> sqrt(5/3) = 1.2909944
    assert mean_std([1.0, 2.0, 3.0, 4.0])[1] == pytest.approx(1.2909944, abs=1e-7)
    assert mean_std([0.4]) == (0.4, None)


def test_kill_and_rerun_skips_finished_and_resumes(full: Path, synth: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    proto = protocol(tmp_path, synth, methods=[{"name": "supervised"}])
    out = tmp_path / "out"
    real = runner.Progress.__call__

    def killer(self: runner.Progress, tr: Any) -> None:
        real(self, tr)
        if tr.run_dir.name == "supervised_r1-4_s1_t11" and tr.iteration == tr.ipe + 1:
            raise KeyboardInterrupt  # Ctrl-C in the second run, after its first epoch

    monkeypatch.setattr(runner.Progress, "__call__", killer)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(proto, out, progress_every=0, log=lambda s: None)
    first = out / "runs" / "supervised_r1-4_s0_t10" / "metrics.json"
    assert json.loads(first.read_text())["status"] == "done"
    second = out / "runs" / "supervised_r1-4_s1_t11"
    assert run_status(second)["status"] == "incomplete"
    md = (out / "report.md").read_text()  # written on Ctrl-C: the interrupted run is shown
    assert "| supervised | 1/4 | 1/2 (1 incomplete) |" in md
    mtime = first.stat().st_mtime_ns
    monkeypatch.setattr(runner.Progress, "__call__", real)
    lines: list[str] = []
    summary = run_experiment(proto, out, progress_every=0, log=lines.append)
    assert summary["skipped"] == 1 and summary["done"] == 1
    assert first.stat().st_mtime_ns == mtime
    ipe = metrics_json(full, "supervised_r1-4_s1_t11")["iterations"] // 2
    assert any(f"resuming at iteration {ipe}" in s for s in lines), lines
    progress = [s for s in lines if s.startswith("[1/1] supervised ratio 1/4 seed 1/11: it ")]
    assert progress and progress[-1].startswith(f"[1/1] supervised ratio 1/4 seed 1/11: it "
                                                f"{2 * ipe}/{2 * ipe} ")
    assert " it/s ETA " in progress[-1]
    assert lines[-1].startswith("experiment: 2 runs: 1 already finished, 1 done now, 0 failed")
    # the resumed run ends exactly where the uninterrupted one did (deterministic CPU)
    for rid in ("supervised_r1-4_s0_t10", "supervised_r1-4_s1_t11"):
        assert metrics_json(out, rid)["val"] == metrics_json(full, rid)["val"]


def test_failed_run_is_shown_in_the_report(synth: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    proto = protocol(tmp_path, synth, split_seeds=[0], train_seeds=[10],
                     methods=[{"name": "supervised"}, {"name": "explodes",
                                                       "method": "test_explodes"}])
    out = tmp_path / "out"
    summary = run_experiment(proto, out, progress_every=0, log=lambda s: None)
    assert summary["failed"] == 1 and summary["done"] == 1
    doc = metrics_json(out, "explodes_r1-4_s0_t10")
    assert doc["status"] == "failed" and "boom at iteration 3" in doc["error"]
    with open(out / "report.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh) if r["model"] == "student"}
    assert rows["explodes"]["failed"] == "1" and rows["explodes"]["runs_done"] == "0"
    assert rows["explodes"]["aji_mean"] == "" and rows["supervised"]["aji_mean"] != ""
    md = (out / "report.md").read_text()
    assert "| explodes | 1/4 | 0/1 (1 failed) |" in md
    assert "boom at iteration 3" in md
    # the report command rebuilds the same report from the run folders
    (out / "report.csv").unlink()
    assert main(["experiment", "report", str(out)]) == 0
    assert (out / "report.csv").is_file()


def test_compress_schedule_keeps_the_lr_step_fraction() -> None:
    # 150 epochs, step at 100 (2/3): smallest exact epoch count 3; ~10 -> 9 epochs, step at 6
    assert compress_schedule(3000, 150, [100], 10) == (9, 333, [6])
    # tiny config: 4 epochs, step at 3 -> 4 epochs of 2 iterations, step at 3
    assert compress_schedule(10, 4, [3], 2) == (4, 2, [3])
    # steps at or after the end never happen and are dropped
    assert compress_schedule(40, 2, [5], 2) == (2, 20, [])


def test_budget_minutes_plans_equal_iterations(synth: Path, tmp_path: Path) -> None:
    proto_path = protocol(tmp_path, synth, split_seeds=[0], train_seeds=[10], budget_epochs=2,
                          overrides={"train.epochs": 4, "train.lr_steps": [3],
                                     "data.batch_size_unlabelled": 2})
    proto = load_protocol(proto_path)
    runs = expand(proto)
    runner.ensure_splits(runs, proto.val_fraction)
    rates = {"supervised": Rate(10.0, 0.0, 0.0, 0.0, 1), "mt": Rate(5.0, 0.0, 0.0, 0.0, 1)}
    # hand: 9 unlabelled patches / batch 2 = 4 it per epoch x 4 epochs = 16 (full schedule);
    # time = N/10 + N/5 = 0.3 N s <= 3 s -> N = 10 -> 4 epochs x 2 it (step at 3 of 4)
    plan = make_plan(proto, runs, rates, budget_s=3.0, jobs=1)
    assert [(p.epochs, p.iterations_per_epoch, p.lr_steps) for p in plan] == [(4, 2, [3])] * 2
    assert sum(p.expected_s or 0 for p in plan) == pytest.approx(8 / 10 + 8 / 5)
    # two jobs double the capacity: 0.3 N <= 2 x 2 s -> N = 13 -> 4 epochs x 3 it
    plan2 = make_plan(proto, runs, rates, budget_s=2.0, jobs=2)
    assert {p.iterations for p in plan2} == {12}
    # a budget larger than the schedule keeps the full schedule
    plan3 = make_plan(proto, runs, rates, budget_s=100.0, jobs=1)
    assert [(p.epochs, p.iterations_per_epoch) for p in plan3] == [(4, 4)] * 2
    with pytest.raises(IrcrError, match="less than one iteration"):
        make_plan(proto, runs, rates, budget_s=0.01, jobs=1)


def test_budget_minutes_measures_rates_and_prints_the_plan(synth: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    proto = protocol(tmp_path, synth, split_seeds=[0], train_seeds=[10], warmup_iterations=4)
    lines: list[str] = []
    # (a dry run trains only the warm-up: a roomy budget costs nothing and survives a loaded CPU)
    run_experiment(proto, tmp_path / "out", budget_minutes=3.0, dry_run=True, log=lines.append)
    rates = [s for s in lines if s.startswith("warm-up: ") and " it/s, setup " in s]
    assert {s.split()[1] for s in rates} == {"supervised", "mt"}
    assert all(float(s.split()[2]) > 0 for s in rates)
    plan = next(s for s in lines if s.startswith("plan: "))
    runs = [s.split() for s in plan.splitlines() if s.startswith("  ") and " it = " in s]
    assert len(runs) == 2 and len({r[1] for r in runs}) == 1 and int(runs[0][1]) >= 1
    assert any(s.startswith("plan: 2 runs") for s in lines)
    # a dry run commits nothing (issue 27): no plan.json, so another budget is not refused
    assert not (tmp_path / "out").exists()
    run_experiment(proto, tmp_path / "out", budget_minutes=2.0, dry_run=True,
                   log=lambda s: None)


def test_protocol_errors_are_one_line(tmp_path: Path, synth: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = protocol(tmp_path, synth, colour="red")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error: ") and "unknown config key 'colour'" in err
    assert "\n" not in err
    bad = protocol(tmp_path, synth, methods=[{"name": "x", "method": "nope"}])
    with pytest.raises(IrcrError, match="method.name"):
        load_protocol(bad) and expand(load_protocol(bad), str(bad))
    bad = protocol(tmp_path, synth, split_seeds=[0, 1, 2], train_seeds=[10, 11])
    with pytest.raises(IrcrError, match="same length"):
        load_protocol(bad)


@pytest.mark.parametrize("name,n_runs", [
    # 6 methods (SupOnly, ST, MT, IRCR, CDCL, PG-FANet) x 4 ratios x 3 seeds + FullSup x 3
    # seeds + BASS x 4 ratios x 3 seeds
    ("monuseg_table2", 6 * 4 * 3 + 3 + 4 * 3),
    ("monuseg_table3", 5 * 3), ("monuseg_table4", 6 * 3), ("monuseg_quick", 3),
    ("consep", 87), ("pannuke", 87), ("monusac", 87), ("cpm15", 6 * 3 * 3 + 3 + 3 * 3),
    ("monuseg_cpu", 2 * 2), ("monuseg_bass_table1", 3 * 3)])
def test_shipped_protocols_are_valid(name: str, n_runs: int) -> None:
    path = REPO / "configs" / "protocols" / f"{name}.yaml"
    runs = expand(load_protocol(path), str(path))
    assert len(runs) == n_runs
    assert len({r.run_id for r in runs}) == n_runs
    suffix = {"cpm15": "_val0.2", "monuseg_bass_table1": "_val0.267_test0.2"}.get(name, "")
    for r in runs:
        assert r.config["data"]["split"] == (
            f"ratio_{r.ratio.replace('/', '-')}_seed{r.split_seed}{suffix}")


def test_table3_rows_keep_their_ablation_configs() -> None:
    path = REPO / "configs" / "protocols" / "monuseg_table3.yaml"
    runs = {r.method: r for r in expand(load_protocol(path), str(path))}
    assert runs["suponly"].config["method"]["name"] == "supervised"
    assert runs["scheme2"].config["method"] == {"name": "ircr", "piac": False, "miac": True,
                                                "miac_boundary_beta": 0.0}
    assert runs["ours"].config["method"]["piac"] is True


def test_self_training_rate_is_measured_on_its_supervised_step(synth: Path,
                                                               tmp_path: Path) -> None:
    """The warm-up of a self-training row drops its own option (rounds) for the supervised run."""
    from ircr.experiment.plan import measure_rate

    torch.set_num_threads(1)
    proto = load_protocol(protocol(tmp_path, synth, split_seeds=[0], train_seeds=[10],
                                   methods=[{"name": "st", "method": "self_training",
                                             "overrides": {"method.rounds": 2}}]))
    runs = expand(proto)
    runner.ensure_splits(runs, proto.val_fraction)
    assert runs[0].config["method"] == {"name": "self_training", "rounds": 2}
    rate = measure_rate(runs[0], tmp_path / "warm", 3)
    assert rate.it_per_s > 0 and not (tmp_path / "warm").exists()
