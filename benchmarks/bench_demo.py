"""Time of ``ircr demo`` per stage, measured as wall *and* CPU seconds (load-independent).

    .venv/bin/python benchmarks/bench_demo.py                  # 12 iterations per method
    .venv/bin/python benchmarks/bench_demo.py --iterations 240 # the whole training budget

Runs the full demo's own stages (:mod:`ircr.demo`, FULL settings: data preparation, each
method's training for ``--iterations`` of its 240, whole-image validation of both models)
and prints, per stage, wall seconds, process CPU seconds and the 1-minute load average, then
the projection of the whole demo: measured stages + (240 / iterations) x the measured
training. On a machine shared with other jobs the wall time inflates with the load. With
``--threads 1`` the CPU time is close to the single-core time of an idle machine (with 2
threads it is not: OpenMP threads spin while waiting for a core), so an idle 2-core machine
needs between CPU/2 (perfect 2-thread scaling) and CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _stage(name: str, fn: Callable[[], Any], rows: list[tuple[str, float, float, float]]
           ) -> Any:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rows.append((name, wall, cpu, os.getloadavg()[0]))
    print(f"{name:<28} wall {wall:7.1f} s  cpu {cpu:7.1f} s  load {os.getloadavg()[0]:.1f}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=12, help="training iterations per method")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1: CPU seconds are not inflated by threads spinning "
                         "while they wait for a core on a loaded machine)")
    args = ap.parse_args()

    import torch

    from ircr import demo
    from ircr.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    s = demo.FULL
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        folder, split = _stage("prepare data", lambda: demo.prepare_data(out, s, 0), rows)
        dirs: dict[str, Path] = {}
        for m in demo.METHODS:
            cfg = demo.experiment(folder, split, s, m, 0)
            cfg.train.max_iterations = args.iterations
            cfg.train.val_every = 0
            run = out / "runs" / m
            tr = Trainer(cfg, run)
            tr.validate = lambda progress=False: {}  # type: ignore[method-assign,misc]
            dirs[m] = _stage(f"train {m} ({args.iterations} it)", tr.run, rows)
        _stage("evaluate both", lambda: demo.evaluate(folder, split, dirs, s, 0), rows)
        _stage("segment tile + figures", lambda: (
            demo.plot_curves(out), demo.segment_tile(out, folder, split, dirs)), rows)
    scale = s.iterations / args.iterations
    # the demo also validates each model at the end of its training (= "evaluate both")
    factor = {"prepare": 1.0, "train": scale, "evaluate": 2.0, "segment": 1.0}
    wall = sum(r[1] * factor[r[0].split()[0]] for r in rows)
    cpu = sum(r[2] * factor[r[0].split()[0]] for r in rows)
    print(f"projected full demo ({s.iterations} it per method, validation at the end of each "
          f"training included): wall {wall / 60:.1f} min at this load, CPU {cpu / 60:.1f} min "
          f"(idle 2 cores: about {cpu / 120:.1f}-{cpu / 60:.1f} min)")


if __name__ == "__main__":
    main()
