"""How much faster k single-threaded processes run together than one: the machine's ceiling.

    python benchmarks/parallel_ceiling.py [--procs 2] [--seconds 8]

A cohort spread over k worker processes cannot scale better than the machine lets k
independent processes run side by side. This measures that ceiling directly, for four
single-threaded workloads, each run by 1 process alone and then by ``--procs`` processes at
once (started together behind a barrier, counting completed runs for ``--seconds``):

* ``python loop``: integer arithmetic in the interpreter (the core's scalar units, L1-resident);
* ``stream copy``: copying a 256 MiB array (DRAM bandwidth);
* ``network 128 px``: the packaged default network's forward pass, one torch thread, on a
  128 px window (activations of a few MiB: mostly cache-resident);
* ``network 1064 px``: the same on the 1064 px window a 1000 px tile runs in ``ircr segment``
  (activations streamed through DRAM), with glibc's ``keep_freed_memory`` settings as the
  engine uses them for images (without them each run re-faults its activations from the
  kernel, which adds system time and hides the memory traffic);
* ``segment 1000 px tile``: ``NucleusSegmenter.segment`` of a real MoNuSeg tile (network,
  WBIS, the nucleus table: a cohort task less reading the file and writing the outputs).

Printed: runs per second alone, together (all processes), and the ratio. A ratio near k means
independent cores; near 1 means the processes share one physical core (SMT siblings of a
cloud VM's vCPUs) or one memory channel. ``bench_cohort.py`` prints it next to its speed-up.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKLOADS = ("python loop", "stream copy", "network 128 px", "network 1064 px",
             "segment 1000 px tile")
TILE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "MoNuSeg2018" / "train"
        / "images" / "TCGA-18-5592-01Z-00-DX1.tif")


def _workload(name: str) -> Callable[[], Any]:
    """A zero-argument callable doing one unit of the named workload (built once)."""
    if name == "python loop":
        def loop() -> int:
            s = 0
            for i in range(200_000):
                s += i * i % 7
            return s
        return loop
    if name == "stream copy":
        import numpy as np

        src = np.ones(32 * 2**20, dtype=np.float64)  # 256 MiB
        dst = np.empty_like(src)
        return lambda: np.copyto(dst, src)
    import torch

    from ircr.compat import keep_freed_memory
    from ircr.engine.packaged import resolve_model
    from ircr.engine.segmenter import load_model

    keep_freed_memory()  # as NucleusSegmenter.segment: freed activations reused, not re-faulted
    seg = load_model(resolve_model(None), device="cpu")
    if name == "segment 1000 px tile":
        from ircr.io.image import read_image

        image = read_image(TILE)
        return lambda: seg.segment(image, mpp=0.25)
    size = 128 if name == "network 128 px" else 1064
    model = seg.model
    x = torch.rand(1, 3, size, size)

    def forward() -> Any:
        with torch.inference_mode():
            return model(x)
    return forward


def _child(name: str, seconds: float, barrier: Any, results: Any) -> None:
    import torch

    torch.set_num_threads(1)
    run = _workload(name)
    run()  # warm-up (allocations, oneDNN primitive cache)
    barrier.wait()
    t0 = time.perf_counter()
    n = 0
    while True:
        run()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    results.put(n / dt)


def throughput(name: str, procs: int, seconds: float) -> float:
    """Runs per second of ``procs`` processes together, each doing the workload alone."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_child, args=(name, seconds, barrier, results))
          for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [results.get() for _ in ps]
    for p in ps:
        p.join()
    return float(sum(rates))


def ceiling(procs: int = 2, seconds: float = 8.0,
            workloads: tuple[str, ...] = WORKLOADS) -> list[tuple[str, float, float]]:
    """(workload, runs/s of 1 process, runs/s of ``procs`` processes together) per workload."""
    return [(w, throughput(w, 1, seconds), throughput(w, procs, seconds)) for w in workloads]


def table(rows: list[tuple[str, float, float]], procs: int) -> str:
    """A Markdown table of :func:`ceiling`'s rows."""
    lines = [f"| workload | runs/s, 1 process | runs/s, {procs} processes | ratio |",
             "|---|---:|---:|---:|"]
    lines += [f"| {w} | {one:.2f} | {many:.2f} | {many / one:.2f}x |" for w, one, many in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0, help="counting time per measurement")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average before: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(table(ceiling(args.procs, args.seconds), args.procs))


if __name__ == "__main__":
    main()
