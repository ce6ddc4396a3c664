"""All device measurements of issue 16 in one time-boxed run, as one Markdown table.

From a fresh checkout, on a machine with one GPU::

    PYTHONPATH=src python benchmarks/gpu_suite.py              # or: benchmarks/gpu_suite.sh
    PYTHONPATH=src python benchmarks/gpu_suite.py --device cpu --quick   # CPU smoke run

Sections (each time-boxed; together within ``--budget`` seconds, default 470 s < 8 min):

1. model: paper-size HoVer-Net forward and train step at batch 4/16/64, eager vs
   ``torch.compile`` (a compile failure is reported in the table and the run goes on eagerly),
   channels_last off/on, bf16 autocast (plus one fp32 forward row for reference);
2. memory: training memory per patch with and without activation checkpointing;
3. methods: supervised / Mean Teacher / IRCR iteration rates and IRCR's per-part shares
   (``bench_ssl.py``) on synthetic tiles;
4. slides: ``bench_segment.py`` end to end on 4096² and 8192² synthetic slides (paper-size
   network, random weights, bf16), read with tifffile alone when tiffslide is not installed.

Progress goes to stderr; the table to stdout. With ``$OUT`` set (or ``--out``), the table
(``gpu_suite.md``, with the sections' detail tables) and the rows (``gpu_suite.csv``) are
rewritten after every row, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts

import torch  # noqa: E402

import bench_model  # noqa: E402
import bench_segment  # noqa: E402
import bench_ssl  # noqa: E402
from ircr.losses import hovernet_loss  # noqa: E402
from ircr.models import ModelConfig, build_model  # noqa: E402

FIELDS = ("section", "what", "setting", "value", "unit", "note")
# cumulative share of the budget by which each section must have finished
SECTION_END = {"model": 0.40, "inference": 0.48, "memory": 0.54, "methods": 0.67,
               "slides": 1.0}


class Suite:
    """Collects rows, prints progress and rewrites the output files after every row."""

    def __init__(self, out: Path | None, budget: float) -> None:
        self.rows: list[dict[str, str]] = []
        self.details: list[str] = []
        self.header: list[str] = []
        self.out = out
        self.t0 = time.perf_counter()
        self.budget = budget
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def deadline(self, section: str) -> float:
        """perf_counter time by which ``section`` must be done."""
        return self.t0 + self.budget * SECTION_END[section]

    def add(self, section: str, what: str, setting: str, value: float | str, unit: str = "",
            note: str = "") -> None:
        """Record one row (value: a number, or a word such as 'skipped')."""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        row = dict(zip(FIELDS, (section, what, setting, text, unit, note)))
        self.rows.append(row)
        print(f"[{time.perf_counter() - self.t0:6.1f} s] " + " | ".join(row.values()),
              file=sys.stderr, flush=True)
        self.write()

    def detail(self, title: str, lines: list[str]) -> None:
        """Keep a section's own table for the Markdown file."""
        self.details += ["", f"### {title}", "", *lines]
        self.write()

    def table(self) -> list[str]:
        """The one Markdown table of every row so far."""
        out = ["| section | what | setting | value | unit | note |", "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(r[k].replace("|", "/") for k in FIELDS) + " |"
                for r in self.rows]
        return out

    def write(self) -> None:
        """Rewrite gpu_suite.md and gpu_suite.csv (each via a temporary name)."""
        if self.out is None:
            return
        md = "\n".join([*self.header, "", *self.table(), *self.details, ""])
        tmp = self.out / "gpu_suite.md.tmp"
        tmp.write_text(md, encoding="utf-8")
        tmp.replace(self.out / "gpu_suite.md")
        tmp = self.out / "gpu_suite.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.out / "gpu_suite.csv")


def first_line(exc: BaseException) -> str:
    """'Type: first line of the message' (short enough for a table cell)."""
    msg = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {msg}"[:160]


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], iters: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first call, median seconds per call of ``iters`` more)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    fn()  # second warm-up (cudnn autotune, allocator)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return first, times[len(times) // 2]


def autocast_for(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when ``bf16``), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    return contextlib.nullcontext()


class ModelBench:
    """HoVer-Net forward / train-step measurements, one model per memory layout."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.cfg = ModelConfig(width=args.width, blocks=args.blocks)
        fwd, train = bench_model.count_flops(self.cfg, 1, args.size)
        self.flops = {"forward": fwd, "train step": train}
        self.models: dict[bool, torch.nn.Module] = {}
        self.opts: dict[bool, torch.optim.Optimizer] = {}
        self.compiled: dict[tuple[bool, str], Any] = {}
        self.broken: dict[tuple[bool, str], str] = {}

    def model(self, cl: bool) -> torch.nn.Module:
        """The network in NCHW (``cl`` False) or channels_last layout."""
        if cl not in self.models:
            torch.manual_seed(0)
            m = build_model(self.cfg, load_pretrained=False).to(self.device)
            if cl:
                m = m.to(memory_format=torch.channels_last)
            self.models[cl] = m
            self.opts[cl] = torch.optim.Adam(m.parameters(), lr=1e-5)
        return self.models[cl]

    def fn(self, cl: bool, compiled: bool, pass_: str) -> Callable[..., Any]:
        """The eager model, or its compiled version (one per layout and pass)."""
        m = self.model(cl)
        if not compiled:
            return m
        key = (cl, pass_)
        if key not in self.compiled:
            self.compiled[key] = torch.compile(m, backend=self.args.compile_backend)
        return self.compiled[key]

    def inputs(self, batch: int, cl: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random image batch (0..255) and NP/HV targets on the device."""
        s = self.args.size
        g = torch.Generator().manual_seed(batch)
        x = (torch.rand(batch, 3, s, s, generator=g) * 255).to(self.device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        np_t = (torch.rand(batch, s, s, generator=g) > 0.7).long().to(self.device)
        hv_t = (torch.rand(batch, 2, s, s, generator=g) * 2 - 1).to(self.device)
        return x, np_t, hv_t

    def measure(self, pass_: str, batch: int, cl: bool, compiled: bool, bf16: bool = True
                ) -> tuple[float, float, float]:
        """(first-call s, s per iteration, peak memory MiB or 0 on CPU)."""
        fn = self.fn(cl, compiled, pass_)
        model = self.model(cl)
        x, np_t, hv_t = self.inputs(batch, cl)
        if compiled:
            torch._dynamo.mark_dynamic(x, 0)  # one graph for every batch size
        autocast = autocast_for(self.device, bf16)
        opt = self.opts[cl]

        def forward() -> None:
            with torch.inference_mode(), autocast:
                fn(x)

        def train() -> None:
            with autocast:
                out = fn(x)
            loss, _ = hovernet_loss({k: v.float() for k, v in out.items()}, np_t, hv_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train(pass_ == "train step")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        first, per_it = timed(forward if pass_ == "forward" else train, self.args.iters,
                              self.device)
        mem = (torch.cuda.max_memory_allocated(self.device) / 2**20
               if self.device.type == "cuda" else 0.0)
        return first, per_it, mem


def model_plan(args: argparse.Namespace, device: torch.device
               ) -> list[tuple[str, int, bool, bool, bool]]:
    """(pass, batch, compiled, channels_last, fp32) in the order they are measured."""
    plan = [(p, b, c, cl, False) for p in ("forward", "train step") for c, cl in args.variants
            for b in args.batches]
    if device.type == "cuda":  # one fp32 reference row next to the bf16 ones
        plan.insert(len(args.batches), ("forward", args.batches[-1], False, False, True))
    return plan


def model_section(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """Forward and train step: batch x (eager / compiled) x channels_last, bf16 (+ fp32)."""
    end = suite.deadline("model")
    mb = ModelBench(args, device)
    for pass_, batch, compiled, cl, fp32 in model_plan(args, device):
        precision = "bf16" if device.type == "cuda" and not fp32 else "fp32"
        setting = (f"batch {batch}, {'compiled' if compiled else 'eager'}, channels_last "
                   f"{'on' if cl else 'off'}, {precision}")
        if time.perf_counter() > end:
            suite.add("model", pass_, setting, "skipped", note="time box")
            continue
        key = (cl, pass_)
        if compiled and key in mb.broken:
            suite.add("model", pass_, setting, "skipped",
                      note=f"compile failed: {mb.broken[key]}")
            continue
        try:
            first, t, mem = mb.measure(pass_, batch, cl, compiled, bf16=not fp32)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            suite.add("model", pass_, setting, "out of memory")
            continue
        except Exception as exc:  # noqa: BLE001 - a compile error is reported, not fatal
            if not compiled:
                raise
            mb.broken[key] = first_line(exc)
            print(traceback.format_exc(limit=3), file=sys.stderr)
            suite.add("model", pass_, setting, "compile failed",
                      note=mb.broken[key] + "; eager rows stand")
            continue
        tflops = mb.flops[pass_] * batch / t / 1e12
        note = f"{t * 1e3:.1f} ms/it, {tflops:.2f} TFLOP/s"
        note += f", peak {mem / 1024:.1f} GiB" if mem else ""
        note += f", first call {first:.1f} s (compile)" if compiled else ""
        if pass_ == "forward":
            suite.add("model", pass_, setting, batch / t, "patches/s", note)
        else:
            suite.add("model", pass_, setting, 1 / t, "it/s", note)


def inference_section(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """The tiled prediction of the engine (predict_maps) on one large image: patches/s."""
    import numpy as np

    from ircr.data.synthetic import make_tile
    from ircr.inference import compiled as compiled_mod
    from ircr.inference.predict import _tile_starts, predict_maps

    compiled_mod.DEFAULT_BACKEND = args.compile_backend
    side = args.infer_side
    reps = -(-side // 512)
    image = np.tile(make_tile(np.random.default_rng(0), 512)[0], (reps, reps, 1))[:side, :side]
    n_windows = len(_tile_starts(side + 64, 256, 192)) ** 2  # window 256, overlap 64
    plan = [(args.infer_batch, False, False), (args.infer_batch, True, False), (8, True, False)]
    plan += [] if args.quick else [(args.infer_batch, True, True)]  # quick: compiled in model
    first_maps: list[np.ndarray] = []  # prob of the first row: the others are compared to it
    for batch, cl, comp in plan:
        setting = (f"{side}² image, window 256 / overlap 64, batch {batch}, channels_last "
                   f"{'on' if cl else 'off'}, {'compiled' if comp else 'eager'}")
        if time.perf_counter() > suite.deadline("inference"):
            suite.add("inference", "predict_maps", setting, "skipped", note="time box")
            continue
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=args.width, blocks=args.blocks)).to(device)

        last: list[np.ndarray] = []

        def run() -> None:
            prob, _ = predict_maps(model, image, batch_size=batch,  # noqa: B023
                                   device=device, amp=device.type == "cuda",
                                   channels_last=cl, compile=comp)  # noqa: B023
            last[:] = [prob]  # noqa: B023

        first, t = timed(run, max(1, args.iters // 5), device)
        runner = compiled_mod.compiled(model) if comp else None
        note = f"{t:.2f} s per image, {n_windows} windows"
        note += f", first call {first:.1f} s" if comp else ""
        if runner is not None and runner.failed:
            note += f", compile failed (eager): {runner.failed}"
        if first_maps:
            diff = float(np.abs(last[0] - first_maps[0]).max())
            note += f", max abs Δprob vs first row {diff:.2g}"
        else:
            first_maps.append(last[0])
        suite.add("inference", "predict_maps (tiled, blended)", setting, n_windows / t,
                  "windows/s", note)


def train_memory(args: argparse.Namespace, device: torch.device, ckpt: bool
                 ) -> tuple[float, float, str]:
    """(MiB per patch, step seconds, what was measured) of one train step at memory_batch."""
    batch = args.memory_batch
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=args.width, blocks=args.blocks,
                                    activation_checkpointing=ckpt)).to(device).train()
    x, np_t, hv_t = ModelBench(args, device).inputs(batch, False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def step() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(device):
            out = model(x)
        loss, _ = hovernet_loss({k: v.float() for k, v in out.items()}, np_t, hv_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # optimiser state allocated
    sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = 0
    t0 = time.perf_counter()
    step()
    sync(device)
    secs = time.perf_counter() - t0
    if device.type == "cuda":
        per = (torch.cuda.max_memory_allocated(device) - base) / batch / 2**20
        return per, secs, "peak above weights + Adam state"
    return saved / batch / 2**20, secs, "activations saved for backward"


def memory_section(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """Training memory per patch with and without activation checkpointing."""
    for ckpt in (False, True):
        setting = (f"batch {args.memory_batch}, activation checkpointing "
                   f"{'on' if ckpt else 'off'}")
        if time.perf_counter() > suite.deadline("memory"):
            suite.add("memory", "train step memory per patch", setting, "skipped",
                      note="time box")
            continue
        per, secs, what = train_memory(args, device, ckpt)
        suite.add("memory", "train step memory per patch", setting, per, "MiB/patch",
                  f"{what}; step {secs * 1e3:.0f} ms")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def methods_section(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """bench_ssl: supervised / MT / IRCR iteration rates and IRCR's part shares."""
    if time.perf_counter() > suite.deadline("methods"):
        suite.add("methods", "bench_ssl", "", "skipped", note="time box")
        return
    ssl_args = bench_ssl.parser().parse_args([
        "--device", device.type, "--size", str(args.size), "--batch", str(args.ssl_batch),
        "--width", str(args.width), "--blocks", *map(str, args.blocks),
        "--iters", str(args.ssl_iters), "--threads", str(torch.get_num_threads())])
    res = bench_ssl.run(ssl_args, deadline=suite.deadline("methods"))
    mt = res["rows"]["mean_teacher"][0]
    setting = f"batch {args.ssl_batch}+{args.ssl_batch}, {res['iters']} iterations"
    for k, (t, _) in res["rows"].items():
        target = " (target <= 1.25)" if k.startswith("ircr") else ""
        suite.add("methods", f"{k} iteration", setting, 1 / t, "it/s",
                  f"{t * 1e3:.1f} ms, {t / mt:.2f} x MT{target}")
    total = sum(res["parts"].values())
    for k, v in res["parts"].items():
        suite.add("methods", "IRCR part (serial profile)", k, v / total * 100, "% of total",
                  f"{v * 1e3:.1f} ms")
    suite.detail("bench_ssl", bench_ssl.tables(res))


def slides_section(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """bench_segment on the synthetic slides, each in its own subprocess with a time limit."""
    rows: list[tuple[int, dict]] = []
    for i, size in enumerate(args.slide_sizes):
        left = suite.deadline("slides") - time.perf_counter()
        share = left * (0.3 if i < len(args.slide_sizes) - 1 else 1.0)  # room for the next
        setting = f"{size}² slide, {args.slide_model} model, batch {args.slide_batch}"
        if share < 15:
            suite.add("slides", "segment end to end", setting, "skipped", note="time box")
            continue
        seg_args = bench_segment.parser().parse_args([
            "--model", args.slide_model, "--sizes", str(size), "--device", device.type,
            "--batch-size", str(args.slide_batch), "--timeout", f"{share:.0f}",
            "--train-steps", str(args.slide_train_steps),
            "--threads", str(torch.get_num_threads())]
            + (["--amp"] if device.type == "cuda" else []))
        res = bench_segment.run(seg_args)[0]
        rows.append(res)
        r = res[1]
        if "error" in r:
            suite.add("slides", "segment end to end", setting, "failed", note=r["error"])
            continue
        s = r["summary"]
        mp = max(1e-9, s.get("tiles", {}).get("processed_megapixels", 0.0))
        suite.add("slides", "segment end to end", setting,
                  r["wall"] / max(1e-9, s["tissue_area_mm2"]), "s/mm² tissue",
                  f"{r['wall']:.1f} s, {r['wall'] / mp:.2f} s/MP, {s['n_nuclei']} nuclei, "
                  f"reader {r.get('reader', '?')}; target <= 1 s/mm²")
    if rows:
        suite.detail("bench_segment", bench_segment.table(rows))


SECTIONS: dict[str, Callable[[Suite, argparse.Namespace, torch.device], None]] = {
    "model": model_section, "inference": inference_section, "memory": memory_section,
    "methods": methods_section, "slides": slides_section}


def parser() -> argparse.ArgumentParser:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="tiny network, small inputs, one iteration: a smoke run")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default 470; --quick: 150)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $OUT)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads on --device cpu")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; --quick: aot_eager)")
    return ap


def settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the sizes of a full (paper-size) or a --quick run."""
    quick = args.quick
    args.width = 0.125 if quick else 1.0
    args.blocks = [1, 1, 1, 1] if quick else [3, 4, 6, 3]
    args.size = 64 if quick else 256
    args.batches = [2] if quick else [4, 16, 64]
    # (compiled, channels_last), in the order measured
    args.variants = [(False, False), (False, True), (True, True)] + ([] if quick
                                                                      else [(True, False)])
    args.iters = 1 if quick else 10
    args.memory_batch = 2 if quick else 16
    args.infer_side = 256 if quick else 4096
    args.infer_batch = 4 if quick else 64
    args.ssl_batch = 2 if quick else 4
    args.ssl_iters = 1 if quick else 20
    args.slide_sizes = [1024] if quick else [4096, 8192]
    args.slide_model = "tiny" if quick else "paper"
    args.slide_batch = 8 if quick else 64
    args.slide_train_steps = 2 if quick else 80
    if args.budget is None:
        args.budget = 150.0 if quick else 470.0
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if quick else "inductor"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and print the table; 2 when the device is missing."""
    args = settings(parser().parse_args(argv))
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_suite: error: --device cuda but CUDA is not available (use --device cpu)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # every HoVerNet instance shares forward's code object: room for all the compiled variants
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    suite = Suite(out, args.budget)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    suite.header = [f"# gpu_suite{' --quick' if args.quick else ''}", "",
                    f"{name}; torch {torch.__version__}, Python {platform.python_version()}; "
                    f"HoVer-Net width {args.width}, blocks {args.blocks}, {args.size} px; "
                    f"compile backend {args.compile_backend}; budget {args.budget:.0f} s"]
    print("\n".join(suite.header), file=sys.stderr)
    for key in args.sections:
        try:
            SECTIONS[key](suite, args, device)
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            print(traceback.format_exc(), file=sys.stderr)
            suite.add(key, "section failed", "", "failed", note=first_line(exc))
    suite.header.append(f"total wall time {time.perf_counter() - suite.t0:.0f} s")
    suite.write()
    print("\n".join([*suite.header, "", *suite.table()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
