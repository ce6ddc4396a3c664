"""``ircr segment`` with the packaged default model: old path vs new path, side by side.

    OMP_NUM_THREADS=2 python benchmarks/bench_segment_speed.py                # 3 tiles x 3
    python benchmarks/bench_segment_speed.py --tiles 1 --repeats 1 --slide-size 1664

Old path: 256 px windows blended with 64 px overlap, batch 8, stitching tile 1024 (the
setting before issue 23), with glibc's default malloc settings and PyTorch's 4 KB-page tensors
as then (``--old-malloc same``: the engine's memory settings like the other paths).
New path: the packaged folder's ``inference:`` setting (one 1088
px window per image up to 1024 px; slides in 512 px tiles, one 768 px window each). Each
path runs in its own child process (memory settings are per process: PyTorch reads
``THP_MEM_ALLOC_ENABLE`` once), which loads its model once; the paths alternate per repeat on
the same inputs (the machine may be shared: medians of wall time and of the child's
``time.process_time``), with ``--threads`` torch threads (2).
``--four-kb`` adds the new path with PyTorch's 4 KB-page tensors (``new-4k``: what the new
path was before ``load_model`` asked for huge pages). ``--compiled`` adds a path: the new
setting with ``compile=True`` (``ircr segment --compile``: inductor, frozen weights, one
static graph per window shape on CPU); each input
is run once through it before the timing (compilation; its wall time is printed as "first
call"), so its figures are the steady state of a folder or slide with that window shape.

Inputs: real MoNuSeg 2018 tiles (1000x1000 at 0.25 µm/px, ``--data``); a "small slide": a
pyramidal TIFF made on the fly from a mosaic of those tiles (``--slide-size`` px square),
run through the streaming slide pipeline (``process``: tissue mask, tiles, all outputs).
AJI old vs new: per real tile (old path's map as reference). Peak RSS: a fresh subprocess
segments a ``--rss-size`` x ``--rss-size`` synthetic pyramidal TIFF (glass with a block of
real tissue, ``--rss-tissue`` px; memory does not grow with the tissue area: one label band,
one tile in flight) with the new path; its own ``VmHWM`` is the figure (``peak_memory.py``:
``ru_maxrss`` of a child reports the parent's peak when that is larger).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from peak_memory import peak_rss_mib

GLASS = (243, 241, 246)
OLD = {"window": 256, "overlap": 64, "batch_size": 8, "tile": 1024}


def load(kind: str, tile: int | None = None) -> Any:
    """The packaged default model on the CPU: old, new or compiled (new + compile) path.

    ``tile``: stitching tile core of the new and compiled paths (None: the engine's default).
    """
    import ircr

    if kind == "old":
        return ircr.load_model(None, device="cpu", **OLD)
    return ircr.load_model(None, device="cpu", compile=kind == "compiled", tile=tile)


def real_tiles(data: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` MoNuSeg images (name, (1000, 1000, 3) uint8)."""
    from ircr.io.image import read_image

    paths = sorted(glob.glob(str(data / "images" / "*.tif")))[:n]
    if not paths:
        sys.exit(f"bench_segment_speed: no images under {data / 'images'}")
    return [(Path(p).stem[:12], read_image(p)) for p in paths]


def _level_tiles(block: np.ndarray, y0: int, x0: int, h: int, w: int, k: int,
                 t: int = 256) -> Iterator[np.ndarray]:
    """Tiles (t, t, 3) of pyramid level ``k`` (downsample 2**k): glass + ``block`` at y0, x0."""
    d = 2**k
    small = block[::d, ::d]
    by, bx = y0 // d, x0 // d
    for ty in range(0, h, t):
        for tx in range(0, w, t):
            tile = np.empty((t, t, 3), np.uint8)
            tile[:] = GLASS
            sy0, sx0 = max(ty, by), max(tx, bx)
            sy1, sx1 = min(ty + t, by + small.shape[0]), min(tx + t, bx + small.shape[1])
            if sy0 < sy1 and sx0 < sx1:
                tile[sy0 - ty:sy1 - ty, sx0 - tx:sx1 - tx] = small[sy0 - by:sy1 - by,
                                                                   sx0 - bx:sx1 - bx]
            yield tile


def write_slide(path: Path, size: int, block: np.ndarray, y0: int, x0: int) -> None:
    """Square pyramidal tiled TIFF at 0.25 µm/px, written tile by tile (never whole in RAM)."""
    import tifffile

    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib",
            "compressionargs": {"level": 1}, "resolutionunit": "CENTIMETER", "dtype": np.uint8}
    n = 0
    while size // 2 ** (n + 1) >= 512:
        n += 1
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(_level_tiles(block, y0, x0, size, size, 0), shape=(size, size, 3),
                  subifds=n, resolution=(4e4, 4e4), **opts)
        for k in range(1, n + 1):
            s = -(-size // 2**k)
            tif.write(_level_tiles(block, y0, x0, s, s, k), shape=(s, s, 3), subfiletype=1,
                      resolution=(4e4 / 2**k,) * 2, **opts)


def mosaic(tiles: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
    """(size, size, 3) tissue from the real tiles (flipped per position so neighbours differ)."""
    out = np.empty((size, size, 3), np.uint8)
    k = 0
    for y in range(0, size, 1000):
        for x in range(0, size, 1000):
            t = tiles[k % len(tiles)][1]
            t = t[::-1] if k % 2 else t
            h, w = min(1000, size - y), min(1000, size - x)
            out[y:y + h, x:x + w] = t[:h, :w]
            k += 1
    return out


def timed(fn: Any, arg: Any) -> tuple[Any, float, float]:
    """(result, wall s, process CPU s) of ``fn(arg)``."""
    c0, t0 = time.process_time(), time.perf_counter()
    res = fn(arg)
    return res, time.perf_counter() - t0, time.process_time() - c0


def thp_setting(kind: str, old_malloc: str) -> str:
    """``THP_MEM_ALLOC_ENABLE`` of the process that runs path ``kind`` (PyTorch reads it once
    per process): "0" (4 KB pages) for the old path run as before issue 23 (``old_malloc``
    "glibc"; glibc's default malloc settings too, see :func:`path_worker`) and for new-4k,
    else "1" as ``load_model`` sets it."""
    return "0" if (kind == "old" and old_malloc == "glibc") or kind == "new-4k" else "1"


def path_worker(kind: str, tile: int | None, threads: int, old_malloc: str, conn: Any) -> None:
    """Child process of one path: loads its model once, then runs each job sent to it.

    A job is ("image", array) or ("slide", path, out folder); the reply is (wall s,
    process CPU s, result): the instance map (int32) and its count, or the nuclei count.
    """
    import torch

    import ircr.engine.segmenter as segmenter
    from ircr.compat import keep_freed_memory

    torch.set_num_threads(threads)
    if kind == "old" and old_malloc == "glibc":  # segment() would keep freed memory
        segmenter.keep_freed_memory = lambda keep=True: keep_freed_memory(False)  # type: ignore[assignment,misc]
    seg = load(kind, tile)
    runs = 0
    while (job := conn.recv()) is not None:
        runs += 1
        if job[0] == "image":
            res, wall, cpu = timed(lambda img: seg.segment(img, mpp=0.25), job[1])
            conn.send((wall, cpu, {"inst": res.inst, "n": len(res)}))
        else:
            out = job[2] / f"{kind}{runs}"
            res, wall, cpu = timed(lambda j, o=out: seg.process(j[1], o), job)
            conn.send((wall, cpu, {"n": res["n_nuclei"]}))


class PathProcesses:
    """One child process per path (its own allocator settings), fed jobs in turn."""

    def __init__(self, kinds: tuple[str, ...], tile: int | None, threads: int,
                 old_malloc: str) -> None:
        import multiprocessing as mp

        from ircr.compat import THP_ENV

        ctx = mp.get_context("spawn")
        self.conns: dict[str, Any] = {}
        self.procs: list[Any] = []
        saved = os.environ.get(THP_ENV)
        try:
            for kind in kinds:
                os.environ[THP_ENV] = thp_setting(kind, old_malloc)  # spawn passes it on
                parent, child = ctx.Pipe()
                # not a daemon: inductor (the compiled path) starts compile workers of its own
                proc = ctx.Process(target=path_worker,
                                   args=(kind, tile, threads, old_malloc, child))
                proc.start()
                self.conns[kind], self.procs = parent, self.procs + [proc]
        finally:
            if saved is None:
                os.environ.pop(THP_ENV, None)
            else:
                os.environ[THP_ENV] = saved

    def run(self, kind: str, job: tuple) -> tuple[float, float, dict]:
        """Send one job to path ``kind``'s process and wait for its (wall, CPU, result)."""
        try:
            self.conns[kind].send(job)
            out: tuple[float, float, dict] = self.conns[kind].recv()
        except (EOFError, BrokenPipeError):
            code = self.procs[list(self.conns).index(kind)].exitcode
            sys.exit(f"bench_segment_speed: the {kind} path's process died (exit code {code}); "
                     "its error is above")
        return out

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=60)


def side_by_side(paths: PathProcesses, jobs: list[tuple[str, float, tuple]],
                 repeats: int) -> tuple[dict[str, dict[str, dict[str, float]]], dict]:
    """Each job (name, megapixels, message) ``repeats`` times per path, the order rotating.

    Returns {job: {path: {"wall": median s/MP, "cpu": median CPU s/MP[, "first": s]}}} and
    the last results {(job, path): result}. A "compiled" path is warmed up on each job first.
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    last: dict = {}
    kinds = list(paths.conns)
    for name, mp, job in jobs:
        warm_up = paths.run("compiled", job)[0] if "compiled" in kinds else None
        walls: dict[str, list[float]] = {k: [] for k in kinds}
        cpus: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(repeats):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                wall, cpu, res = paths.run(kind, job)
                walls[kind].append(wall / mp)
                cpus[kind].append(cpu / mp)
                last[(name, kind)] = res
        table[name] = {k: {"wall": statistics.median(walls[k]),
                           "cpu": statistics.median(cpus[k])} for k in kinds}
        if warm_up is not None:
            table[name]["compiled"]["first"] = warm_up
        print(f"  {name}: " + ", ".join(f"{k} {table[name][k]['wall']:.2f} s/MP"
                                        for k in kinds), file=sys.stderr, flush=True)
    return table, last


def rss_worker(args: argparse.Namespace) -> None:
    """Subprocess: segment the big slide with ``--rss-path``; print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    seg = load(args.rss_path, args.tile)
    t0 = time.perf_counter()
    summary = seg.process(args.slide, args.out)
    print(json.dumps({"wall": time.perf_counter() - t0,
                      "peak_rss_mib": peak_rss_mib(),
                      "tiles": summary.get("tiles"), "n_nuclei": summary.get("n_nuclei")}))


def peak_rss(args: argparse.Namespace, tiles: list[tuple[str, np.ndarray]],
             root: Path) -> dict[str, Any]:
    """Write the big synthetic slide and segment it in a fresh subprocess."""
    slide = root / f"rss_{args.rss_size}.tif"
    c = args.rss_size // 2 - args.rss_tissue // 2
    write_slide(slide, args.rss_size, mosaic(tiles, args.rss_tissue), c, c)
    cmd = [sys.executable, __file__, "--rss-worker", "--slide", str(slide), "--out",
           str(root / "rss_out"), "--threads", str(args.threads), "--rss-path", args.rss_path]
    cmd += ["--tile", str(args.tile)] if args.tile else []
    from ircr.compat import THP_ENV

    env = {**os.environ, THP_ENV: thp_setting(args.rss_path, args.old_malloc)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/MoNuSeg2018/train"))
    ap.add_argument("--tiles", type=int, default=3, help="real 1000x1000 tiles (3)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slide-size", type=int, default=2048, help="small slide side px (0: none)")
    ap.add_argument("--rss-size", type=int, default=20000, help="RSS slide side px (0: none)")
    ap.add_argument("--rss-tissue", type=int, default=1700, help="tissue block side px")
    ap.add_argument("--rss-path", choices=("old", "new", "compiled"), default="new",
                    help="path whose peak RSS is measured (new; compiled: includes compiling)")
    ap.add_argument("--compiled", action="store_true",
                    help="also time the new path with compile=True (inductor, frozen)")
    ap.add_argument("--four-kb", action="store_true",
                    help="also time the new path with PyTorch's 4 KB-page tensors (new-4k: "
                         "THP_MEM_ALLOC_ENABLE=0), to isolate the huge pages' share")
    ap.add_argument("--tile", type=int, default=None,
                    help="stitching tile core of the new/compiled paths (default: the engine's)")
    ap.add_argument("--old-malloc", choices=("glibc", "same"), default="glibc",
                    help="the old path's in-memory images with glibc's default malloc settings "
                         "as before issue 23 (glibc, default) or the engine's (same)")
    ap.add_argument("--rss-only", action="store_true",
                    help="only the peak-RSS run (no side-by-side timing)")
    ap.add_argument("--rss-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_worker:
        rss_worker(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    tiles = real_tiles(args.data, args.tiles)
    if args.rss_only:
        with tempfile.TemporaryDirectory() as tmp:
            _print_rss(args, peak_rss(args, tiles, Path(tmp)))
        return
    kinds = (("old", "new") + (("new-4k",) if args.four_kb else ())
             + (("compiled",) if args.compiled else ()))
    paths = PathProcesses(kinds, args.tile, args.threads, args.old_malloc)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs: list[tuple[str, float, tuple]] = [
            (name, img.shape[0] * img.shape[1] / 1e6, ("image", img)) for name, img in tiles]
        if args.slide_size:
            slide = root / "small_slide.tif"
            write_slide(slide, args.slide_size, mosaic(tiles, args.slide_size), 0, 0)
            jobs += [(f"slide {args.slide_size}²", args.slide_size**2 / 1e6,
                      ("slide", slide, root / "out"))]
        table, last = side_by_side(paths, jobs, args.repeats)
        paths.close()
        rss = peak_rss(args, tiles, root) if args.rss_size else None
    load_avg = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch threads {args.threads}; repeats {args.repeats}; load average now {load_avg}")
    _print_table(table, last)
    if rss is not None:
        _print_rss(args, rss)


def _print_table(table: dict[str, dict[str, dict[str, float]]], last: dict) -> None:
    """One row per input and path: s/MP wall (CPU), speed-up against old, AJI vs old."""
    from ircr.metrics import instance_metrics

    print("| input | path | s/MP wall (CPU) | speed-up vs old wall (CPU) | AJI vs old | "
          "nuclei | first call s |")
    print("|---|---|---|---|---|---|---|")
    for name, row in table.items():
        o, a = row["old"], last[(name, "old")]
        for kind, t in row.items():
            b = last[(name, kind)]
            aji = f"{instance_metrics(a['inst'], b['inst']).aji:.3f}" if "inst" in a else "-"
            count = b["n"]
            first = f"{t['first']:.1f}" if "first" in t else "-"
            print(f"| {name} | {kind} | {t['wall']:.2f} ({t['cpu']:.2f}) | "
                  f"{o['wall'] / t['wall']:.2f}x ({o['cpu'] / t['cpu']:.2f}x) | {aji} | "
                  f"{count} | {first} |")


def _print_rss(args: argparse.Namespace, rss: dict[str, Any]) -> None:
    if "error" in rss:
        print(f"peak RSS {args.rss_size}²: failed: {rss['error']}")
    else:
        print(f"peak RSS, {args.rss_size}² slide region, {args.rss_path} path: "
              f"{rss['peak_rss_mib']:.0f} MiB ({rss['tiles']['processed']} tissue tiles, "
              f"{rss['n_nuclei']} nuclei, {rss['wall']:.0f} s; torch threads {args.threads})")


if __name__ == "__main__":
    main()
