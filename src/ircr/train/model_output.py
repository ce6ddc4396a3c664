"""The run's final model folder (``run/model``): the method's final network with its family,
post-processing, pixel size, inference window and a record of how it was trained."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ircr.config import to_dict
from ircr.inference.family import DEFAULT_FAMILY
from ircr.inference.model_folder import save_model_folder
from ircr.inference.scale import common_mpp


def write_model_folder(tr: Any) -> None:
    """Write ``tr.run_dir / "model"`` for a :class:`ircr.train.trainer.Trainer` ``tr`` (its
    method's :meth:`final_model`, the family of :meth:`model_family` or HoVer-Net)."""
    metrics = {k: v for k, v in tr.last_row.items() if k.startswith("val_")} or None
    model = copy.deepcopy(tr.method.final_model()).cpu().eval()
    own = tr.method.model_family()
    cfg = tr.cfg
    save_model_folder(tr.run_dir / "model", model, own.model if own else cfg.model,
                      to_dict(own.postproc if own else cfg.postproc),
                      family=own.family if own else DEFAULT_FAMILY,
                      mpp=common_mpp(m.get("mpp") for m in tr.dataset.images),
                      patch_size=cfg.data.patch_size, metrics=metrics,
                      inference={"window": cfg.eval.window, "overlap": cfg.eval.overlap,
                                 "batch_size": cfg.eval.batch_size},
                      extra={"method": cfg.method.name,
                             "train": {"dataset": str(cfg.data.dataset),
                                       "split": tr.split.name, "iterations": tr.iteration,
                                       "epochs": cfg.train.epochs,
                                       "autocast": autocast_name(tr.amp),
                                       "run_dir": str(tr.run_dir)}})


def autocast_name(dtype: torch.dtype | None) -> str:
    """What training ran in: ``off`` (float32) or the autocast dtype (``bfloat16``)."""
    return "off" if dtype is None else str(dtype).removeprefix("torch.")
