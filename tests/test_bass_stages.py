"""BASS stages under interruption, damaged outputs and reruns (issue 27 point 12, issue 28
points 11-12): interrupted in any stage + resumed = uninterrupted; a truncated
pseudo_labels.npz or a broken model folder is rewritten, never used; ``--resume`` as for every
method; a progress bar in every stage. Tiny Mask R-CNN on synthetic data (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder
from ircr.ssl.pseudo_labels import LABELS_FILE, load_pseudo_labels
from ircr.train import bass_pipeline, detector_loop
from ircr.train.checkpoint import load_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.stage_tools import _stage_int, stage_seed
from ircr.train.stop import TrainingStopped
from ircr.train.trainer import Trainer
from test_bass_method import config, synth  # noqa: F401 (synth: a fixture)

COUNT = {"count_matched_paint": True}  # runs the threshold step too


def run(ds: Path, out: Path, resume: bool | str = "auto", progress: bool = False,
        **method: Any) -> Path:
    data = config(ds, **COUNT, **method)
    data["train"]["progress"] = progress
    torch.manual_seed(0)
    return Trainer(experiment_from_dict(data, "bass.yaml"), out, resume=resume).run()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path)["model"])


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    torch.set_num_threads(1)
    return run(synth, tmp_path_factory.mktemp("full") / "run").parent


def sigint_on_call(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, n: int) -> None:
    """Send SIGINT to this process during the ``n``-th call of ``target.name``."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(target, name, wrapped)


def sigint_in_detect(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """SIGINT during the ``n``-th detection of a stage-2 / threshold-step detector."""
    real = bass_pipeline.detector_fn

    def fn(model: Any, device: Any) -> Any:
        detect = real(model, device)
        calls = {"n": 0}

        def wrapped(image: np.ndarray) -> dict[str, Any]:
            out = detect(image)
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        return wrapped

    monkeypatch.setattr(bass_pipeline, "detector_fn", fn)


# stage 3's training: test_bass_method.py::test_interrupted_in_stage_3_and_resumed_equals_...
@pytest.mark.parametrize("stage", ["teacher", "pseudo_labels", "threshold"])
def test_interrupted_in_any_stage_and_resumed_equals_uninterrupted(
        stage: str, synth: Path, full: Path, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    if stage == "teacher":
        sigint_on_call(monkeypatch, detector_loop, "_step", 2)
    elif stage == "pseudo_labels":
        sigint_in_detect(monkeypatch, 2)
    else:  # the student's count matching on the validation patches, after its training
        monkeypatch.setattr(bass_pipeline, "_pseudo", _pseudo_then_sigint_in_detect(
            monkeypatch))
    with pytest.raises(TrainingStopped, match="resume with: ircr train .*--resume"):
        run(synth, out)
    assert not (out / "model" / "model.yaml").exists()
    assert not (out / "bass.json").exists()
    monkeypatch.undo()
    torch.rand(17)  # the global generator's state must not matter to any stage
    np.random.rand(5)
    run(synth, out, resume=True)
    for rel in ("teacher/checkpoints/last.pt", "student/checkpoints/last.pt"):
        assert same(weights(full / rel), weights(out / rel)), rel
    a, b = load_pseudo_labels(full / "pseudo_labels"), load_pseudo_labels(out / "pseudo_labels")
    assert a.threshold == b.threshold and np.array_equal(a.labels, b.labels)
    assert (full / "model" / "postproc.yaml").read_text() == \
        (out / "model" / "postproc.yaml").read_text()


def _pseudo_then_sigint_in_detect(monkeypatch: pytest.MonkeyPatch) -> Any:
    real_pseudo = bass_pipeline._pseudo

    def pseudo(*args: Any, **kwargs: Any) -> Any:
        pl = real_pseudo(*args, **kwargs)
        sigint_in_detect(monkeypatch, 1)  # the next detector made is the threshold step's
        return pl

    return pseudo


def test_stage_seed_ignores_and_restores_the_global_state() -> None:
    torch.manual_seed(1)
    with stage_seed(7, "teacher", torch.device("cpu")) as s1:
        a = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(2)
    with stage_seed(7, "teacher", torch.device("cpu")):
        b = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(3)  # inside the block on the first pass: not the global stream
    assert torch.equal(a, b)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))
    assert s1 != _stage_int(7, "student") and s1 == _stage_int(7, "teacher")


def test_truncated_pseudo_labels_are_generated_again(synth: Path, full: Path,  # noqa: F811
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(full, out)
    npz = out / "pseudo_labels" / LABELS_FILE
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(IrcrError, match=r"pseudo_labels.npz: unreadable pseudo-labels"):
        load_pseudo_labels(out / "pseudo_labels")
    run(synth, out, resume=True)  # progress=False (--no-progress): no bar
    text = capsys.readouterr()
    assert "generating them again" in text.out
    assert not any(bars(text.err, name) for name in BARS)
    assert npz.read_bytes() == (full / "pseudo_labels" / LABELS_FILE).read_bytes()


def test_broken_model_folders_are_written_again(synth: Path, full: Path,  # noqa: F811
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(full, out)
    w = out / "teacher" / "model" / "weights.pt"
    w.write_bytes(w.read_bytes()[:100])
    (out / "model" / "weights.pt").unlink()
    (out / "bass.json").unlink()
    run(synth, out, resume=True)
    text = capsys.readouterr().out
    assert "teacher: model folder" in text and "student: model folder" in text
    teacher = load_model_folder(out / "teacher" / "model")
    assert same(teacher.model.state_dict(), weights(out / "teacher/checkpoints/last.pt"))
    student = load_model_folder(out / "model")
    assert same(student.model.state_dict(), weights(out / "student/checkpoints/last.pt"))
    stages = json.loads((out / "bass.json").read_text())["stages"]
    assert stages["teacher"] == str(out / "teacher" / "model")


def test_resume_flag_as_for_every_method(synth: Path, full: Path, tmp_path: Path,  # noqa: F811
                                         ) -> None:
    out = tmp_path / "run"
    with pytest.raises(IrcrError, match="no checkpoint to resume from"):
        run(synth, out, resume=True)
    shutil.copytree(full / "teacher" / "checkpoints", out / "teacher" / "checkpoints")
    with pytest.raises(IrcrError) as bass_err:
        run(synth, out, resume=False)
    hover = tmp_path / "hover"
    (hover / "checkpoints").mkdir(parents=True)
    (hover / "checkpoints" / "last.pt").write_bytes(b"x")
    data = config(synth)
    data.pop("method")
    with pytest.raises(IrcrError) as hover_err:
        Trainer(experiment_from_dict(data, "sup.yaml"), hover, resume=False)
    assert str(bass_err.value).replace(str(out), "RUN") == \
        str(hover_err.value).replace(str(hover), "RUN") == \
        "RUN: run folder already holds a checkpoint; use --resume or another --out"
    assert run(synth, out, resume=True) == out / "model"  # --resume continues it


BARS = ("BASS teacher", "BASS pseudo-labels", "BASS student", "BASS threshold")


def bars(err: str, name: str) -> list[str]:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith(name + ":")]


def test_every_stage_shows_a_progress_bar(synth: Path, tmp_path: Path,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 9.0, 8.0))  # 2 busy cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    before = torch.get_num_threads()
    try:
        run(synth, tmp_path / "run", progress=True)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out, err = capsys.readouterr()
    assert "BASS on CPU: load 9.5 on 2 cores: 1 thread" in out
    for name in BARS:  # tqdm: "<desc>: 100%|...| n/n [elapsed<eta, rate]"
        shown = bars(err, name)
        assert shown and "100%" in shown[-1] and "<" in shown[-1], (name, err[-500:])


def test_help_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    from ircr.cli.main import main
    from ircr.train.methods import METHODS, known_methods

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(ln for ln in readme.splitlines() if ln.startswith("| `ircr train CONFIG"))
    builtin = [n for n in known_methods() if METHODS[n].__module__.startswith("ircr.train.")]
    assert "bass" in builtin
    for name in builtin:
        assert name in text, name
        assert f"`{name}`" in row, name


def test_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from ircr.train.stage_tools import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads()[0] == 3  # the user's choice wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.49, 0.0, 0.0))
    assert cpu_threads()[0] == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert cpu_threads()[0] == 1
