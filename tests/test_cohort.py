"""Cohort inference and experiments on Dask distributed, shards and merge (issue 24).

One ``LocalCluster`` of 2 single-threaded worker processes serves the whole module (starting
one costs seconds). The packaged ``default`` model segments 4 real inputs: three MoNuSeg tiles
cropped to 192 px and a pyramidal TIFF (two sub-resolutions) made from a fourth. The serial
``ircr segment`` run of the same inputs is the reference: the cluster's label maps must be
equal and its GeoJSON equal up to the features' ids, while one worker is killed mid-run and a
broken input fails on its own. Then: a ``--skip-done`` rerun does no work (through the CLI on
the same scheduler, ``--cluster tcp://...``), ``--shard 1/2`` + ``--shard 2/2`` + ``merge``
give the serial summary, and ``ircr experiment --cluster`` runs a tiny synthetic protocol.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from ircr.cli.main import main
from ircr.engine.cohort import CohortInput, parse_shard, segment_cohort, select_shard
from ircr.errors import IrcrError
from ircr.executor.dask_cluster import local_cluster, worker_specs
from test_wsi import write_pyramid

try:
    import distributed  # noqa: F401
except ImportError:  # CI installs it (README: pip install -e ".[dev,cluster]")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("dask distributed not installed (pip install -e \".[dev,cluster]\")",
                allow_module_level=True)

CROP = 192
COMMON = ["--mpp", "0.25", "--device", "cpu", "--no-progress"]
STEMS = ("a", "b", "c", "slide")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, monuseg_root: Path) -> Path:
    """A folder of 4 real inputs: 3 cropped MoNuSeg tiles and a small pyramidal TIFF."""
    folder = tmp_path_factory.mktemp("cohort") / "inputs"
    folder.mkdir()
    tiles = sorted((monuseg_root / "images").glob("*.tif"))[:4]
    for stem, src, (y, x) in zip(STEMS[:3], tiles, [(0, 0), (300, 500), (700, 200)]):
        tifffile.imwrite(folder / f"{stem}.tif", tifffile.imread(src)[y:y + CROP, x:x + CROP])
    img = np.ascontiguousarray(tifffile.imread(tiles[3])[100:100 + 192, 400:400 + 160])
    write_pyramid(folder / "slide.tif", img, 0.25, levels=2)
    return folder


@pytest.fixture(scope="module")
def serial(inputs: Path, client: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the serial ``ircr segment`` run of the folder (while the workers
    import torch and the engine)."""
    out = tmp_path_factory.mktemp("serial") / "out"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["segment", str(inputs), "-o", str(out), *COMMON]) == 0
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(scope="module")
def client() -> Any:
    """A client on a LocalCluster of 2 single-threaded workers (no GPU)."""
    from distributed import Client

    cluster = local_cluster(2, gpus=0)
    c = Client(cluster)
    c.wait_for_workers(2, timeout=120)
    warm = threading.Thread(target=c.run, args=(exec, "import ircr.engine.segmenter"),
                            daemon=True)  # the workers import torch while `serial` runs
    warm.start()
    yield c
    warm.join()
    c.close()
    cluster.close()


def features(path: Path) -> list[tuple[str, str]]:
    """GeoJSON features without their ids, sorted (equal up to feature ids)."""
    doc = json.loads(path.read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    out = []
    for f in feats:
        f = {k: v for k, v in f.items() if k != "id"}
        out.append((json.dumps(f.get("geometry"), sort_keys=True), json.dumps(
            {k: v for k, v in f.get("properties", {}).items() if k not in ("id", "object_id")},
            sort_keys=True)))
    return sorted(out)


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    """``ircr_summary.csv`` by image, without the run-dependent columns."""
    with open(out / "ircr_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["image"]: {k: v for k, v in r.items() if k not in ("seconds", "output_dir")}
            for r in rows}


def nuclei_lines(out: Path) -> list[str]:
    return sorted((out / "ircr_nuclei_all.csv").read_text().splitlines())


class Killer:
    """Log hook: after the first finished input, SIGKILL a worker that is running a task."""

    def __init__(self, client: Any) -> None:
        self.client, self.killed, self.lines = client, None, []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if not line.startswith("[1/") or self.killed is not None:
            return
        busy = [w for w, keys in self.client.processing().items() if keys]
        assert busy, "no worker was running a task when the first input finished"
        pid = self.client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        self.killed = pid


def test_cluster_equals_serial_with_a_killed_worker_and_a_broken_input(
        inputs: Path, serial: Path, client: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG file")
    out = tmp_path / "out"
    killer = Killer(client)
    items = [CohortInput(p) for p in sorted(inputs.glob("*.tif"))] + [CohortInput(broken)]
    res = segment_cohort(items, out, client=client, mpp=0.25,
                         load_options={"device": "cpu"}, log=killer)
    assert killer.killed is not None
    status = {r["image"]: r["status"] for r in res.rows}
    assert status == {**{f"{s}.tif": "done" for s in STEMS}, "broken.png": "failed"}, \
        res.failed
    assert res.failed[0][0] == "broken.png" and "broken.png" in res.failed[0][1]
    assert any(line.startswith("[5/5]") for line in killer.lines)
    for stem in STEMS:  # identical to the serial run
        assert np.array_equal(tifffile.imread(out / f"{stem}_labels.tif"),
                              tifffile.imread(serial / f"{stem}_labels.tif")), stem
        assert features(out / f"{stem}.geojson") == features(serial / f"{stem}.geojson")
    ref = summary_rows(serial)
    got = summary_rows(out)
    assert got["broken.png"]["status"] == "failed" and got.pop("broken.png")["error"]
    assert got == ref and nuclei_lines(out) == nuclei_lines(serial)
    assert json.loads((out / "ircr_summary.json").read_text())["failed"] == 1


def test_a_task_run_again_after_its_worker_died_replaces_its_partial_outputs(
        inputs: Path, serial: Path, tmp_path: Path) -> None:
    """A worker killed while writing leaves some of the input's files; the scheduler runs
    the task again elsewhere, and that attempt must finish (CI once saw it fail with
    'output exists'), giving the serial run's outputs."""
    from ircr.engine.cohort import SegmentJob, segment_task
    from ircr.engine.outputs import output_names
    from ircr.engine.segmenter import load_model

    out = tmp_path / "out"
    out.mkdir()
    (out / "a_labels.tif").write_bytes(b"half of a file from the killed attempt")
    job = SegmentJob(out, tuple(output_names()), mpp=0.25)
    seg = load_model(device="cpu")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = segment_task(seg, (CohortInput(inputs / "a.tif"), job))
    finally:
        torch.set_num_threads(n)
    assert res["summary"]["n_nuclei"] > 0
    assert np.array_equal(tifffile.imread(out / "a_labels.tif"),
                          tifffile.imread(serial / "a_labels.tif"))
    with pytest.raises(IrcrError, match="output exists"):  # the driver still refuses
        segment_cohort([inputs / "a.tif"], out, mpp=0.25, load_options={"device": "cpu"},
                       log=lambda line: None)


def test_skip_done_rerun_on_the_scheduler_does_no_work(
        inputs: Path, serial: Path, client: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(serial, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["segment", str(inputs), "-o", str(out), *COMMON, "--skip-done",
               "--cluster", client.scheduler.address])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "4 input(s) done before, skipped" in err and "on dask" not in err
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if not k.startswith("ircr_")} == \
        {k: v for k, v in before.items() if not k.startswith("ircr_")}
    assert {r["status"] for r in summary_rows(out).values()} == {"skipped"}


def test_shards_then_merge_give_the_serial_summary(
        inputs: Path, serial: Path, client: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Shard 2/2 on the cluster, shard 1/2 serially (this process), then merge."""
    out = tmp_path / "out"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shard, where in (("2/2", ["--cluster", client.scheduler.address]), ("1/2", [])):
            assert main(["segment", str(inputs), "-o", str(out), *COMMON, "--shard", shard,
                         *where]) == 0
            assert not (out / "ircr_summary.csv").exists()  # a shard writes no summary
    finally:
        torch.set_num_threads(n)
    assert len(list(out.glob("*_summary.json"))) == 4
    assert main(["segment", "merge", str(out)]) == 0, capsys.readouterr().err
    assert summary_rows(out) == summary_rows(serial)
    assert nuclei_lines(out) == nuclei_lines(serial)


def test_the_model_travels_as_a_recipe_not_as_weights() -> None:
    """What the worker plugin pickles to the scheduler is the folder path and options."""
    import pickle

    from ircr.engine.cohort import model_setup
    from ircr.engine.packaged import resolve_model
    from ircr.executor.dask_cluster import WorkerInit

    setup = model_setup(None, {"device": "cpu"})
    weights = resolve_model(None) / "weights.pt"
    assert weights.stat().st_size > 100_000
    assert len(pickle.dumps(WorkerInit(setup, 1))) < 2_000
    assert setup.kwargs == {"path": str(resolve_model(None)), "device": "cpu"}


def test_local_workers_get_one_gpu_each() -> None:
    specs = worker_specs(3, 2, {"nthreads": 1, "env": {"A": "1"}})
    assert [s["options"]["env"] for s in specs.values()] == [
        {"A": "1", "CUDA_VISIBLE_DEVICES": "0"}, {"A": "1", "CUDA_VISIBLE_DEVICES": "1"},
        {"A": "1", "CUDA_VISIBLE_DEVICES": "0"}]
    assert all(s["options"]["nthreads"] == 1 for s in specs.values())
    assert [s["options"]["env"] for s in worker_specs(2, 0, {}).values()] == [{}, {}]


def test_shard_selection_is_deterministic_and_covers_every_input() -> None:
    items = [CohortInput(Path(f"/x/{n}.png"), Path(s)) for n, s in
             [("b", "."), ("a", "."), ("c", "d"), ("e", "."), ("a", "d")]]
    parts = [select_shard(items, (i, 3)) for i in (1, 2, 3)]
    assert sorted(it.image for p in parts for it in p) == sorted(it.image for it in items)
    assert [it.image for it in parts[0]] == ["a.png", "d/c.png"]  # sorted: a b d/a d/c e
    assert select_shard(list(reversed(items)), (1, 3)) == parts[0]
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(IrcrError, match="^--shard: expected I/N"):
            parse_shard(bad)


@pytest.mark.parametrize("argv, expect", [
    (["--cluster", "local:0"], "--cluster: local:N needs a worker count N >= 1"),
    (["--cluster", "somewhere"], "--cluster: expected local:N, tcp://HOST:PORT"),
    (["--shard", "3/2"], "--shard: expected I/N with 1 <= I <= N"),
])
def test_bad_cluster_and_shard_values_are_one_line_errors(
        inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        expect: str) -> None:
    rc = main(["segment", str(inputs), "-o", str(tmp_path / "o"), *COMMON, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"ircr: error: {expect}")
    assert "Traceback" not in "\n".join(err)


def test_unreachable_scheduler_is_a_one_line_error() -> None:
    from ircr.executor.dask_cluster import DaskExecutor

    with pytest.raises(IrcrError, match="^--cluster: cannot start or reach scheduler "
                                        "tcp://127.0.0.1:1: OSError: Timed out"):
        DaskExecutor("address", "tcp://127.0.0.1:1", timeout=1)


def test_experiment_refuses_jobs_with_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "p.yaml", "--jobs", "2", "--cluster", "local:2"]) == 2
    assert capsys.readouterr().err.strip() == \
        "ircr: error: --jobs and --cluster: choose one (--cluster local:N runs N at once)"


def test_merge_of_a_folder_without_results_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", "merge", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"ircr: error: {tmp_path}: no finished")


def test_experiment_runs_as_cluster_tasks(client: Any, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``ircr experiment --cluster tcp://... --threads-per-worker 2``: 2 runs as tasks with 2
    torch threads each, the report; a rerun skips them."""
    from ircr.data.prepare import prepare_dataset
    from ircr.experiment.runner import run_experiment
    from test_experiment import protocol

    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.25)
    proto = protocol(tmp_path, ds, split_seeds=[0], train_seeds=[10, 11],
                     methods=[{"name": "supervised"}])
    try:
        rc = main(["experiment", str(proto), "--out", str(tmp_path / "exp"), "--progress-every",
                   "0", "--cluster", client.scheduler.address, "--threads-per-worker", "2"])
        assert set(client.run(torch.get_num_threads).values()) == {2}  # the workers' torch
    finally:
        client.run(torch.set_num_threads, 1)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "2 run(s) on dask, 2 worker(s)" in printed and "[2/2]" in printed
    runs = sorted((tmp_path / "exp" / "runs").iterdir())
    assert len(runs) == 2 and (tmp_path / "exp" / "report.md").is_file()
    for run in runs:
        doc = json.loads((run / "metrics.json").read_text())
        assert doc["status"] == "done" and (run / "model" / "weights.pt").is_file()
    lines: list[str] = []
    again = run_experiment(proto, tmp_path / "exp", client=client, log=lines.append)
    assert (again["runs"], again["skipped"], again["done"]) == (2, 2, 0)
