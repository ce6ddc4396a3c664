"""Faults in training and in the files it writes: divergence, non-finite state, resuming a
finished run, leftovers of killed atomic writes, file permissions, unwritable outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from fault_helpers import file_size_limit
from ircr.cli.main import main
from ircr.config import read_yaml, write_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder, save_model_folder
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams
from ircr.train.checkpoint import NonFiniteState, load_checkpoint, save_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.methods import Method, register_method
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.25)
    return out


def tiny(ds: Path, **train: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-4_seed0_val0.25")
    data["train"].update({"progress": False, "epochs": 2, "iterations_per_epoch": 2, **train})
    return data


def trainer(data: dict[str, Any], out: Path, **kw: Any) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(experiment_from_dict(data, "test.yaml"), out, config_source="test.yaml", **kw)


def all_finite(state: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_diverging_weights_are_never_saved(synth: Path, tmp_path: Path) -> None:
    """lr=1e6: the BatchNorm running variances become inf while the loss is still finite."""
    for every in (0, 1):
        run = tmp_path / f"run{every}"
        with pytest.raises(IrcrError, match=r"running_var' holds NaN or inf at iteration 2 ") \
                as err:
            trainer(tiny(synth, lr=1e6, checkpoint_every=every), run).run()
        msg = str(err.value)
        assert "\n" not in msg and not (run / "model" / "weights.pt").exists()
        last = run / "checkpoints" / "last.pt"
        if every == 0:
            assert "no checkpoint was written" in msg and not last.exists()
        else:  # the message names a checkpoint that exists and is finite
            assert f"last good checkpoint: {last} (iteration 1)" in msg
            state = load_checkpoint(last)
            assert state["iteration"] == 1 and all_finite(state["model"])


@register_method("faults_nan_at_1")
class _NanAt1(Method):
    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        loss, parts = self.trainer.supervised_loss(self.trainer.model(labelled["image"]),
                                                   labelled)
        return loss * float("nan"), parts


def test_nan_loss_without_checkpoint_says_so(synth: Path, tmp_path: Path) -> None:
    data = tiny(synth)
    data["method"]["name"] = "faults_nan_at_1"
    with pytest.raises(IrcrError, match=r"loss became nan at iteration 1 .*no checkpoint was "
                                        r"written"):
        trainer(data, tmp_path / "run").run()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_nonfinite_state_is_refused_by_both_writers(tmp_path: Path) -> None:
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    model = build_model(cfg, load_pretrained=False)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("inf")  # a buffer, not a parameter
    with pytest.raises(NonFiniteState, match=r"last.pt: not written, tensor 'model\..*"
                                             r"running_var' holds NaN or inf"):
        save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict()})
    with pytest.raises(IrcrError, match=r"weights.pt: not written, model tensor .*running_var"):
        save_model_folder(tmp_path / "m", model, cfg, {}, mpp=0.25, patch_size=64)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "m" / "weights.pt").exists()


def test_resuming_a_finished_run_changes_nothing(synth: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    write_yaml(cfg, tiny(synth))
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0
    model = run / "model"
    metrics = (model / "metrics.json").read_text()
    assert json.loads(metrics)  # validation metrics of the last epoch
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in model.iterdir()}
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "run already finished at iteration 4; nothing to do" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in model.iterdir()} == files
    # killed while the model folder was being written: model.yaml (written last) is missing
    (model / "model.yaml").unlink()
    (model / "metrics.json").write_text("{}")
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (model / "metrics.json").read_text() == metrics  # from the checkpoint, not {}
    assert (model / "weights.pt").read_bytes() == files["weights.pt"][0]
    load_model_folder(model)


def test_stale_temporaries_are_removed_on_start(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer(tiny(synth, epochs=1), run).run()
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = [run / "checkpoints" / f".last.pt.tmp-{dead}",  # earlier versions' names
             run / "model" / ".weights.pt.k2j4_x9a.tmp",
             run / "checkpoints" / f".last.pt.ircr-tmp-{dead}-0a1b2c3d"]
    alive = run / "checkpoints" / f".last.pt.ircr-tmp-{os.getppid()}-0a1b2c3d"
    for p in [*stale, alive]:
        p.write_bytes(b"partial")
    trainer(tiny(synth, epochs=1), run, resume=True)
    assert not any(p.exists() for p in stale)
    assert alive.exists()  # another live process may still be writing it


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_model_folder_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    model = build_model(cfg, load_pretrained=False)
    with umask(mask):
        out = save_model_folder(tmp_path / "m", model, cfg,
                                dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64,
                                metrics={"aji": 0.5})
        save_checkpoint(tmp_path / "c" / "last.pt", {"x": torch.zeros(2)})
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
             [*out.iterdir(), tmp_path / "c" / "last.pt"]}
    assert modes and all(m == 0o666 & ~mask for m in modes.values()), modes


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("ircr: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_write_errors_are_one_line(synth: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    write_yaml(cfg, tiny(synth, epochs=1))
    (tmp_path / "file").write_text("x")
    base = ["train", str(cfg), "--no-progress", "--out"]
    assert main([*base, str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: run folder is an existing file" in one_line_error(capsys)
    assert main([*base, str(tmp_path / "file" / "run")]) == 2
    assert f"{tmp_path / 'file' / 'run'}: cannot create the run folder" in one_line_error(capsys)
    with file_size_limit(30_000):  # the checkpoint (~100 kB) does not fit
        assert main([*base, str(tmp_path / "full")]) == 2
    line = one_line_error(capsys)
    assert f"{tmp_path / 'full' / 'checkpoints' / 'last.pt'}: cannot write (File too large)" \
        in line
    assert [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()] == []


def test_finished_run_resumed_with_more_epochs_trains_on(synth: Path, tmp_path: Path) -> None:
    from ircr.train.trainer import TrainingInterrupted

    run = tmp_path / "run"
    trainer(tiny(synth, epochs=1, checkpoint_every=1), run).run()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["finished"] is True
    more = tiny(synth, epochs=2, checkpoint_every=1)
    with pytest.raises(TrainingInterrupted):
        trainer(more, run, resume=True, stop_after=3).run()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 3 and state["finished"] is False  # killed mid-way: not done
    tr = trainer(more, run, resume=True)
    tr.run()
    assert not tr.already_finished and tr.iteration == 4
    assert yaml_iterations(run / "model" / "model.yaml") == 4


def yaml_iterations(path: Path) -> int:
    return int(read_yaml(path)["train"]["iterations"])
