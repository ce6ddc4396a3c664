"""Cohort inference: 2 single-threaded Dask workers vs one single-threaded serial process.

    python benchmarks/bench_cohort.py                    # 4 full 1000 px inputs (minutes)
    python benchmarks/bench_cohort.py --crop 160 --smoke # a quick check that it runs

The same 4 real inputs (three MoNuSeg 2018 training tiles and a pyramidal TIFF made from a
fourth, all at 0.25 µm/px) are segmented with the packaged ``default`` model twice in one
invocation, side by side:

* serial: :func:`ircr.engine.cohort.segment_cohort` in a fresh child process with one torch
  thread (``OMP_NUM_THREADS=1``), the serial executor;
* serial, pinned: the same child on one core only (``sched_setaffinity``; ``--no-pin`` skips
  it), so the slide pipeline's post-processing thread cannot use an idle second core;
* dask: the same call on a ``LocalCluster`` of ``--workers`` worker processes with one torch
  thread each (the cluster is started before the clock starts; its start is shown apart).

Then each input's task seconds, serial and on Dask (where two run at once).

Both timings include loading the model (serial: once; dask: once per worker, by the worker
plugin) and writing every output, not importing torch and ircr (done before the clock on both
sides). ``--warm`` measures the steady state of a long cohort instead: every process (the
serial one, each worker) first segments the first input once, outside the clock, since a
process's first network call costs about 4 s more (oneDNN kernels, heap growth) and with 4
short inputs the two workers' two first calls weigh against the serial process's one.
Printed: wall seconds, speed-up (serial / dask), the sum of
the per-input task seconds, and the scheduler overhead per task, measured two ways: the dask
wall minus the busiest worker's task seconds, per task; and the round trip of a no-op task
(submit -> result, mean of 20). Run it on an otherwise idle machine with at least
``--workers`` cores: on a shared, loaded machine the speed-up says little.

Then the machine's own ceiling (``parallel_ceiling.py``): how much faster ``--workers``
single-threaded processes run side by side than one, on the same network and on plain
workloads, so the speed-up can be read against what the cores allow (``--ceiling-seconds 0``
skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts
from parallel_ceiling import ceiling, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "MoNuSeg2018" / "train"


def write_pyramid(path: Path, img: np.ndarray, mpp: float, levels: int = 2) -> None:
    """A tiled pyramidal TIFF (SubIFDs) with resolution tags."""
    import tifffile

    opts = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=levels, resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER", **opts)
        for k in range(1, levels + 1):
            f = 2**k
            tif.write(np.ascontiguousarray(img[::f, ::f]), subfiletype=1,
                      resolution=(1e4 / mpp / f, 1e4 / mpp / f), resolutionunit="CENTIMETER",
                      **opts)


def make_inputs(data: Path, folder: Path, crop: int) -> list[Path]:
    """3 MoNuSeg tiles (top-left ``crop`` px) and a pyramidal TIFF of a fourth."""
    import tifffile

    tiles = sorted((data / "images").glob("*.tif"))[:4]
    if len(tiles) < 4:
        sys.exit(f"bench_cohort: need 4 MoNuSeg tiles in {data / 'images'}")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, src in enumerate(tiles[:3]):
        dst = folder / f"tile{k}.tif"
        tifffile.imwrite(dst, np.ascontiguousarray(tifffile.imread(src)[:crop, :crop]))
        out.append(dst)
    write_pyramid(folder / "slide.tif",
                  np.ascontiguousarray(tifffile.imread(tiles[3])[:crop, :crop]), 0.25)
    return out + [folder / "slide.tif"]


def run_cohort(inputs: list[Path], out: Path, client: Any = None) -> dict[str, Any]:
    """segment_cohort on the inputs; wall seconds and per-input (seconds, worker)."""
    from ircr.engine.cohort import segment_cohort

    t0 = time.perf_counter()
    res = segment_cohort(inputs, out, client=client, mpp=0.25,
                         load_options={"device": "cpu"}, log=lambda s: None)
    wall = time.perf_counter() - t0
    bad = res.failed
    if bad:
        sys.exit(f"bench_cohort: failed inputs: {bad}")
    return {"wall": wall, "task_s": [float(r["seconds"]) for r in res.rows],
            "nuclei": sum(int(r["n_nuclei"]) for r in res.rows)}


def warm_imports() -> None:
    """Import torch and the engine (not timed on either side: both pay it once)."""
    import ircr.engine.segmenter  # noqa: F401
    from ircr.inference.family import get_family

    get_family()  # the family plug-ins (torchvision for Mask R-CNN)


def warm_up(path: str) -> None:
    """Segment one input with a model of its own, outside the clock: the process's first
    network call builds oneDNN's kernels for each layer shape and grows the heap (about 4 s
    of a 1000 px tile's 8-9 s on one thread), and every later call of that shape reuses them."""
    import ircr

    ircr.load_model(None, device="cpu").segment(path, mpp=0.25)


def run_serial(inputs: list[Path], out: Path, pin: bool, warm: bool = False
               ) -> dict[str, Any]:
    """The serial measurement in a fresh child process (one torch thread; ``pin``: one core;
    ``warm``: :func:`warm_up` on the first input before the clock)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--serial-child", json.dumps([str(p) for p in inputs]),
           "--out", str(out)] + (["--pin"] if pin else []) + (["--warm"] if warm else [])
    child = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if child.returncode:
        sys.exit(f"bench_cohort: serial run failed:\n{child.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def serial_child(args: argparse.Namespace) -> None:
    """The serial measurement, in this (child) process with one torch thread (``--pin``: and
    on one core, so the slide pipeline's post-processing thread cannot use an idle one)."""
    import cv2
    import torch

    if args.pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # as the workers (WorkerInit): single-threaded OpenCV too
    warm_imports()
    inputs = [Path(p) for p in json.loads(args.serial_child)]
    if args.warm:
        warm_up(str(inputs[0]))
    print(json.dumps(run_cohort(inputs, Path(args.out))))


def on_dask(client: Any, inputs: list[Path], out: Path
            ) -> tuple[float, float, list[float], int]:
    """Dask wall, the busiest worker's task seconds, each input's task seconds, and the
    nuclei (the executor)."""
    from ircr.engine.cohort import CohortInput, SegmentJob, build_segmenter, segment_task
    from ircr.engine.outputs import output_names
    from ircr.engine.packaged import resolve_model
    from ircr.executor import WorkerSetup, open_executor
    from ircr.executor.base import Outcome

    job = SegmentJob(out, tuple(output_names()), 0.25)
    setup = WorkerSetup(f"bench:{time.time()}", build_segmenter,
                        {"path": str(resolve_model(None)), "device": "cpu"})
    busy: dict[str, float] = defaultdict(float)
    per_input = [0.0] * len(inputs)
    nuclei = 0
    t0 = time.perf_counter()
    with open_executor(client=client, threads=1) as ex:
        outs: list[Outcome] = list(ex.map(segment_task, [(CohortInput(p), job) for p in inputs],
                                          setup))
    wall = time.perf_counter() - t0
    for o in outs:
        if not o.ok:
            sys.exit(f"bench_cohort: {inputs[o.index]}: {o.error}")
        busy[o.worker] += o.seconds
        per_input[o.index] = o.seconds
        nuclei += int(o.value["summary"]["n_nuclei"])
    return wall, max(busy.values()), per_input, nuclei


def noop(state: Any, item: int) -> int:
    return item


def round_trip(client: Any, n: int = 20) -> float:
    """Mean seconds from submit to result of a no-op task (one at a time)."""
    from ircr.executor import open_executor

    with open_executor(client=client) as ex:
        t0 = time.perf_counter()
        for i in range(n):
            list(ex.map(noop, [i]))
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="MoNuSeg 2018 train folder")
    ap.add_argument("--crop", type=int, default=1000, help="input size in px (default 1000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="no-op round trips: 3 instead of 20")
    ap.add_argument("--ceiling-seconds", type=float, default=8.0,
                    help="counting time per workload of the machine's ceiling (0: skip it)")
    ap.add_argument("--no-pin", action="store_true",
                    help="skip the serial run pinned to one core")
    ap.add_argument("--warm", action="store_true",
                    help="steady state: every process (the serial one, each worker) segments "
                         "the first input once before the clock (cold start is the default)")
    ap.add_argument("--serial-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serial_child is not None:
        serial_child(args)
        return
    from distributed import Client

    from ircr.executor.dask_cluster import local_cluster

    tmp = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    inputs = make_inputs(args.data, tmp / "inputs", args.crop)
    serial = run_serial(inputs, tmp / "serial", pin=False, warm=args.warm)
    pinned = (run_serial(inputs, tmp / "pinned", pin=True, warm=args.warm)
              if hasattr(os, "sched_setaffinity") and not args.no_pin else None)
    t0 = time.perf_counter()
    cluster = local_cluster(args.workers, gpus=0)
    client = Client(cluster)
    client.wait_for_workers(args.workers)
    client.run(warm_imports)
    if args.warm:
        client.run(warm_up, str(inputs[0]))
    start = time.perf_counter() - t0
    try:
        wall, busiest, dask_s, nuclei = on_dask(client, inputs, tmp / "dask")
        rt = round_trip(client, 3 if args.smoke else 20)
    finally:
        client.close()
        cluster.close()
    n = len(inputs)
    start_kind = ("warm: each process segmented the first input before the clock"
                  if args.warm else "cold start")
    print(f"\n{n} inputs of {args.crop} px (3 MoNuSeg tiles + 1 pyramidal TIFF), packaged "
          f"default model, CPU, one torch thread per process; {os.cpu_count()} cores; "
          f"{start_kind}\n")
    print("| run | wall s | sum of task s | speed-up | nuclei |")
    print("|---|---:|---:|---:|---:|")
    print(f"| serial, 1 process | {serial['wall']:.2f} | {sum(serial['task_s']):.2f} | 1.00x "
          f"| {serial['nuclei']} |")
    if pinned is not None:
        print(f"| serial, 1 process pinned to 1 core | {pinned['wall']:.2f} | "
              f"{sum(pinned['task_s']):.2f} | {serial['wall'] / pinned['wall']:.2f}x "
              f"| {pinned['nuclei']} |")
    print(f"| dask, {args.workers} workers | {wall:.2f} | {sum(dask_s):.2f} | "
          f"{serial['wall'] / wall:.2f}x "
          f"| {nuclei} |")
    if pinned is not None:
        print(f"\nDask vs the serial process pinned to one core: "
              f"{pinned['wall'] / wall:.2f}x")
    print("\nPer input, task seconds (dask: two at once):\n")
    one_core = "serial, 1 core | " if pinned else ""
    print(f"| input | serial | {one_core}dask | dask / serial |")
    print("|---|---:|" + ("---:|" if pinned else "") + "---:|---:|")
    for k, p in enumerate(inputs):
        one = f"{pinned['task_s'][k]:.2f} | " if pinned else ""
        print(f"| {p.name} | {serial['task_s'][k]:.2f} | {one}{dask_s[k]:.2f} | "
              f"{dask_s[k] / serial['task_s'][k]:.2f}x |")
    print(f"\nLocalCluster start + imports (not in the wall): {start:.1f} s; "
          f"scheduler overhead per task: "
          f"{(wall - busiest) / n:.3f} s ((dask wall - busiest worker's task seconds) / tasks; "
          f"includes the workers' model load) and {rt * 1000:.1f} ms (no-op task round trip)")
    if nuclei != serial["nuclei"]:
        sys.exit(f"bench_cohort: nuclei differ: serial {serial['nuclei']}, dask {nuclei}")
    if args.ceiling_seconds > 0:
        print(f"\nThis machine's ceiling: {args.workers} single-threaded processes side by side "
              f"vs 1 alone (parallel_ceiling.py, {args.ceiling_seconds:g} s each)\n")
        print(table(ceiling(args.workers, args.ceiling_seconds), args.workers))


if __name__ == "__main__":
    main()
