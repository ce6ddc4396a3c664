"""Seconds per training iteration of supervised, Mean Teacher and IRCR on one fixed batch.

Every method runs the same iteration the trainer runs (method.train_step -> backward -> Adam
step -> after_optimizer_step) on the same labelled + unlabelled batch, built from synthetic
H&E-like tiles (so WBIS finds realistic nuclei) with exact HoVer-Net targets. For IRCR the
time spent in WBIS (teacher and student), matching + pair/band maps and the prior is measured
separately, as is the part of it the iteration actually waited for (the teacher side overlaps
the student forward).

    .venv/bin/python benchmarks/bench_ssl.py [--size 256] [--batch 4] [--width 0.25] [--iters 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ircr.data.synthetic import make_tile
from ircr.data.targets import hover_targets
from ircr.losses import LossConfig, hovernet_loss
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams
from ircr.train.methods import get_method

TIMES: dict[str, float] = defaultdict(float)


def timed(name: str, fn: Any) -> Any:
    """Wrap ``fn`` so its wall time accumulates in ``TIMES[name]`` (thread-safe enough)."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[name] += time.perf_counter() - t0

    return wrapper


Batch = dict[str, torch.Tensor]


def make_batch(n: int, size: int, seed: int = 0) -> tuple[Batch, Batch]:
    """A labelled and an unlabelled batch of n synthetic tiles each (tensors on CPU)."""
    rng = np.random.default_rng(seed)
    imgs, nps, hvs, unl = [], [], [], []
    for _ in range(n):
        img, inst = make_tile(rng, size)
        np_t, hv_t = hover_targets(inst)
        imgs.append(img)
        nps.append(np_t)
        hvs.append(hv_t)
        unl.append(make_tile(rng, size)[0])
    to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    ones = torch.ones(n, size, size, dtype=torch.bool)
    lab = {"image": to_t(imgs), "np": torch.from_numpy(np.stack(nps)).long(),
           "hv": torch.from_numpy(np.stack(hvs)), "valid": ones, "index": torch.arange(n)}
    weak = to_t(unl)
    g = torch.Generator().manual_seed(seed)
    strong = (weak * 0.9 + 12 + torch.randn(weak.shape, generator=g) * 8).clamp(0, 255)
    src = torch.arange(size * size).view(1, size, size).repeat(n, 1, 1)
    u = {"weak": weak, "strong": strong, "index": torch.arange(n), "src_index": src,
         "valid": torch.ones(n, size, size, dtype=torch.bool)}
    return lab, u


def stand_in_trainer(model: torch.nn.Module, size: int) -> SimpleNamespace:
    """The trainer attributes a Method uses, with the real HoVer-Net loss."""
    loss_cfg = LossConfig()

    def supervised_loss(out: dict[str, torch.Tensor], lab: dict[str, torch.Tensor]) -> Any:
        loss, parts = hovernet_loss({k: v.float() for k, v in out.items()}, lab["np"], lab["hv"],
                                    loss_cfg, valid_mask=lab["valid"])
        return loss, parts

    return SimpleNamespace(model=model, device=torch.device("cpu"), supervised_loss=supervised_loss,
                           wbis_params=WBISParams(), run_dir=None, epoch=0, iteration=0,
                           cfg=SimpleNamespace(data=SimpleNamespace(patch_size=size)))


class Runner:
    """One method with its own model and optimiser, stepped one iteration at a time."""

    def __init__(self, name: str, args: argparse.Namespace, **opts: Any) -> None:
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=args.width, blocks=args.blocks))
        trainer: Any = stand_in_trainer(model, args.size)
        cls = get_method(name)
        self.m = cls(cls.options_type(**opts), trainer)
        self.m.setup()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.secs: list[float] = []
        self.parts: dict[str, list[float]] = defaultdict(list)
        if name == "ircr":
            m: Any = self.m
            m._wbis = timed("wbis", m._wbis)
            m._rejected = timed("prior", m._rejected)
            m._match = timed("matching", m._match)

    def step(self, batch: Any, record: bool) -> None:
        """One full iteration (loss, backward, Adam step, EMA)."""
        lab, unl = batch
        TIMES.clear()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.m.train_step(lab, unl if self.m.uses_unlabelled else None)
        loss.backward()
        self.opt.step()
        self.m.after_optimizer_step()
        if record:
            self.secs.append(time.perf_counter() - t0)
            for k in ("wbis", "matching", "prior"):
                self.parts[k].append(TIMES.get(k, 0.0))


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--blocks", type=int, nargs=4, default=[3, 4, 6, 3])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wbis-workers", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.size)
    runners = {"supervised": Runner("supervised", args),
               "mean_teacher": Runner("mean_teacher", args),
               "ircr": Runner("ircr", args, wbis_workers=args.wbis_workers)}
    for it in range(args.iters + 1):  # interleaved, so load changes hit every method alike
        for r in runners.values():
            r.step(batch, record=it > 0)
    rows = {k: {"s_per_it": float(np.median(r.secs)), "s_std": float(np.std(r.secs)),
                **{p: float(np.median(v)) for p, v in r.parts.items()}}
            for k, r in runners.items()}
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch threads {args.threads}; "
          f"patch {args.size}, batch {args.batch}+{args.batch}, width {args.width}, "
          f"blocks {args.blocks}, {args.iters} timed iterations")
    print("| method | s / iteration (median) | x MT |")
    print("|---|---|---|")
    mt = rows["mean_teacher"]["s_per_it"]
    for k, row in rows.items():
        print(f"| {k} | {row['s_per_it']:.3f} ± {row['s_std']:.3f} | {row['s_per_it'] / mt:.2f} |")
    # an untrained network finds few nuclei, so also time the mask pipeline on realistic maps:
    # NP / HV targets of the labelled tiles stand in for a trained network's output.
    m: Any = runners["ircr"].m
    lab, _ = batch
    prob = lab["np"].float().numpy()
    hv = lab["hv"].numpy()
    imgs = lab["image"].permute(0, 2, 3, 1).numpy().astype(np.uint8)
    real: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.iters):
        TIMES.clear()
        t_side = m._teacher_side(prob, hv, imgs)
        m._match(t_side.inst, m._wbis(prob, hv), [True] * len(t_side.inst))
        for k in ("wbis", "matching", "prior"):
            real[k].append(TIMES.get(k, 0.0))
    n_inst = int(np.mean([t.max() for t in t_side.inst]))
    ir = rows["ircr"]
    total = ir["s_per_it"]
    parts = {k: ir.get(k, 0.0) for k in ("wbis", "matching", "prior")}
    print("\nIRCR iteration breakdown (median seconds of work per iteration; the teacher's WBIS "
          "and the prior run in a background thread overlapped with the student forward):")
    print("| part | s | share of iteration |")
    print("|---|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {v:.3f} | {v / total:.0%} |")
    s = sum(parts.values())
    print(f"| WBIS + matching + prior | {s:.3f} | {s / total:.0%} |")
    print(f"\nSame pipeline on realistic maps (~{n_inst} nuclei per {args.size}px patch, "
          "teacher + student of the batch), serial work vs the MT iteration:")
    rs = {k: float(np.median(v)) for k, v in real.items()}
    for k, v in rs.items():
        print(f"| {k} | {v:.3f} | {v / mt:.0%} of an MT iteration |")
    print(f"| total | {sum(rs.values()):.3f} | {sum(rs.values()) / mt:.0%} of an MT iteration |")


if __name__ == "__main__":
    main()
