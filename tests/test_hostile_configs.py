"""Hostile configs and numbers (issue 28, points 1-4): alias bombs, duplicate keys, sizes and
numbers out of range, NaN/inf. Each must be one short IrcrError naming the file or option,
before anything is allocated or trained."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from ircr.config import from_dict, read_yaml
from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams
from ircr.train.config import load_experiment


def _bomb(levels: int, fan: int = 9) -> str:
    """A "billion laughs" alias tree as one flow value: ``fan ** levels`` strings once
    expanded, from a few hundred bytes."""
    items = ['&l0 [' + ", ".join(['"lol"'] * fan) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def _config(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _short_one_line(exc: pytest.ExceptionInfo[IrcrError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 300, msg[:500]
    return msg


# ---- 1. alias bombs ---------------------------------------------------------------------

def test_alias_bomb_under_a_checked_key_is_refused_fast(tmp_path: Path) -> None:
    # 9**6 = 531441 strings once expanded (the case had 9**9 and took 5 GB)
    text = "data: {dataset: d}\ntrain:\n  epochs: " + _bomb(6) + "\n"
    p = _config(tmp_path, text)
    t0 = time.perf_counter()
    with pytest.raises(IrcrError) as exc:
        load_experiment(p)
    assert time.perf_counter() - t0 < 5
    msg = _short_one_line(exc)
    assert msg.startswith(f"{p}: ") and "alias" in msg


def test_alias_bomb_in_protocol_overrides_and_model_yaml(tmp_path: Path) -> None:
    from ircr.experiment.protocol import load_protocol

    proto = _config(tmp_path, f"name: x\noverrides:\n  train.lr_steps: {_bomb(6)}\n", "p.yaml")
    with pytest.raises(IrcrError) as exc:
        load_protocol(proto)
    assert "alias" in _short_one_line(exc)

    from ircr.inference.model_folder import load_model_folder, save_model_folder
    from ircr.models import ModelConfig, build_model

    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    folder = save_model_folder(tmp_path / "m", build_model(cfg, load_pretrained=False), cfg,
                               dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64)
    meta = (folder / "model.yaml").read_text()
    (folder / "model.yaml").write_text(meta.replace("blocks:", f"blocks: {_bomb(6)}\n  x:"))
    with pytest.raises(IrcrError) as exc:
        load_model_folder(folder)
    assert "alias" in _short_one_line(exc)


def test_recursive_alias_and_set_values_are_checked_too(tmp_path: Path) -> None:
    from ircr.config import parse_yaml_text

    with pytest.raises(IrcrError, match="recursive YAML alias"):
        read_yaml(_config(tmp_path, "a: &x [1, *x]\n"))
    bomb = "[" + ", ".join(["&a [0,0,0,0,0,0,0,0,0,0]"] + ["*a"] * 2000) + "]"
    with pytest.raises(IrcrError, match=r"^exp.yaml \(--set\): value of 'model.blocks'.*alias"):
        parse_yaml_text(bomb, "exp.yaml (--set): value of 'model.blocks'")


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100000 + "]" * 100000,  # crashed the process (C parser recursion)
    "- " * 100000 + "x",
    "a: " + "{a: " * 150 + "1" + "}" * 150,
], ids=["flow-100000", "block-100000", "mapping-150"])
def test_deep_nesting_is_refused_not_a_crash(tmp_path: Path, text: str) -> None:
    import subprocess
    import sys

    p = _config(tmp_path, text, "deep.yaml")
    code = ("from ircr.config import read_yaml\nfrom ircr.errors import IrcrError\n"
            f"try:\n    read_yaml({str(p)!r})\nexcept IrcrError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.returncode  # -11: segmentation fault before
    assert out.stdout.strip() == f"{p}: refused: YAML nested more than 100 levels deep"


def test_small_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    from ircr.config import MAX_ALIAS_EXPANSION, parse_yaml_text

    p = _config(tmp_path, "data: {dataset: d, batch_size: &n 2, batch_size_unlabelled: *n}\n"
                          "eval: &e {window: 64, overlap: 16}\n")
    cfg = load_experiment(p)
    assert cfg.data.batch_size == cfg.data.batch_size_unlabelled == 2
    doc = parse_yaml_text("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n", "t")
    assert doc["b"] == {"x": 1, "y": 3}  # a merged key overridden once is not a duplicate
    # an alias expansion up to the bound is accepted (a list of 10 shared lists of 1000)
    ok = "a: &a [" + ", ".join(["0"] * 999) + "]\nb: [" + ", ".join(["*a"] * 10) + "]\n"
    assert len(parse_yaml_text(ok, "t")["b"]) == 10 and 9 * 1000 < MAX_ALIAS_EXPANSION


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    p = _config(tmp_path, "data: {dataset: d}\ntrain: {epochs: [" + ", ".join(["7"] * 5000)
                + "]}\n")
    with pytest.raises(IrcrError, match="'train.epochs' must be int") as exc:
        load_experiment(p)
    assert _short_one_line(exc).endswith("...]")
    p.write_text("data: {dataset: d}\nmodel: {blocks: [" + ", ".join(["1"] * 5000) + "]}\n")
    with pytest.raises(IrcrError, match="model.blocks must be 4 positive integers") as exc:
        load_experiment(p)
    assert _short_one_line(exc).endswith("...]")


@pytest.mark.parametrize(("text", "pattern"), [
    ("data: {dataset: d}\n1: x\nfoo: y\n", r"unknown config key '1' \(valid keys: data,"),
    ("data: {dataset: d}\nmethod: {name: ircr, 1: x, foo: y}\n",
     r"unknown config key 'method.1' for method 'ircr'"),
    ("data: {dataset: d}\ntrain: {" + "x" * 1000 + ": 1}\n",
     r"unknown config key 'train.x{57}\.\.\.'"),
], ids=["number-key", "number-method-key", "long-key"])
def test_odd_keys_are_one_short_line(tmp_path: Path, text: str, pattern: str) -> None:
    """Numbers next to words as keys (a TypeError traceback before) and very long keys."""
    with pytest.raises(IrcrError, match=pattern) as exc:
        load_experiment(_config(tmp_path, text))
    msg = str(exc.value)  # the message lists the valid keys: longer, still one line
    assert "\n" not in msg and len(msg) < 700


# ---- 3. duplicate keys ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key", "line"), [
    ("data: {dataset: d}\ntrain: {epochs: 3}\ndata: {dataset: e, batch_size: 2}\n", "data", 3),
    ("data: {dataset: d}\ntrain:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", "epochs", 5),
])
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, key: str, line: int) -> None:
    p = _config(tmp_path, text)
    with pytest.raises(IrcrError) as exc:
        load_experiment(p)
    assert _short_one_line(exc) == (f"{p}: duplicate key '{key}' (line {line}); each key may "
                                    "appear once")
    with pytest.raises(IrcrError, match="duplicate key 'a'"):
        load_experiment(_config(tmp_path, "data: {dataset: d}\n", "ok.yaml"),
                        ["train.lr_steps={a: 1, a: 2}"])


# ---- 2. sizes have upper bounds ---------------------------------------------------------

@pytest.mark.parametrize(("override", "pattern"), [
    ("data.batch_size=100000000", r"'data.batch_size' must be <= 1024, got 100000000"),
    ("data.patch_size=1000000", r"'data.patch_size' must be <= 4096"),
    ("model.decoder_units=[100000, 2]", r"'model.decoder_units' must be <= 64, got 100000"),
    ("model.blocks=[3, 4, 100000, 3]", r"'model.blocks' must be <= 64"),
    ("eval.window=1000000", r"'eval.window' must be <= 4096, got 1000000"),
    ("eval.window=4096", r"'eval.batch_size' 8 windows of 4096 x 4096 px need 1.5 GiB"),
    ("train.epochs=10000000000", r"'train.epochs' must be <= 1000000, got"),
    ("data.batch_size=1000", r"'data.batch_size' 1004 patches of 456 x 456 px .* need 2.3 GiB"),
    ("method.wbis_workers=100000", r"'method.wbis_workers' must be <= 256"),
])
def test_sizes_have_upper_bounds(tmp_path: Path, override: str, pattern: str) -> None:
    p = _config(tmp_path, "data: {dataset: d}\nmethod: {name: ircr}\n")
    with pytest.raises(IrcrError, match=pattern) as exc:
        load_experiment(p, [override])
    assert _short_one_line(exc).startswith((f"--set {override}: ", f"{p}: "))


def test_window_bounds_in_model_yaml_and_options(tmp_path: Path) -> None:
    from ircr.inference.model_folder import check_inference, resolve_inference

    with pytest.raises(IrcrError, match=r"^--window: must be <= 4096, got 1000000$"):
        resolve_inference({"window": 256, "overlap": 64, "batch_size": 8}, window=1000000)
    with pytest.raises(IrcrError, match=r"^m/model.yaml: inference: batch_size: 64 windows of "
                                        r"4096 x 4096 px need 12.0 GiB"):
        check_inference({"window": 4096, "batch_size": 64}, "m/model.yaml: inference")
    assert check_inference({"window": 4096, "batch_size": 4}, "x")["window"] == 4096


def test_bass_repeat_and_schedule_numbers(tmp_path: Path) -> None:
    from ircr.train.detector_loop import DetectionSchedule

    for data, pattern in (({"epochs": math.inf}, r"'method.teacher.epochs' must be a finite"),
                          ({"lr_step_epochs": [8, math.inf]}, r"lr_step_epochs\[1\]' must be a "
                                                               "finite"),
                          ({"epochs": 1e300}, r"'method.teacher.epochs' must be <= 1000000,"),
                          ({"epochs": math.nan}, r"'method.teacher.epochs' must be a finite")):
        with pytest.raises(IrcrError, match=pattern):
            from_dict(DetectionSchedule, data, where="c.yaml", prefix="method.teacher.")
    p = _config(tmp_path, "data: {dataset: d}\nmethod: {name: bass}\n")
    for override, pattern in (
            ("method.repeat_labelled=1000000000", r"'method.repeat_labelled' must be <= 1000"),
            ("method.teacher.epochs=.inf", r"'method.teacher.epochs' must be a finite number"),
            ("method.pseudo_threshold=.nan", r"'method.pseudo_threshold' must be a finite"),
            ("method.pseudo_mask_threshold=.nan", r"'method.pseudo_mask_threshold' must be a")):
        with pytest.raises(IrcrError, match=pattern):
            load_experiment(p, [override])


# ---- 4. every number validated ----------------------------------------------------------

@pytest.mark.parametrize(("override", "pattern"), [
    ("train.seed=-1", r"'train.seed' must be >= 0, got -1"),
    (f"train.seed={2**63}", r"'train.seed' must be <= 4294967295"),
    ("postproc.threshold=.nan", r"'postproc.threshold' must be a finite number, got nan"),
    ("postproc.marker_threshold=2", r"'postproc.marker_threshold' must be <= 1, got 2"),
    ("train.lr=.inf", r"'train.lr' must be a finite number"),
    ("train.grad_clip=.nan", r"'train.grad_clip' must be a finite number"),
    ("train.lr=1e999", r"'train.lr' must be float"),  # YAML 1.1 reads 1e999 as a string
])
def test_numbers_are_finite_and_in_range(tmp_path: Path, override: str, pattern: str) -> None:
    p = _config(tmp_path, "data: {dataset: d}\n")
    with pytest.raises(IrcrError, match=pattern) as exc:
        load_experiment(p, [override])
    _short_one_line(exc)


def test_nan_in_postproc_yaml_and_in_code(tmp_path: Path) -> None:
    from ircr.inference.model_folder import load_model_folder, save_model_folder
    from ircr.models import ModelConfig, build_model

    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    torch.manual_seed(0)
    folder = save_model_folder(tmp_path / "m", build_model(cfg, load_pretrained=False), cfg,
                               dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64)
    pp = yaml.safe_load((folder / "postproc.yaml").read_text())
    (folder / "postproc.yaml").write_text(yaml.safe_dump({**pp, "threshold": math.nan}))
    with pytest.raises(IrcrError, match=r"postproc.yaml: config key 'threshold' must be a "
                                        "finite number, got nan"):
        load_model_folder(folder)
    with pytest.raises(IrcrError, match=r"postproc.threshold: must be in \[0, 1\], got nan"):
        WBISParams(threshold=math.nan).effective()


@pytest.mark.parametrize(("grid", "pattern"), [
    ("threshold=0.4,nan", r"^--grid threshold=0.4,nan: config key 'threshold' must be a finite"),
    ("threshold=inf", r"must be a finite number, got inf"),
    ("threshold=2", r"'threshold' must be <= 1, got 2.0"),
    ("marker_threshold=-0.1", r"'marker_threshold' must be >= 0"),
    ("min_size=-5", r"'min_size' must be >= 0"),
    ("ksize=41", r"postproc.ksize: must be an odd number in 1..31"),
])
def test_tune_grid_values_are_checked_before_anything_runs(grid: str, pattern: str) -> None:
    from ircr.engine.tune import parse_grid

    with pytest.raises(IrcrError, match=pattern):
        parse_grid([grid])


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, 1e12])
def test_budget_minutes_must_be_finite_and_positive(tmp_path: Path, value: float) -> None:
    from ircr.experiment.plan import check_budget_minutes
    from ircr.experiment.runner import run_experiment

    with pytest.raises(IrcrError, match=r"^--budget-minutes: must be a finite number"):
        run_experiment(tmp_path / "missing.yaml", tmp_path / "out", budget_minutes=value)
    check_budget_minutes(None)
    check_budget_minutes(30.0)


def test_cli_prints_one_line_for_a_hostile_config(tmp_path: Path, capsys) -> None:
    from ircr.cli.main import main

    p = _config(tmp_path, "data: {dataset: d}\ntrain:\n  epochs: " + _bomb(6) + "\n")
    assert main(["train", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ircr: error: {p}: refused: YAML aliases")
    assert not (tmp_path / "run").exists()
