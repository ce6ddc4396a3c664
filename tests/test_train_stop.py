"""Ctrl-C / SIGTERM during training never loses work; time-based checkpoints (issue 14.3)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from ircr.cli.main import main
from ircr.config import read_yaml, write_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder
from ircr.train.checkpoint import load_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.stop import TrainingStopped
from ircr.train.trainer import Trainer, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 96}, patch=64,
                    ratio="1/2", val_fraction=0.25)
    return out


def tiny(ds: Path, **train: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-2_seed0_val0.25")
    data["train"].update({"progress": False, "epochs": 2, "iterations_per_epoch": 3,
                          "val_every": 0, **train})
    return data


def signal_after(monkeypatch: pytest.MonkeyPatch, iteration: int, sig: int) -> None:
    """Send ``sig`` to this process right after training iteration ``iteration``."""
    real = Trainer._step

    def step(self: Trainer, batch: Any, bar: Any) -> None:
        real(self, batch, bar)
        if self.iteration == iteration:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(Trainer, "_step", step)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_at_the_iteration_boundary_and_resumes(
        synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    torch.set_num_threads(1)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's
    signal_after(monkeypatch, 2, sig)
    cfg = experiment_from_dict(tiny(synth), "t.yaml")
    with pytest.raises(TrainingStopped, match="resume with: ircr train .*run/config.yaml --out "
                       ".*run --resume"):
        Trainer(cfg, tmp_path / "run", config_source="t.yaml").run()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 2  # mid-epoch, although checkpoint_every is 0
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    model = Trainer(cfg, tmp_path / "run", resume=True).run()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 6
    assert load_model_folder(model).inference == {"window": 64, "overlap": 16, "batch_size": 8}


def test_cli_exits_130_and_says_how_to_resume(synth: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    torch.set_num_threads(1)
    write_yaml(tmp_path / "c.yaml", tiny(synth))
    signal_after(monkeypatch, 1, signal.SIGINT)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(run), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT received; saving a checkpoint after the current iteration" in err
    assert f"resume with: ircr train {run / 'config.yaml'} --out {run} --resume" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    # what `ircr train` says before, during and after training (issue 14.5)
    for line in ("ircr train: method supervised; device cpu (", "; AMP off",
                 "ircr train: data ",
                 ": 6 labelled + 6 unlabelled patches (unlabelled not used by this method), "
                 "1 validation image(s)",
                 "resuming at iteration 1; 3 iterations/epoch x 2 epochs = 6 iterations",
                 "validating on 1 whole image", "ircr train: done: 6 iterations in ",
                 "ircr train: val_student_aji: last ", f"ircr train: model folder: {run}/model",
                 f"ircr train: next: ircr evaluate {run}/model "):
        assert line in err, line


def test_time_based_checkpoint(synth: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = experiment_from_dict(tiny(synth, checkpoint_minutes=1e-5), "t.yaml")  # 0.6 ms
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, tmp_path / "a", stop_after=2).run()
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["iteration"] == 2
    cfg = experiment_from_dict(tiny(synth), "t.yaml")  # no interval: nothing before epoch end
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, tmp_path / "b", stop_after=2).run()
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    with pytest.raises(IrcrError, match="'train.checkpoint_minutes' must be >= 0"):
        experiment_from_dict(tiny(synth, checkpoint_minutes=-1), "t.yaml")
