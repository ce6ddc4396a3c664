"""Helpers of test_ddp.py: tiny configs and the 2-rank gloo worker (run by torch mp.spawn).

One spawn of 2 processes runs every DDP scenario in a row (each process imports torch and
ircr once) and saves what the tests compare under ``out``.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ircr.config import read_yaml
from ircr.train.config import experiment_from_dict
from ircr.train.methods import register_method
from ircr.train.methods.supervised import Supervised
from ircr.train.stop import TrainingStopped
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@register_method("test_frozen_bn")
class FrozenBN(Supervised):
    """Supervised with every BatchNorm in eval mode (running statistics frozen)."""

    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        self.trainer.model.eval()
        return super().train_step(labelled, unlabelled)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cfg_dict(ds: Path, method: str, batch: int, **train: Any) -> dict[str, Any]:
    """The tiny synthetic config: ``batch`` labelled (+ ``batch`` unlabelled) per process."""
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-4_seed0_val0", batch_size=batch,
                        batch_size_unlabelled=batch)
    data["train"].update({"progress": False, "epochs": 2, "iterations_per_epoch": 2, **train})
    data["method"] = {"name": method}
    if method == "test_frozen_bn":  # per-sample decomposable loss: equal pixel counts
        data["data"]["augment"] = {"geometric": False}
        data["loss"] = {"np_dice": 0.0, "hv_msge": 0.0}
    return data


def train(data: dict[str, Any], out: Path, **kw: Any) -> Trainer:
    """Build and run one trainer (every rank calls this)."""
    tr = Trainer(experiment_from_dict(data, "test"), out, **kw)
    tr.run()
    return tr


def _dump(tr: Trainer, path: Path) -> None:
    teacher = getattr(tr.method, "teacher", None)
    torch.save({"model": tr.model.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else {}}, path)


def _stop_on_rank1(tr: Trainer) -> None:
    """``on_step`` hook: SIGTERM to rank 1 alone after iteration 3 (a signal on one rank)."""
    if tr.dist.rank == 1 and tr.iteration == 3:
        os.kill(os.getpid(), signal.SIGTERM)


def worker(rank: int, world: int, port: int, ds: str, out: str) -> None:
    """Every scenario on one rank of a gloo job; results under ``out/<scenario>_rank<r>.pt``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    root, d = Path(out), Path(ds)
    for method in ("mean_teacher", "ircr"):
        tr = train(cfg_dict(d, method, 2, epochs=1), root / method)
        _dump(tr, root / f"{method}_rank{rank}.pt")
    tr = train(cfg_dict(d, "self_training", 2, epochs=1, iterations_per_epoch=1),
               root / "self_training")
    _dump(tr, root / f"self_training_rank{rank}.pt")
    tr = train(cfg_dict(d, "test_frozen_bn", 2, epochs=1), root / "frozen")
    _dump(tr, root / f"frozen_rank{rank}.pt")
    data = cfg_dict(d, "mean_teacher", 2, epochs=3)
    _dump(train(data, root / "full"), root / f"full_rank{rank}.pt")
    cut = Trainer(experiment_from_dict(data, "test"), root / "cut")
    cut.on_step = _stop_on_rank1
    try:
        cut.run()
        raise AssertionError("the SIGTERM on rank 1 did not stop training")
    except TrainingStopped:
        pass
    torch.save({"iteration": cut.iteration}, root / f"stopped_rank{rank}.pt")
    _dump(train(data, root / "cut", resume=True), root / f"resumed_rank{rank}.pt")
    torch.distributed.destroy_process_group()


# paper depth (encoder blocks 3-4-6-3, decoder units 8-4), narrow width: as the other
# paper-depth tests (test_checkpointing.py, test_methods_real.py)
PAPER_DEPTH = {"width": 0.125, "blocks": [3, 4, 6, 3], "decoder_units": [8, 4]}


def paper_depth_cfg(ds: Path, split: str) -> dict[str, Any]:
    """One IRCR iteration (consistency on from the first step) on 64 px real patches."""
    return {
        "data": {"dataset": str(ds), "split": split, "patch_size": 64, "context_margin": 16,
                 "batch_size": 1, "batch_size_unlabelled": 1, "workers": 0},
        "model": dict(PAPER_DEPTH),
        "train": {"epochs": 1, "iterations_per_epoch": 1, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "val_every": 0,
                  "lr_steps": [], "deterministic": False},  # (its import of torch._inductor: 10 s)
        "method": {"name": "ircr", "warmup_iterations": 0, "rampup_iterations": 1},
    }


def paper_depth_step(rank: int, world: int, port: int, ds: str, split: str, out: str) -> None:
    """One DDP step on one rank; saves start and end weights and the rank's own loss."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tr = Trainer(experiment_from_dict(paper_depth_cfg(Path(ds), split), "test"),
                 Path(out) / "run")
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    own: list[float] = []
    real = tr.method.train_step

    def step(labelled: Any, unlabelled: Any) -> Any:
        loss, parts = real(labelled, unlabelled)
        own.append(float(loss.detach()))
        return loss, parts

    tr.method.train_step = step  # type: ignore[method-assign]
    tr.run()
    teacher = getattr(tr.method, "teacher", None)
    torch.save({"start": start, "model": tr.model.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else {},
                "own_loss": own, "mean_loss": tr.last_row.get("train_loss"),
                "iteration": tr.iteration}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
