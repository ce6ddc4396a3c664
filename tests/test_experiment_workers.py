"""``ircr experiment --jobs 2`` as a real process tree (issue 28 point 7): lost workers are
retried or marked failed, SIGTERM/SIGINT stop every worker with a checkpoint, a killed parent
leaves no orphan, Ctrl-C while workers start prints no traceback.

Default suite: :func:`ircr.experiment.workers.run_in_processes` in a real parent process with
real spawn workers whose run is a light stand-in (no torch import: seconds per test). Slow
suite: the same four cases through ``python -m ircr experiment --jobs 2`` with real trainers,
whose runs use test plug-ins (a module the workers import through the protocol's
``plugins``): one sleeps per step (so a run lasts while the test signals it), one kills its
own worker once, one kills it every time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ircr.data.prepare import prepare_dataset
from ircr.io.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
PLUGIN = '''
import os, signal, time
from ircr.train.methods import Method, register_method


class _Sup(Method):
    def loss(self, labelled):
        return self.trainer.supervised_loss(self.trainer.model(labelled["image"]), labelled)[0], {}


@register_method("test_slow")
class Slow(_Sup):
    def train_step(self, labelled, unlabelled):
        (self.trainer.run_dir / "training").touch()
        time.sleep(0.2)
        return self.loss(labelled)


@register_method("test_lost_once")
class LostOnce(_Sup):
    def train_step(self, labelled, unlabelled):
        mark = self.trainer.run_dir / "lost_once"
        if self.trainer.iteration == 1 and not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.loss(labelled)


@register_method("test_lost_always")
class LostAlways(_Sup):
    def train_step(self, labelled, unlabelled):
        if self.trainer.iteration == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.loss(labelled)
'''


LIGHT = '''
import json, os, signal, sys, time
from dataclasses import dataclass
from pathlib import Path

if os.environ.get("I28_SLOW_START") and "--multiprocessing-fork" in sys.orig_argv:
    Path(os.environ["I28_SLOW_START"], str(os.getpid())).touch()  # (signals still blocked)
    time.sleep(1.0)  # a worker importing this module (to unpickle run): before its handlers


@dataclass
class Ctx:
    index: str


def run(entry, run_dir, ctx):
    """Stand-in for a run: the kinds below; a stop is recorded like a checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pid").write_text(str(os.getpid()))
    kind = entry["kind"]
    if kind == "lost_once" and not (run_dir / "lost_once").exists():
        (run_dir / "lost_once").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "lost_always":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "stubborn":  # a worker that does not react to its stop
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        time.sleep(120)
    if kind == "slow":
        try:  # short sleeps: like a trainer, back in Python code often (a signal may land
            for _ in range(1200):  # on another thread; the handler runs when main runs Python)
                time.sleep(0.1)
        except KeyboardInterrupt:
            (run_dir / "stopped").touch()
            raise
    doc = {"run_id": entry["run_id"], "status": "done"}
    (run_dir / "metrics.json").write_text(json.dumps(doc))
    return doc


def signal_while_spawning(how):
    """Signal (the parent, or parent and worker) inside the first worker's Process.start."""
    import multiprocessing.util as util

    spawn, done = util.spawnv_passfds, []

    def spawn_and_signal(path, args, passfds):
        pid = spawn(path, args, passfds)
        if "--multiprocessing-fork" not in args or done:
            return pid  # the resource tracker, or a later worker
        done.append(pid)
        if how == "group":  # a Ctrl-C: the worker, just exec'd, gets it too
            os.kill(pid, signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT if how == "group" else signal.SIGTERM)
        return pid

    util.spawnv_passfds = spawn_and_signal


def main():
    from ircr.experiment.workers import Task, run_in_processes

    out, kinds = Path(sys.argv[1]), sys.argv[2].split(",")
    tasks = [Task({"run_id": f"r{i}", "kind": k, "method": k, "ratio": "1", "split_seed": 0,
                   "train_seed": i}, out / f"r{i}", Ctx(f"[{i + 1}/{len(kinds)}]"))
             for i, k in enumerate(kinds)]
    if os.environ.get("I28_SPAWN_SIGNAL"):
        signal_while_spawning(os.environ["I28_SPAWN_SIGNAL"])
    try:
        res = run_in_processes(tasks, 2, run, lambda s: print(s, flush=True),
                               grace_s=float(os.environ.get("I28_GRACE", "60")))
    except KeyboardInterrupt as exc:
        print(f"interrupted by {exc}", flush=True)
        sys.exit(130)
    print("results " + json.dumps(sorted((r["run_id"], r["status"]) for r in res)), flush=True)
'''


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the light stand-in module."""
    root = tmp_path_factory.mktemp("light")
    (root / "i28_light.py").write_text(LIGHT)
    return root


def start_light(root: Path, out: Path, kinds: str, env_add: dict[str, str] | None = None,
                **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, **(env_add or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(root),
                                         env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", "import i28_light; i28_light.main()",
                             str(out), kinds], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def light_pids(out: Path, n: int, proc: subprocess.Popen[str]) -> list[int]:
    files = [out / f"r{i}" / "pid" for i in range(n)]
    wait_for(lambda: all(f.is_file() and f.read_text() for f in files), 60, proc)
    return [int(f.read_text()) for f in files]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_light_lost_worker_is_retried_or_marked_failed(light: Path, tmp_path: Path) -> None:
    proc = start_light(light, tmp_path, "lost_once,lost_always,ok")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr, stdout + stderr
    assert 'results [["r0", "done"], ["r1", "failed"], ["r2", "done"]]' in stdout
    assert "[1/3] r0: worker lost (killed by SIGKILL); starting it again" in stdout
    assert "[2/3] r1: worker lost again (killed by SIGKILL); run marked failed" in stdout
    doc = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert doc["error"] == "worker process lost 2 times (killed by SIGKILL)"


@pytest.mark.parametrize("how", ["sigterm_parent", "sigint_parent", "ctrl_c_group"])
def test_light_signal_stops_every_worker(light: Path, tmp_path: Path, how: str) -> None:
    proc = start_light(light, tmp_path, "slow,slow,ok", start_new_session=True)
    pids = light_pids(tmp_path, 2, proc)
    if how != "ctrl_c_group":  # `kill -TERM` / `kill -INT` of the experiment process only
        proc.send_signal(signal.SIGTERM if how == "sigterm_parent" else signal.SIGINT)
    else:  # a terminal's Ctrl-C: SIGINT to the whole group; workers also get the forward
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stdout + stderr
    assert "interrupted by SIG" in stdout
    assert all((tmp_path / f"r{i}" / "stopped").is_file() for i in range(2))
    assert not (tmp_path / "r2").exists()  # no new run starts after the signal
    assert not any(alive(p) for p in pids)


def test_light_killed_parent_leaves_no_orphans(light: Path, tmp_path: Path) -> None:
    proc = start_light(light, tmp_path, "slow,slow")
    pids = light_pids(tmp_path, 2, proc)
    proc.kill()
    proc.communicate(timeout=30)
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "workers outlived their parent"
    assert all((tmp_path / f"r{i}" / "stopped").is_file() for i in range(2))


def test_light_ctrl_c_while_workers_start(light: Path, tmp_path: Path) -> None:
    proc = start_light(light, tmp_path, "slow,slow", start_new_session=True)
    wait_for(lambda: len(children(proc.pid)) >= 2, 60, proc)  # spawned, still importing
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


@pytest.mark.parametrize("how", ["parent", "group"])
def test_light_stop_inside_a_workers_start_is_not_lost(light: Path, tmp_path: Path,
                                                       how: str) -> None:
    """The signal comes inside ``Process.start`` (right after the worker's exec) and the worker
    then spends 1 s unpickling its run before it sets its handlers: the stop (parent: SIGTERM
    to the parent only, so only the stop pipe reaches the worker; group: SIGINT to both, as a
    Ctrl-C) must still stop it, with no traceback. (Before: the parent ignored signals across
    the start, lost this one, and ran both runs to the end.)"""
    (tmp_path / "pids").mkdir()
    proc = start_light(light, tmp_path, "slow,slow", start_new_session=True,
                       env_add={"I28_SPAWN_SIGNAL": how, "I28_SLOW_START": str(tmp_path / "pids")})
    stdout, stderr = proc.communicate(timeout=60)
    name = "SIGTERM" if how == "parent" else "SIGINT"
    assert proc.returncode == 130 and f"interrupted by {name}" in stdout, stdout + stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert not (tmp_path / "r1").exists()  # the stop came before the second start
    pids = [int(p.name) for p in (tmp_path / "pids").iterdir()]
    assert len(pids) == 1 and not alive(pids[0])  # one worker started, and it is gone


def test_light_worker_that_does_not_stop_is_killed_after_the_grace_time(
        light: Path, tmp_path: Path) -> None:
    proc = start_light(light, tmp_path, "stubborn,slow", start_new_session=True,
                       env_add={"I28_GRACE": "1"})
    pids = light_pids(tmp_path, 2, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stdout + stderr
    assert time.monotonic() - t0 < 30  # not the stubborn worker's 120 s
    assert ("[1/2] r0: did not stop within 1 s of the SIGTERM; killed (its last checkpoint "
            "stays: the run is reported incomplete)") in stdout
    assert "r1: did not stop" not in stdout and (tmp_path / "r1" / "stopped").is_file()
    assert not any(alive(p) for p in pids)


@pytest.mark.slow  # ~21 experiments of 1-2 s each
def test_light_stop_at_many_delays_during_start(light: Path, tmp_path: Path) -> None:
    """Ctrl-C at 0, 0.05, ..., 1 s after the first child (the resource tracker) appears:
    through both workers' starts. Every experiment ends with 130, no traceback, no worker."""
    for i in range(21):
        out = tmp_path / f"d{i}"
        proc = start_light(light, out, "slow,slow", start_new_session=True)
        wait_for(lambda p=proc: len(children(p.pid)) >= 1, 60, proc)
        time.sleep(0.05 * i)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"hung: Ctrl-C {0.05 * i:.2f} s after the first spawn") from None
        assert proc.returncode == 130, (i, stdout + stderr)
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, (i, stderr)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared dataset and the plug-in module, in one folder."""
    root = tmp_path_factory.mktemp("workers")
    prepare_dataset("synthetic", None, root / "ds", options={"n_images": 3, "size": 96},
                    patch=64, ratio="1/2", val_fraction=0.34)
    (root / "i28_test_plugins.py").write_text(PLUGIN)
    return root


def protocol(root: Path, methods: list[dict[str, Any]], iterations: int,
             seeds: int = 1) -> Path:
    doc = {"config": str(REPO / "configs" / "tiny_synthetic.yaml"), "dataset": str(root / "ds"),
           "ratios": ["1/2"], "split_seeds": list(range(seeds)),
           "train_seeds": list(range(10, 10 + seeds)), "val_fraction": 0.34,
           "iterations": iterations, "budget_epochs": 1, "plugins": ["i28_test_plugins"],
           "overrides": {"data.batch_size": 2, "data.context_margin": 8, "train.lr_steps": []},
           "methods": methods}
    path = root / f"proto_{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(root: Path, proto: Path, out: Path, **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(root),
                                         env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "ircr", "experiment", str(proto), "--out",
                             str(out), "--jobs", "2", "--progress-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kw)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(cond: Any, timeout: float, proc: subprocess.Popen[str]) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"experiment ended early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


def worker_pids(out: Path, run_ids: list[str], proc: subprocess.Popen[str]) -> list[int]:
    """Worker pids from the trainers' run-folder locks, once every run is training."""
    dirs = [out / "runs" / r for r in run_ids]
    wait_for(lambda: all((d / "training").is_file() for d in dirs), 180, proc)
    return [int(json.loads((d / LOCK_NAME).read_text())["pid"]) for d in dirs]


def status(out: Path, run_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "runs" / run_id / "metrics.json").read_text())
    return doc


# 500 iterations of 0.2 s: a run lasts while the test signals it (method overrides win)
SLOW = [{"name": "slow", "method": "test_slow",
         "overrides": {"train.epochs": 1, "train.iterations_per_epoch": 500}}]


@pytest.mark.slow
def test_lost_worker_is_retried_or_marked_failed(setup: Path) -> None:
    proto = protocol(setup, [{"name": "supervised"},
                             {"name": "once", "method": "test_lost_once"},
                             {"name": "always", "method": "test_lost_always"}], iterations=3)
    out = setup / "lost"
    proc = start(setup, proto, out)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 1, stdout + stderr  # one run failed, the others finished
    assert "Traceback" not in stderr and "BrokenProcessPool" not in stderr, stderr
    assert status(out, "supervised_r1-2_s0_t10")["status"] == "done"
    assert status(out, "once_r1-2_s0_t10")["status"] == "done"  # retried, resumed, finished
    failed = status(out, "always_r1-2_s0_t10")
    assert failed["status"] == "failed"
    assert failed["error"] == "worker process lost 2 times (killed by SIGKILL)"
    assert "once_r1-2_s0_t10: worker lost (killed by SIGKILL); starting it again" in stdout
    md = (out / "report.md").read_text()
    assert "| always | 1/2 | 0/1 (1 failed) |" in md and "worker process lost 2 times" in md


@pytest.mark.slow
def test_sigterm_checkpoints_every_worker_and_reports(setup: Path) -> None:
    proto = protocol(setup, SLOW, iterations=500, seeds=2)
    out = setup / "term"
    proc = start(setup, proto, out)
    ids = ["slow_r1-2_s0_t10", "slow_r1-2_s1_t11"]
    pids = worker_pids(out, ids, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted: 2 stopped with a checkpoint" in stdout
    assert not any(alive(p) for p in pids)  # no orphan
    for rid in ids:
        assert (out / "runs" / rid / "checkpoints" / "last.pt").is_file()
        assert not (out / "runs" / rid / "metrics.json").exists()
    md = (out / "report.md").read_text()
    assert all(f"| {rid} | incomplete | " in md for rid in ids), md


@pytest.mark.slow
def test_killed_parent_leaves_no_orphans(setup: Path) -> None:
    proto = protocol(setup, SLOW, iterations=500, seeds=2)
    out = setup / "kill"
    proc = start(setup, proto, out)
    ids = ["slow_r1-2_s0_t10", "slow_r1-2_s1_t11"]
    pids = worker_pids(out, ids, proc)
    proc.kill()  # kill -9: no handler runs in the parent
    proc.communicate(timeout=30)
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < 90:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "workers outlived their parent"
    for rid in ids:  # each worker saw its parent die and checkpointed
        assert (out / "runs" / rid / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_ctrl_c_while_workers_start_prints_no_traceback(setup: Path) -> None:
    proto = protocol(setup, SLOW, iterations=500, seeds=2)
    out = setup / "int"
    proc = start(setup, proto, out, start_new_session=True)
    wait_for(lambda: (out / "plan.json").is_file(), 120, proc)
    time.sleep(0.5)  # the workers are importing torch now
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "ircr: interrupted" in stderr
    assert (out / "report.md").is_file()
