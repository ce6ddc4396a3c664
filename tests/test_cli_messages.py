"""Messages point the right way; options are shared by every command (issue 14.6 and 14.7)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ircr
from ircr.cli.main import build_parser, main
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder, save_model_folder
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder laid out like `ircr train`'s, holding a tiny untrained model/."""
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    run = tmp_path_factory.mktemp("r") / "run"
    save_model_folder(run / "model", build_model(cfg, load_pretrained=False), cfg,
                      dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64,
                      inference={"window": 64, "overlap": 16, "batch_size": 2})
    (run / "checkpoints").mkdir()
    return run


def test_set_typo_names_the_option_not_the_file(capsys) -> None:
    cfg = REPO / "configs" / "tiny_synthetic.yaml"
    assert main(["train", str(cfg), "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ircr: error: --set train.epoch=3: unknown config key 'train.epoch' "
                   "(did you mean 'train.epochs'?)")
    assert main(["train", str(cfg), "--set", "train.lr.base=3"]) == 2
    assert "'train.lr' is a value, not a section" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "train.epochs=abc"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ircr: error: --set train.epochs=abc: config key 'train.epochs' must be int, got 'abc'")


def test_run_folder_instead_of_model_folder(run_dir: Path, capsys) -> None:
    with pytest.raises(IrcrError, match="training run folder; pass its model folder .*model"):
        load_model_folder(run_dir)
    with pytest.raises(IrcrError, match="missing from the model folder .*RUN/model"):
        load_model_folder(run_dir / "checkpoints")


def test_api_messages_use_the_api_keyword_and_repr_is_short(run_dir: Path) -> None:
    seg = ircr.load_model(run_dir / "model", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = seg.segment(np.full((64, 64, 3), 200, np.uint8))
    text = " ".join(str(w.message) for w in caught)
    assert "mpp=" in text and "--mpp" not in text and "file" not in text
    assert caught[0].filename == __file__  # points at the caller's line
    with pytest.raises(IrcrError, match="^mpp: 0.0 µm/px is not a plausible pixel size"):
        seg.segment(np.zeros((64, 64, 3), np.uint8), mpp=0.0)
    r = repr(res)
    assert r.startswith("SegmentResult(") and "64x64 px" in r and len(r) < 200
    assert "array" not in r and "window 64 / overlap 16" in repr(seg)


def _options(command: str) -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.choices[command]  # type: ignore[attr-defined]
    return {s: (a.help or "") for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["train", "evaluate", "segment", "demo"])
def test_shared_options_everywhere(command: str) -> None:
    opts = _options(command)
    assert "--no-progress" in opts and "--quiet" in opts
    assert "deprecated" in opts["--quiet"]
    if command != "demo":
        assert "cuda:N" in opts["--device"]


def test_inference_flags_and_units() -> None:
    for command in ("evaluate", "segment"):
        opts = _options(command)
        for flag in ("--window", "--overlap", "--batch-size"):
            assert "model folder" in opts[flag], (command, flag)
    margin = _options("segment")["--margin"]
    assert "px at the model's resolution" in margin and "24 µm" in margin


def test_quiet_is_a_deprecated_alias(capsys) -> None:
    args = build_parser().parse_args(["evaluate", "m", "d", "--quiet"])
    assert args.no_progress is True
    assert "--quiet is deprecated; use --no-progress" in capsys.readouterr().err


def test_device_cuda_n_accepted_by_every_command_parser(run_dir: Path, capsys) -> None:
    """cuda:N reaches the device check (no argparse 'invalid choice') in each command."""
    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA message")
    cfg = REPO / "configs" / "tiny_synthetic.yaml"
    for argv in (["evaluate", str(run_dir / "model"), str(run_dir), "--device", "cuda:1"],
                 ["train", str(cfg), "--device", "cuda:1", "--out", str(run_dir / "t")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "invalid choice" not in err and "'cuda:1' requested but" in err, err
