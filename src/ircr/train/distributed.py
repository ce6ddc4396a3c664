"""Data-parallel training under ``torchrun``: ranks, gradient/buffer sync, rank-0-only guard.

``torchrun --nproc-per-node N -m ircr train CONFIG --out RUN`` starts N copies of ``ircr
train``; each finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` in
its environment (:func:`context_from_env`) and joins one ``torch.distributed`` process group
(gloo on CPU, NCCL on CUDA, one GPU per rank: ``cuda:LOCAL_RANK``). Without those variables
(or with ``WORLD_SIZE=1``) nothing here does anything and training is the single-process path.

The rules (docs/method.md "Several processes"):

* every rank holds the whole model; after ``backward`` the gradients are averaged over ranks by
  one all-reduce of the flattened gradients (:func:`average_gradients`), so every rank takes
  the same optimiser step. (Not the ``DistributedDataParallel`` wrapper: the methods run the
  student several times per iteration and keep using the plain module, its state dict and its
  EMA teacher unchanged.)
* after every optimiser step the student's floating-point buffers (BatchNorm running mean and
  variance) are averaged over ranks (:func:`average_buffers`) *before* the method's EMA update,
  so student and teacher stay identical on every rank;
* rank 0 alone writes files and validates; the others wait at the next collective.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ircr.errors import IrcrError

T = TypeVar("T")

# rank 0 validates whole images while the others wait in a collective: allow for that
TIMEOUT = datetime.timedelta(hours=3)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place among the ranks of a torchrun job (world 1 = single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True with more than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0


SINGLE = DistContext()


def context_from_env(env: dict[str, str] | None = None) -> DistContext:
    """Read the torchrun variables; no ``WORLD_SIZE`` (or 1) = a single process.

    Raises:
        IrcrError: a variable is missing or not an integer (names it).
    """
    env = dict(os.environ) if env is None else env
    if int(env.get("WORLD_SIZE", "1") or "1") <= 1:
        return SINGLE
    missing = [k for k in ENV_KEYS if not env.get(k)]
    if missing:
        raise IrcrError(f"{missing[0]}: environment variable of torchrun missing (start "
                        "several processes with torchrun --nproc-per-node N -m ircr train)")
    try:
        return DistContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError:
        raise IrcrError("RANK/WORLD_SIZE/LOCAL_RANK: torchrun variables must be integers") \
            from None


def current() -> DistContext:
    """The context of the initialised process group, or :data:`SINGLE`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def initialise(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group once (gloo on CPU, NCCL on CUDA); return this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK``; other devices (MPS) are refused.
    """
    if not ctx.active:
        return device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise IrcrError(f"LOCAL_RANK: {ctx.local_rank} but only "
                            f"{torch.cuda.device_count()} CUDA device(s) (one GPU per process)")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise IrcrError(f"train.device: {device.type} is not supported under torchrun "
                        "(use cpu or cuda)")
    if not dist.is_initialized():
        kw: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kw)
    return device


def shutdown() -> None:
    """Leave the process group (end of ``ircr train``); no-op when none was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.active:
        dist.barrier()


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only, then let every rank pass a barrier; rank 0 gets the result."""
    out = fn() if ctx.main else None
    barrier(ctx)
    return out


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def average_gradients(ctx: DistContext, module: nn.Module) -> None:
    """Average the gradients of ``module`` over ranks in place (one flat all-reduce).

    Parameters without a gradient (frozen encoder) have none on every rank: the same graph
    runs everywhere.
    """
    if not ctx.active:
        return
    _mean_in_place(ctx, [p.grad for p in module.parameters() if p.grad is not None])


@torch.no_grad()
def average_buffers(ctx: DistContext, module: nn.Module) -> None:
    """Average the floating-point buffers (BN running mean/var) of ``module`` over ranks.

    Integer buffers (``num_batches_tracked``) already agree: every rank runs the same steps.
    """
    if not ctx.active:
        return
    _mean_in_place(ctx, [b for b in module.buffers() if torch.is_floating_point(b)])


def _mean_in_place(ctx: DistContext, tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks (one all-reduce of their flat concat)."""
    if not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= ctx.world
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)


@torch.no_grad()
def broadcast_module(ctx: DistContext, module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (start of a run)."""
    if not ctx.active:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def mean_scalar(ctx: DistContext, value: float, device: torch.device) -> float:
    """The mean of ``value`` over ranks (the logged loss; NaN anywhere gives NaN everywhere)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def any_flags(ctx: DistContext, flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR over ranks (a stop request or a due checkpoint on one rank = on all)."""
    if not ctx.active:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def mean_sums(ctx: DistContext, sums: dict[str, float]) -> dict[str, float]:
    """Per-key mean over ranks of running loss sums (keys missing on a rank count as 0)."""
    if not ctx.active:
        return sums
    every = gather_objects(ctx, sums)
    keys = sorted({k for d in every for k in d})
    return {k: sum(float(d.get(k, 0.0)) for d in every) / ctx.world for k in keys}


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``train.sync_bn``: BatchNorm layers computing their batch statistics over all ranks.

    Raises:
        IrcrError: not on CUDA (PyTorch's SyncBatchNorm needs GPU tensors).
    """
    if device.type != "cuda":
        raise IrcrError("train.sync_bn: SyncBatchNorm needs CUDA devices (torchrun on GPUs); "
                        "set train.sync_bn false on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def torchrun_command(nproc: int, ircr_args: list[str]) -> list[str]:
    """The ``torchrun --standalone --nproc-per-node N -m ircr ARGS`` command of ``--nproc``.

    ``--standalone``: one machine, rendezvous on a free local port.
    """
    if nproc < 1:
        raise IrcrError(f"--nproc: must be >= 1, got {nproc}")
    if context_from_env().active:
        raise IrcrError("--nproc: already running under torchrun (leave --nproc out)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", "ircr", *ircr_args]
