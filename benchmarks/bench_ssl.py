"""Seconds per training iteration of supervised, Mean Teacher and IRCR, and IRCR's part shares.

Every method runs the iteration the trainer runs (method.train_step under autocast -> backward
-> Adam step -> after_optimizer_step) on the same labelled + unlabelled batch, built from
synthetic H&E-like tiles with exact HoVer-Net targets; the three methods are interleaved
iteration by iteration so load changes hit them alike, and medians are reported. The
unsupervised warm-up/ramp-up is switched off (``warmup_iterations = rampup_iterations = 0``),
so every timed iteration runs the teacher and the full consistency terms.

IRCR's per-part share comes from a separate profile pass that runs the same parts one after
the other with a device synchronisation after each (teacher forward, student forward + L_sup,
WBIS teacher, prior, WBIS student, matching + pair maps, the PIAC/MIAC losses, backward,
optimiser step + EMA), on realistic maps (the NP/HV targets of the tiles stand in for a
trained network's output, which an untrained network does not give), so the shares show where
the time goes without overlap; the real iteration overlaps the mask work with the network.

    python benchmarks/bench_ssl.py [--device cpu|cuda|auto] [--size 256] [--batch 4]
                                   [--width 0.25] [--iters 5]
    python benchmarks/bench_ssl.py --device cuda --width 1 --iters 20     # paper size, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ircr.data.synthetic import make_tile
from ircr.data.targets import hover_targets
from ircr.losses import LossConfig, hovernet_loss
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams, wbis
from ircr.ssl import matching
from ircr.ssl.masks import MaskSettings, stack_pair_maps
from ircr.ssl.piac import piac_loss, rejected_ids
from ircr.train.methods import get_method
from ircr.train.methods.mean_teacher import feature_maps

Batch = dict[str, torch.Tensor]
# row -> (method, options): IRCR with its masks computed in line and through ssl/masks.py
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "supervised": ("supervised", {}), "mean_teacher": ("mean_teacher", {}),
    "ircr": ("ircr", {"mask_pipeline": "off"}),
    "ircr (mask pipeline)": ("ircr", {"mask_pipeline": "on"})}


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


def to_device(batch: tuple[Batch, Batch], device: torch.device) -> tuple[Batch, Batch]:
    """Both batch dicts on ``device``."""
    return tuple({k: v.to(device) for k, v in b.items()} for b in batch)  # type: ignore[return-value]


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so wall-clock times cover the queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stand_in_trainer(model: torch.nn.Module, size: int, device: torch.device) -> SimpleNamespace:
    """The trainer attributes a Method uses, with the real HoVer-Net loss and bf16 on CUDA."""
    loss_cfg = LossConfig()

    def supervised_loss(out: dict[str, torch.Tensor], lab: dict[str, torch.Tensor]) -> Any:
        return hovernet_loss({k: v.float() for k, v in out.items()}, lab["np"], lab["hv"],
                             loss_cfg, valid_mask=lab["valid"])

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    return SimpleNamespace(model=model, device=device, supervised_loss=supervised_loss,
                           autocast=autocast, wbis_params=WBISParams(), run_dir=None, epoch=0,
                           iteration=0, cfg=SimpleNamespace(data=SimpleNamespace(patch_size=size)))


class Runner:
    """One method with its own model and optimiser, stepped one iteration at a time."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device,
                 **opts: Any) -> None:
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=args.width, blocks=args.blocks)).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.trainer: Any = stand_in_trainer(model, args.size, device)
        cls = get_method(name)
        no_warmup = {k: 0 for k in ("warmup_iterations", "rampup_iterations")
                     if hasattr(cls.options_type, k)}
        self.m = cls(cls.options_type(**no_warmup, **opts), self.trainer)
        self.m.setup()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.device = device
        self.secs: list[float] = []

    def step(self, batch: tuple[Batch, Batch], record: bool) -> None:
        """One full iteration (loss, backward, Adam step, EMA), synchronised at the end."""
        lab, unl = batch
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self.trainer.autocast():
            loss, _ = self.m.train_step(lab, unl if self.m.uses_unlabelled else None)
        loss.backward()
        self.opt.step()
        self.m.after_optimizer_step()
        sync(self.device)
        if record:
            self.secs.append(time.perf_counter() - t0)


class PartClock:
    """Accumulates synchronised wall time per named part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = defaultdict(list)
        self._now: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self._now[name] = self._now.get(name, 0.0) + time.perf_counter() - t0

    def lap(self) -> None:
        for k, v in self._now.items():
            self.times[k].append(v)
        self._now = {}

    def medians(self) -> dict[str, float]:
        return {k: float(np.median(v)) for k, v in self.times.items()}


def profile_ircr(r: Runner, batch: tuple[Batch, Batch], iters: int) -> dict[str, float]:
    """Median seconds of each part of an IRCR iteration, run one after the other (no overlap).

    The teacher and student maps handed to WBIS are the labelled tiles' NP/HV targets
    (realistic nuclei); the losses use the network's real outputs.
    """
    m: Any = r.m
    lab, unl = batch
    cfg = m.options
    s = MaskSettings(r.trainer.wbis_params, m.prior, cfg.prior_tau, cfg.match_radius, cfg.miac)
    prob = lab["np"].float().cpu().numpy()
    hv = lab["hv"].cpu().numpy()
    images = lab["image"].permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    clock = PartClock(r.device)
    for _ in range(iters):
        r.opt.zero_grad(set_to_none=True)
        with r.trainer.autocast():
            with clock.part("teacher forward"):
                ft, bt = m.teacher_maps(m.teacher_forward(unl["weak"]))
            with clock.part("student forward + L_sup"):
                out_l, out_u = m.student_forward(lab, unl["strong"])
                sup, _ = r.trainer.supervised_loss(out_l, lab)
                fs, bs = feature_maps(out_u)
        with clock.part("device -> host maps"):
            bt[:, 0].cpu().numpy(), ft[:, 1:].cpu().numpy()
            bs[:, 0].detach().cpu().numpy(), fs[:, 1:].detach().cpu().numpy()
        with clock.part("WBIS teacher"):
            t_inst = [np.asarray(wbis(p, h, s.wbis), np.int32) for p, h in zip(prob, hv)]
        with clock.part("prior (features + score)"):
            rej = [rejected_ids(im, t, s.prior, s.tau)[0] for im, t in zip(images, t_inst)]
        with clock.part("WBIS student"):
            s_inst = [np.asarray(wbis(p, h, s.wbis), np.int32) for p, h in zip(prob, hv)]
        with clock.part("matching + pair/band maps"):
            pairs = [matching.match_instances(t, si, radius=s.match_radius)[0]
                     for t, si in zip(t_inst, s_inst)]
            maps = stack_pair_maps([matching.pair_index_maps(t, si, p)
                                    for t, si, p in zip(t_inst, s_inst, pairs)])
        with clock.part("PIAC + MIAC losses"):
            u = np.full((len(t_inst), *t_inst[0].shape), cfg.piac_weight, np.float32)
            for k, (t, rj) in enumerate(zip(t_inst, rej)):
                u[k][np.isin(t, rj)] = 0.0
            cons = piac_loss(fs, ft, torch.from_numpy(u).to(fs.device))
            assert maps is not None
            miac, _ = matching.miac_loss(fs, ft, bs, bt, maps.lt, maps.ls, maps.band_t,
                                         maps.band_s, maps.band_ts, n_pairs=maps.n_pairs)
            loss = sup + cfg.gamma1 * cons + cfg.gamma2 * miac
        with clock.part("backward"):
            loss.backward()
        with clock.part("Adam step + EMA"):
            r.opt.step()
            m.after_optimizer_step()
        clock.lap()
    return clock.medians()


def device_label(device: torch.device, threads: int) -> str:
    """One-line description of where the benchmark ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16 autocast, torch {torch.__version__}"
    return (f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {threads}, fp32, "
            f"torch {torch.__version__}")


def run(args: argparse.Namespace, deadline: float | None = None) -> dict[str, Any]:
    """Iteration medians per method and the IRCR part profile (stops early at ``deadline``)."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    batch = to_device(make_batch(args.batch, args.size), device)
    runners = {k: Runner(name, args, device, **opts) for k, (name, opts) in METHODS.items()}
    done = 0
    for it in range(args.iters + 1):  # interleaved, so load changes hit every method alike
        for r in runners.values():
            r.step(batch, record=it > 0)
        done = it
        if deadline is not None and it >= 1 and time.perf_counter() > deadline:
            break
    rows = {k: (float(np.median(r.secs)), float(np.std(r.secs))) for k, r in runners.items()}
    parts = profile_ircr(runners["ircr"], batch, max(1, min(args.iters, 3)))
    return {"device": device_label(device, torch.get_num_threads()), "rows": rows,
            "parts": parts, "iters": done, "args": vars(args)}


def tables(res: dict[str, Any]) -> list[str]:
    """Markdown lines: iteration medians (x MT) and IRCR's part shares."""
    a = res["args"]
    out = [f"bench_ssl: {res['device']}; patch {a['size']}, batch {a['batch']}+{a['batch']}, "
           f"width {a['width']}, blocks {a['blocks']}, {res['iters']} timed iterations", "",
           "| method | s / iteration (median ± std) | it/s | x MT |", "|---|---|---|---|"]
    mt = res["rows"]["mean_teacher"][0]
    for k, (t, sd) in res["rows"].items():
        out.append(f"| {k} | {t:.4f} ± {sd:.4f} | {1 / t:.2f} | {t / mt:.2f} |")
    parts = res["parts"]
    total = sum(parts.values())
    out += ["", "IRCR parts, one after the other with a sync after each (realistic maps):", "",
            "| part | s | share |", "|---|---|---|"]
    for k, v in parts.items():
        out.append(f"| {k} | {v:.4f} | {v / total:.0%} |")
    out.append(f"| total (serial) | {total:.4f} | 100% |")
    return out


def parser() -> argparse.ArgumentParser:
    """Command-line options (also used by benchmarks/gpu_suite.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--blocks", type=int, nargs=4, default=[3, 4, 6, 3])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print Markdown tables."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    print("\n".join(tables(run(args))))


if __name__ == "__main__":
    main()
