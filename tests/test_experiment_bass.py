"""Issue 25 point 4: `method: bass` rows in `ircr experiment` — the 6:2:2 by-image split as
protocol keys, the student and teacher model folders tested on the split's test images per
patch, iterations recorded, the report and its significance section (synthetic data, tiny
Mask R-CNN, a few iterations per stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.data.store import PreparedDataset
from ircr.experiment.protocol import expand, load_protocol
from ircr.experiment.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
TINY = {"backbone": "tiny", "tiny_channels": [8, 16, 16, 32], "fpn_channels": 16,
        "mask_channels": 16, "box_representation": 32, "crc_channels": 8, "min_size": [64],
        "max_size": 128, "anchor_sizes": [4, 8, 16, 32, 64], "rpn_batch_size_per_image": 32,
        "box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
        "rpn_post_nms_top_n_test": 100, "box_detections_per_img": 50}
STAGE = {"iterations": 3, "batch_size": 2, "lr": 0.01, "warmup_iterations": 2,
         "checkpoint_every": 0, "log_every": 1}
SPLIT = "ratio_1-4_seed0_val0.2_test0.2"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic 128 px images, 64 px patches (4 per image): 3 train, 1 val, 1 test image."""
    out = tmp_path_factory.mktemp("expbass") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 5, "size": 128}, patch=64,
                    stride=64, ratio="1/2", val_fraction=0.2)
    return out


def write_protocol(path: Path, ds: Path, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(ds),
        "ratios": ["1/4"], "split_seeds": [0], "train_seeds": [10],
        "val_fraction": 0.2, "test_fraction": 0.2, "test_unit": "patch",
        "iterations": 2, "budget_epochs": 1, "bootstrap": 200,
        "overrides": {"data.batch_size": 2, "data.batch_size_unlabelled": 2,
                      "data.context_margin": 8, "train.lr_steps": [],
                      "train.progress": False},
        "methods": [
            {"name": "supervised"},
            {"name": "bass", "overrides": {
                "method.model": TINY, "method.teacher": STAGE,
                "method.student": {**STAGE, "iterations": 4}, "method.repeat_labelled": 2,
                "method.paint": {"score_threshold": 0.05}}}],
        "evaluate": ["student", "teacher"], **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def exp(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("expbassrun")
    run_experiment(write_protocol(tmp / "p.yaml", synth), tmp / "out", progress_every=0,
                   log=lambda s: None)
    return tmp / "out"


def test_bass_row_is_planned_on_the_test_fraction_split(synth: Path, tmp_path: Path) -> None:
    proto = load_protocol(write_protocol(tmp_path / "p.yaml", synth))
    runs = expand(proto)
    assert [r.config["data"]["split"] for r in runs] == [SPLIT, SPLIT]
    assert [r.run_id for r in runs] == ["supervised_r1-4_s0_t10", "bass_r1-4_s0_t10"]


def test_bass_row_trains_and_tests_student_and_teacher_per_patch(exp: Path,
                                                                 synth: Path) -> None:
    doc = json.loads((exp / "runs" / "bass_r1-4_s0_t10" / "metrics.json").read_text())
    assert doc["status"] == "done", doc.get("error")
    # teacher 3 + student 4 optimiser steps (the stages' own schedules, not `iterations: 2`)
    assert doc["iterations"] == 7
    plan = json.loads((exp / "plan.json").read_text())
    assert {e["run_id"]: e["iterations"] for e in plan["runs"]}["bass_r1-4_s0_t10"] == 7
    split = PreparedDataset(synth).load_split(SPLIT)
    ds = PreparedDataset(synth)
    (test_image,) = [ds.names[i] for i in split.test_images]
    assert doc["test"]["_split"] == f"{SPLIT}:test" and doc["test"]["_unit"] == "patch"
    for model in ("student", "teacher"):
        assert set(doc["test"][model]) >= {"aji", "dice", "pq", "f1"}
        rows = doc["test_per_image"][model]
        # the test image's 2 x 2 grid patches, each on its own
        assert sorted(r["image"] for r in rows) == sorted(
            f"{test_image}@{y},{x}" for y in (0, 64) for x in (0, 64))
        mean_aji = sum(r["aji"] for r in rows) / len(rows)
        assert doc["test"][model]["aji"] == pytest.approx(mean_aji)
    # validation: both model folders on the split's validation image (whole image), as the
    # trainer validates the HoVer-Net rows
    assert set(doc["val"]) == {"student", "teacher"} and "aji" in doc["val"]["teacher"]
    # the supervised row is tested on the same image, per patch too
    sup = json.loads((exp / "runs" / "supervised_r1-4_s0_t10" / "metrics.json").read_text())
    assert sup["test"]["_split"] == f"{SPLIT}:test"
    assert len(sup["test_per_image"]["student"]) == 4


def test_report_has_bass_rows_and_its_significance(exp: Path) -> None:
    text = (exp / "report.md").read_text()
    teacher_block = text.split("## Test images — teacher")[1].split("##")[0]
    assert "| bass | 1/4 | 1/1 |" in teacher_block
    student_block = text.split("## Test images — student")[1].split("##")[0]
    assert "| bass | 1/4 | 1/1 |" in student_block and "| supervised | 1/4 | 1/1 |" in \
        student_block
    sig = text.split("## Significance")[1].split("## Runs")[0]
    # one seed pair: no t-test; the test image's 4 patches make one image pair
    assert "| bass | 1/4 | AJI |" in sig and "reference row **supervised**" in sig


def test_bass_with_budget_minutes_is_refused(synth: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    proto = write_protocol(tmp_path / "p.yaml", synth)
    assert main(["experiment", str(proto), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error: --budget-minutes: run bass_r1-4_s0_t10: method 'bass' "
                          "trains on its own stage schedules") and "\n" not in err


@pytest.mark.parametrize("extra,words", [
    ({"test_dataset": "elsewhere"}, "protocol key 'test_fraction' holds out test images"),
    ({"test_split": "val"}, "protocol key 'test_split' must be 'test'"),
    ({"test_fraction": 0.9}, "protocol key 'test_fraction' must be in [0, 1)"),
    ({"reference": "nope"}, "protocol key 'reference' must name a row of 'methods'"),
    ({"test_unit": "tile"}, "test_unit"),
])
def test_bad_protocol_keys_are_one_line(synth: Path, tmp_path: Path, extra: dict[str, Any],
                                        words: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    proto = write_protocol(tmp_path / "p.yaml", synth, **extra)
    assert main(["experiment", str(proto), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ircr: error: ") and words in err and "\n" not in err, err


def test_bass_table1_protocol_has_the_papers_split_sizes() -> None:
    """BASS appendix Table 5, MoNuSeg: labelled / unlabelled 98/686, 196/588, 392/392;
    validation 392 and test 294 patches (49 per 1000 px image at stride 128)."""
    from ircr.data.splits import make_split, patch_grid

    path = REPO / "configs" / "protocols" / "monuseg_bass_table1.yaml"
    proto = load_protocol(path)
    assert (proto.test_unit, proto.reference_row(), proto.evaluate) == (
        "patch", "bass", ["student", "teacher"])
    grid = [p for i in range(30) for p in patch_grid(i, 1000, 1000, 256, 128)]
    table5 = {"1/8": (98, 686), "1/4": (196, 588), "1/2": (392, 392)}
    for run in expand(proto, str(path)):
        plan = make_split([True] * 30, grid, run.ratio, run.split_seed, proto.val_fraction,
                          proto.test_fraction)
        assert (len(plan.labelled_patches), len(plan.unlabelled_patches)) == table5[run.ratio]
        assert (len(plan.val_images) * 49, len(plan.test_images) * 49) == (392, 294)
        assert run.config["method"]["paint"]["dilate"] == 1


def test_every_row_of_the_table2_protocol_runs(synth: Path, tmp_path: Path) -> None:
    """Issue 25 point 6: the rows of configs/protocols/monuseg_table2.yaml (their methods,
    configs and overrides) on synthetic data, a few iterations each, one report (~25 s): the
    six IRCR Table-2 rows (CDCL and PG-FANet tested with their own families) and BASS."""
    torch.set_num_threads(1)
    shipped = yaml.safe_load((REPO / "configs/protocols/monuseg_table2.yaml").read_text())
    methods = []
    for m in shipped["methods"]:
        row = dict(m)
        if "config" in row:  # relative to the shipped protocol
            row["config"] = str((REPO / "configs/protocols" / row["config"]).resolve())
        if row.get("method", row["name"]) == "bass" or "bass" in str(row.get("config", "")):
            row["overrides"] = {**row.get("overrides", {}), "method.model": TINY,
                                "method.teacher": STAGE, "method.student": STAGE,
                                "method.repeat_labelled": 2, "data.patch_size": 64,
                                "method.paint": {"score_threshold": 0.05}}
        if row["name"] == "self_training":
            row["overrides"] = {**row.get("overrides", {}), "method.rounds": 1}
        if row.get("method", row["name"]) == "cdcl":  # narrow and shallow: a pipeline check
            row["overrides"] = {**row.get("overrides", {}), "method.model": {
                "growth_rate": 8, "num_init_features": 16, "block_config": [1, 1, 1, 1],
                "decoder_channels": [32, 16, 16], "head_channels": 16, "proj_dim": 16},
                "data.patch_size": 64, "data.batch_size": 2, "data.batch_size_unlabelled": 2}
        if row.get("method", row["name"]) == "pgfanet":
            row["overrides"] = {**row.get("overrides", {}), "method.net.width": 0.125,
                                "data.patch_size": 64, "data.batch_size": 2,
                                "data.batch_size_unlabelled": 2}
        methods.append(row)
    proto = write_protocol(tmp_path / "p.yaml", synth, methods=methods, test_unit="image")
    run_experiment(proto, tmp_path / "out", progress_every=0, log=lambda s: None)
    runs = json.loads((tmp_path / "out" / "plan.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {m["name"] for m in shipped["methods"]}
    for r in runs:
        doc = json.loads((tmp_path / "out" / "runs" / r["run_id"] / "metrics.json").read_text())
        assert doc["status"] == "done", (r["run_id"], doc.get("error"))
        assert "aji" in doc["test"]["student"]
        family = {"cdcl": "cdcl", "pgfanet": "pgfanet", "bass": "maskrcnn"}.get(r["method"])
        if family in ("cdcl", "pgfanet"):  # student and teacher, scored by their family
            assert "aji" in doc["test"]["teacher"]
            meta = yaml.safe_load((tmp_path / "out" / "runs" / r["run_id"] / "model"
                                   / "model.yaml").read_text())
            assert meta["family"] == family
    assert "## Significance" in (tmp_path / "out" / "report.md").read_text()
