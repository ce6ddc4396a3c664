"""One writer per run/output folder (issue 28 point 8): ircr.io.lock and its three users.

The other writer is a real process holding the lock (``python -c`` with FolderLock); the second
writer is the CLI itself, so the refusal is the one a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ircr.cli.main import main
from ircr.errors import IrcrError
from ircr.io.lock import LOCK_NAME, FolderLock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom ircr.io.lock import FolderLock\n"
        "with FolderLock(sys.argv[1], command='holder'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the lock of tmp_path/held (killed at the end)."""
    folder = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_with_the_holders_pid(
        holder: tuple[Path, subprocess.Popen[str]]) -> None:
    folder, proc = holder
    with pytest.raises(IrcrError, match=rf"in use by another ircr process \(pid {proc.pid}, "
                                        r"holder, since "):
        FolderLock(folder, "run folder").acquire()


def test_lock_of_a_killed_process_is_taken_over(
        holder: tuple[Path, subprocess.Popen[str]]) -> None:
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, the lock file stays
    proc.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid
    with FolderLock(folder, command="me"):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()  # released: nothing left in the folder


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # that process has exited
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "command": "old"}))
    with FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    # re-entrant within one process (an experiment's trainer inside its locked folder)
    with FolderLock(tmp_path), FolderLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def _one_line_naming(capsys: pytest.CaptureFixture[str], pid: int) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ircr: error: "), err
    assert f"pid {pid}" in err[0] and "Traceback" not in err[0]


def test_train_segment_and_experiment_refuse_a_locked_folder(
        holder: tuple[Path, subprocess.Popen[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder, proc = holder
    from ircr.data.prepare import prepare_dataset

    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 3, "size": 96}, patch=64,
                    ratio="1/2", val_fraction=0.34)
    split = sorted(p.stem for p in (ds / "splits").glob("*.yaml"))[0]
    cfg = ["--set", f"data.dataset={ds}", "--set", f"data.split={split}"]
    assert main(["train", str(REPO / "configs" / "tiny_synthetic.yaml"), *cfg,
                 "--out", str(folder)]) == 2
    _one_line_naming(capsys, proc.pid)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written

    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tile)
    assert main(["segment", str(tile), "-o", str(folder), "--mpp", "0.25"]) == 2
    _one_line_naming(capsys, proc.pid)

    proto = tmp_path / "proto.yaml"
    proto.write_text(json.dumps({
        "config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(ds),
        "ratios": ["1/2"], "val_fraction": 0.34, "methods": [{"name": "supervised"}]}))
    assert main(["experiment", str(proto), "--out", str(folder)]) == 2
    _one_line_naming(capsys, proc.pid)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]


def test_stale_temp_cleanup_removes_a_dead_holders_lock_only(
        holder: tuple[Path, subprocess.Popen[str]]) -> None:
    from ircr.io.atomic import clean_stale_temps

    folder, proc = holder
    assert clean_stale_temps(folder) == [] and (folder / LOCK_NAME).is_file()  # held: kept
    proc.kill()
    proc.wait()
    assert clean_stale_temps(folder) == [folder / LOCK_NAME]  # kill -9 leftover: removed
    assert not (folder / LOCK_NAME).exists()
    with FolderLock(folder):  # this process' own lock is never cleaned up under it
        assert clean_stale_temps(folder) == [] and (folder / LOCK_NAME).is_file()
