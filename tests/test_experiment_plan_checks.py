"""Issue 28 points 9-10 and issue 27 point 11: duplicate runs, BASS, plan.json shape, an edited
protocol (refused / --replan), too-short runs, dry runs and the budget clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.experiment import plan as planning
from ircr.experiment import runner
from ircr.experiment.plan import Rate, SplitSize, expected_seconds
from ircr.experiment.protocol import expand, load_protocol
from ircr.experiment.short import MIN_ITERATIONS, short_reason
from ircr.io.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic 96 px images, 64 px patches: 2 train images, 1 val image."""
    out = tmp_path_factory.mktemp("planchecks") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 3, "size": 96}, patch=64,
                    ratio="1/2", val_fraction=0.34)
    return out


def write_protocol(path: Path, ds: Path, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(ds),
        "ratios": ["1/2"], "split_seeds": [0], "train_seeds": [10], "val_fraction": 0.34,
        "iterations": 2, "budget_epochs": 1,
        "overrides": {"data.batch_size": 2, "data.batch_size_unlabelled": 2,
                      "data.context_margin": 8, "train.lr_steps": []},
        "methods": [{"name": "supervised"}], **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra,words", [
    ({"split_seeds": [0, 0], "train_seeds": [10, 10]}, "(split 0, train 10) appears twice"),
    ({"split_seeds": [0, 0], "train_seeds": [10], "seeds": "crossed"}, "appears twice"),
    ({"ratios": ["1/4", "0.25"]}, "'1/4' and '0.25' are the same label ratio (1/4)"),
    ({"methods": [{"name": "a", "method": "supervised", "ratios": ["1/2", "0.5"]}]},
     "methods[0].ratios"),
])
def test_duplicate_run_ids_are_refused(ds: Path, tmp_path: Path, extra: dict[str, Any],
                                       words: str, capsys: pytest.CaptureFixture[str]) -> None:
    proto = write_protocol(tmp_path / "p.yaml", ds, **extra)
    assert main(["experiment", str(proto), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert words in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_bass_with_a_time_budget_is_refused(ds: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # BASS rows run since issue 25 (tests/test_experiment_bass.py); a time budget cannot
    # shorten their own stage schedules, so it is refused before any warm-up
    proto = write_protocol(tmp_path / "p.yaml", ds, methods=[{"name": "bass"}])
    assert main(["experiment", str(proto), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "5"]) == 2
    assert "method 'bass' trains on its own stage schedules" in one_line_error(capsys)


@pytest.mark.parametrize("doc,problem", [
    ([], "a JSON list, not an object"),
    ({"budget_minutes": None}, "key 'runs' missing or not a list"),
    ({"budget_minutes": None, "runs": [{"run_id": "x"}]}, "runs[0]: missing key 'method'"),
])
def test_plan_json_of_the_wrong_shape_is_one_line(ds: Path, tmp_path: Path, doc: Any,
                                                  problem: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    proto = write_protocol(tmp_path / "p.yaml", ds)
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(doc))
    assert main(["experiment", str(proto), "--out", str(out)]) == 2
    assert f"plan.json: not a plan of this ircr version ({problem})" in one_line_error(capsys)
    assert main(["experiment", "report", str(out)]) == 2
    assert problem in one_line_error(capsys)


def test_edited_protocol_is_refused_then_replanned(ds: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    methods = [{"name": "supervised"},
               {"name": "lr2", "method": "supervised", "overrides": {"train.lr": 2.0e-3}}]
    proto = write_protocol(tmp_path / "p.yaml", ds, methods=methods)
    out = tmp_path / "o"
    assert main(["experiment", str(proto), "--out", str(out), "--progress-every", "0"]) == 0
    printed = capsys.readouterr()
    # 2 iterations: the plan and the report say loudly that these are not results
    assert "WARNING: 2 of 2 runs are TOO SHORT" in printed.out
    md = (out / "report.md").read_text()
    assert "> **WARNING: 2 of 2 runs are TOO SHORT" in md and "| 2 **TOO SHORT** |" in md
    assert f"2 iterations < {MIN_ITERATIONS}" in md
    keep = out / "runs" / "supervised_r1-2_s0_t10" / "metrics.json"
    mtime = keep.stat().st_mtime_ns
    assert not list(out.rglob(LOCK_NAME))  # every lock given back

    methods[1]["overrides"] = {"train.lr": 3.0e-3}
    write_protocol(proto, ds, methods=methods)
    assert main(["experiment", str(proto), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "the experiment changed since it was planned" in err
    assert "lr2_r1-2_s0_t10: train.lr: 0.002 -> 0.003" in err and "--replan" in err

    assert main(["experiment", str(proto), "--out", str(out), "--replan",
                 "--progress-every", "0"]) == 0
    assert keep.stat().st_mtime_ns == mtime  # the unchanged run kept its result
    (moved,) = (out / "replaced").iterdir()
    assert (moved / "plan.json").is_file() and (moved / "protocol.yaml").is_file()
    assert "0.003" in (out / "protocol.yaml").read_text()  # the copy is the new protocol
    assert (moved / "runs" / "lr2_r1-2_s0_t10" / "metrics.json").is_file()
    cfg = yaml.safe_load((out / "runs" / "lr2_r1-2_s0_t10" / "config.yaml").read_text())
    assert cfg["train"]["lr"] == pytest.approx(3.0e-3)
    assert json.loads((out / "runs" / "lr2_r1-2_s0_t10" / "metrics.json").read_text())[
        "status"] == "done"


def test_short_runs_are_named_with_their_reason() -> None:
    mt = {"method": {"name": "mean_teacher"}}  # defaults: warm-up 100 + ramp-up 200
    assert "warm-up 100 + ramp-up 200" in (short_reason(mt, 299) or "")
    assert short_reason(mt, 300) is None
    sup = {"method": {"name": "supervised"}}
    assert short_reason(sup, 199) == "199 iterations < 200 (the stated minimum)"
    assert short_reason(sup, 200) is None
    short = {"method": {"name": "ircr", "warmup_iterations": 12, "rampup_iterations": 12}}
    assert "< 200" in (short_reason(short, 60) or "")


def test_dry_run_commits_nothing(ds: Path, tmp_path: Path) -> None:
    proto = write_protocol(tmp_path / "p.yaml", ds)
    out = tmp_path / "o"
    lines: list[str] = []
    runner.run_experiment(proto, out, dry_run=True, log=lines.append)
    assert any(s.startswith("plan: 1 runs") for s in lines)
    assert not out.exists()  # no plan.json: a later run with another budget is not refused


def test_budget_counts_from_the_command_start(ds: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    proto = load_protocol(write_protocol(tmp_path / "p.yaml", ds))
    runs = expand(proto)
    runner.ensure_splits(runs, proto.val_fraction)
    seen: dict[str, Any] = {}
    real = planning.make_plan

    def spy(*args: Any, **kw: Any) -> Any:
        seen["budget_s"] = args[3]
        return real(*args, **kw)

    monkeypatch.setattr(planning, "measure_rate", lambda *a: Rate(100.0, 0.0, 0.0, 0.0, 1))
    monkeypatch.setattr(planning, "make_plan", spy)
    runner.prepare_plan(proto, runs, tmp_path / "o", 10.0, 1, lambda s: None,
                        started=time.time() - 100.0, dry_run=True)
    # hand: 600 s x (1 - 0.05) - 15 s reserve - 100 s already spent = 455 s
    assert seen["budget_s"] == pytest.approx(455.0, abs=2.0)


def test_expected_seconds_count_the_final_save() -> None:
    cfg = {"train": {"epochs": 2, "iterations_per_epoch": 5, "val_every": 1},
           "method": {"name": "supervised"}}
    rate = Rate(it_per_s=10.0, setup_s=0.0, val_s=0.0, ckpt_s=1.0, val_images=1)
    # hand: 10 it / 10 it/s = 1 s + (2 epoch checkpoints + final checkpoint + model folder) x 1 s
    assert expected_seconds(cfg, rate, SplitSize(4, 0, 0, 2), 0, 1) == pytest.approx(5.0)


def test_edited_protocol_of_an_old_plan_is_still_checked_by_run_ids(ds: Path,
                                                                    tmp_path: Path) -> None:
    """plan.json of before issue 28 (no specs): run ids are compared, as before."""
    proto = load_protocol(write_protocol(tmp_path / "p.yaml", ds))
    runs = expand(proto)
    runner.ensure_splits(runs, proto.val_fraction)
    out = tmp_path / "o"
    out.mkdir()
    plan = planning.make_plan(proto, runs)
    (out / "plan.json").write_text(json.dumps({"budget_minutes": None,
                                               "runs": planning.plan_to_dict(plan)}))
    assert len(runner.prepare_plan(proto, runs, out, None, 1, lambda s: None)) == 1
    proto2 = load_protocol(write_protocol(tmp_path / "p.yaml", ds, split_seeds=[1],
                                          train_seeds=[11]))
    with pytest.raises(IrcrError, match="runs added: supervised_r1-2_s1_t11"):
        runner.prepare_plan(proto2, expand(proto2), out, None, 1, lambda s: None)
