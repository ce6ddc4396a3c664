"""``tune-postproc`` writes (issue 28.13): a tuned copy appears whole or not at all, in place
the two files never disagree, leftovers of a killed run go on the next one, and a full disk
is one proper line."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ircr.engine.tune import TuneResult, write_tuned
from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams

DEAD_PID = 2**22 + 12345  # above the default pid_max: never a live process


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    from ircr.inference.model_folder import save_model_folder
    from ircr.models import ModelConfig, build_model

    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    torch.manual_seed(0)
    return save_model_folder(tmp_path / "m", build_model(cfg, load_pretrained=False), cfg,
                             dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64)


def _result(threshold: float) -> TuneResult:
    best = dataclasses.asdict(WBISParams(threshold=threshold))
    return TuneResult(best, 0.7, 0.1, "aji", ["a"], [{"threshold": threshold, "aji": 0.7}])


def _kill_at_replace(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th os.replace/os.rename raise KeyboardInterrupt (a kill at that point)."""
    calls = {"n": 0}
    real_replace, real_rename = os.replace, os.rename

    def hit(real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", hit(real_replace))
    monkeypatch.setattr(os, "rename", hit(real_rename))


def _consistent(folder: Path) -> None:
    """tuning.json, when present, describes postproc.yaml; no temporary file is left."""
    pp = yaml.safe_load((folder / "postproc.yaml").read_text())
    if (folder / "tuning.json").exists():
        assert json.loads((folder / "tuning.json").read_text())["best"] == pp
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kill_at", [1, 2])
def test_in_place_killed_at_either_rename_leaves_agreeing_files(
        folder: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    write_tuned(folder, _result(0.45))  # an earlier tuning: both files say 0.45
    _kill_at_replace(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        write_tuned(folder, _result(0.35))
    _consistent(folder)
    monkeypatch.undo()
    write_tuned(folder, _result(0.35))  # the rerun completes
    _consistent(folder)
    assert json.loads((folder / "tuning.json").read_text())["best"]["threshold"] == 0.35


def test_in_place_rerun_removes_temporaries_of_a_killed_run(folder: Path) -> None:
    stale = folder / f".postproc.yaml.ircr-tmp-{DEAD_PID}-0a1b2c3d"  # kill -9 mid-write
    stale.write_text("threshold: 0.")
    write_tuned(folder, _result(0.4))
    assert not stale.exists()
    _consistent(folder)


def test_copy_killed_before_the_rename_leaves_nothing_and_reruns(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tuned"
    _kill_at_replace(monkeypatch, 1)  # inside the copy: its postproc.yaml
    with pytest.raises(KeyboardInterrupt):
        write_tuned(folder, _result(0.4), out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no out, no temporary
    monkeypatch.undo()
    # a kill -9 leaves the temporary folder behind: the rerun removes it and succeeds
    stale = tmp_path / f".tuned.ircr-tmp-{DEAD_PID}-0a1b2c3d"
    shutil.copytree(folder, stale)
    (folder / f".model.yaml.ircr-tmp-{DEAD_PID}-0a1b2c3d").write_text("x")  # not copied
    assert write_tuned(folder, _result(0.4), out=out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "tuned"]
    assert yaml.safe_load((out / "postproc.yaml").read_text())["threshold"] == 0.4
    _consistent(out)  # also: the source's temporary file was not copied
    assert yaml.safe_load((folder / "postproc.yaml").read_text())["threshold"] == 0.5


def test_full_disk_while_copying_is_one_line_and_leaves_nothing(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def no_space(src: str, dst: str, *a: object, **k: object) -> None:
        Path(dst).write_bytes(b"\0" * 10)  # a truncated file, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(shutil, "copyfile", no_space)  # copytree -> copy2 -> copyfile
    out = tmp_path / "tuned"
    with pytest.raises(IrcrError) as exc:
        write_tuned(folder, _result(0.4), out=out)
    assert str(exc.value) == f"{out}: cannot write the tuned copy (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    from ircr.cli import tune as cli_tune
    from ircr.cli.main import main
    from ircr.engine import tune as engine_tune

    maps = [(np.zeros((32, 32), np.float32), np.zeros((2, 32, 32), np.float32),
             np.zeros((32, 32), np.int32))]

    class Loaded:
        postproc = WBISParams()

    monkeypatch.setattr(engine_tune, "predict_for_tuning",
                        lambda *a, **k: (Loaded(), maps, ["a"]))
    assert cli_tune  # the CLI imports predict_for_tuning from the engine at call time
    assert main(["tune-postproc", str(folder), str(tmp_path), "--grid", "threshold=0.5",
                 "--grid", "marker_threshold=0.4", "--grid", "ksize=21", "--grid",
                 "min_size=10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"ircr: error: {out}: cannot write the tuned copy (No space left on device)\n"
    assert not out.exists()
