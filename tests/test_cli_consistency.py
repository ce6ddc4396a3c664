"""Issue 27 points 13/14: every command takes --device and --no-progress; no Python internals
in messages (lists, keyword syntax, "1 threads"/"1 iterations")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ircr.cli.main import build_parser, main

COMMANDS = [
    ["demo"],
    ["experiment", "p.yaml"],
    ["models", "list"],
    ["models"],
    ["data", "prepare", "monuseg", "root", "-o", "out"],
    ["tune-postproc", "default", "ds"],
    ["train", "c.yaml"],
    ["evaluate", "m", "ds"],
    ["segment", "x.png", "-o", "out"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_command_takes_device_and_no_progress(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--device", "cuda:0", "--no-progress"])
    assert args.device == "cuda:0" and args.no_progress is True


def test_bad_device_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    cases = [["demo", "--out", str(tmp_path / "demo")],
             ["experiment", str(tmp_path / "missing.yaml")],
             ["models", "list"],
             ["data", "prepare", "synthetic", "-o", str(tmp_path / "prep")]]
    for argv in cases:
        assert main([*argv, "--device", "gpu7"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err == ("ircr: error: --device: unknown device 'gpu7' "
                       "(use auto, cpu, cuda, cuda:N or mps)"), (argv, err)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "prep").exists()


def test_data_prepare_no_progress_prints_no_image_lines(tmp_path: Path, capsys) -> None:
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
            root / "images" / f"{name}.png")
        lab = np.zeros((32, 32), np.uint16)
        lab[4:10, 4:10] = 1
        Image.fromarray(lab).save(root / "labels" / f"{name}.png")
    base = ["data", "prepare", "folder", str(root), "--patch", "16", "--val-fraction", "0.5",
            "--ratio", "1", "--option", "mpp=0.25", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "p1")]) == 0
    assert "[1] a" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "p2"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_models_list_prints_no_python_list(capsys) -> None:
    assert main(["models", "list", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "['" not in out and "images: TCGA-21-5784-01Z-00-DX1, TCGA-B0-5698" in out


def test_singular_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from ircr.inference.device import describe_device
    from ircr.train.run_text import count, device_name

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert "(1 thread, " in describe_device(torch.device("cpu"))
    assert device_name(torch.device("cpu")) == "cpu (1 thread)"
    assert count(1, "iteration") == "1 iteration" and count(2, "epoch") == "2 epochs"


def test_cpm15_size_error_uses_cli_syntax(tmp_path: Path) -> None:
    from ircr.data.datasets import open_dataset
    from ircr.errors import IrcrError

    (tmp_path / "images").mkdir()
    (tmp_path / "labels_txt").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "images" / "image01.png")
    (tmp_path / "labels_txt" / "image01_mask.txt").write_text("5 4\n" + "0 " * 20)
    with pytest.raises(IrcrError) as exc:
        open_dataset("cpm15", tmp_path)
    msg = str(exc.value)
    assert "is 6x4 but its mask" in msg and "5x4" in msg
    assert "--option pairs=PAIRS.yaml" in msg and "--option fix_known_swaps=true" in msg
    assert "{" not in msg and "=True" not in msg


def test_experiment_device_and_no_progress_reach_every_run(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import ircr.train.trainer as trainer_mod
    from ircr.experiment.runner import RunContext, run_one

    seen: list[tuple[str, bool]] = []

    class FakeTrainer:
        def __init__(self, cfg, *a, **k) -> None:  # noqa: ANN001 - records and stops
            seen.append((cfg.train.device, cfg.train.progress))
            raise RuntimeError("stop here")

    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny_synthetic.yaml")
                            .read_text())
    entry = {"run_id": "r", "method": "supervised", "ratio": "1/4", "split_seed": 0,
             "train_seed": 0, "iterations": 1, "config": config}
    ctx = RunContext(["student"], None, "test", device="cuda:0", progress=False)
    doc = run_one(entry, tmp_path / "r", ctx, out=lambda _m: None)
    assert doc["status"] == "failed" and seen == [("cuda:0", False)]
    ctx = RunContext(["student"], None, "test")  # without the options: the config's values
    run_one(entry, tmp_path / "r", ctx, out=lambda _m: None)
    assert seen[-1] == ("cpu", True)
