"""Option definitions shared by the subcommands (same names, help and defaults everywhere).

* ``--device``: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
* ``--no-progress``: no progress bars; ``--quiet`` is a deprecated alias (warns once).
* ``--window``/``--overlap``/``--batch-size``: sliding-window inference; unset = the model
  folder's stored ``inference`` setting (so evaluate and segment agree); ``--tta``:
  test-time augmentation (off by default).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
# = ircr.inference.tta.TTA_MODES (not imported: parsing the command line loads no torch)
TTA_CHOICES = ("off", "mirror", "flips", "d4")
NO_NETWORK = ("accepted like in every command; this one runs no network, so it only checks "
              "the value")


def add_device(p: argparse.ArgumentParser, default: str = "auto", note: str = "") -> None:
    """``--device`` (validated by :func:`ircr.inference.device.select_device`).

    ``default``: the command's default (``auto`` everywhere but the CPU demo; ``""`` = each
    run's ``train.device``); ``note``: a sentence appended to the help.
    """
    shown = default or "each run's train.device"
    help_text = DEVICE_HELP if default == "auto" else DEVICE_HELP.replace(
        "auto (default: CUDA, then MPS, then CPU)", f"auto (CUDA, then MPS, then CPU; default "
        f"here: {shown})")
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=help_text + (f"; {note}" if note else ""))


def check_device(value: str) -> None:
    """Validate ``--device`` where the command runs no network (one-line error if bad;
    the default ``auto`` is always valid and does not import torch)."""
    if value.strip().lower() == "auto":
        return
    from ircr.inference.device import select_device

    select_device(value)


class _DeprecatedQuiet(argparse.Action):
    """``--quiet``: same as ``--no-progress``, with a deprecation warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print("ircr: warning: --quiet is deprecated; use --no-progress", file=sys.stderr)
        setattr(namespace, self.dest, True)


def add_progress(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--no-progress`` (dest ``no_progress``) and its deprecated alias ``--quiet``."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (for logs and batch jobs)" + (f"; {note}" if note
                                                                        else ""))
    p.add_argument("--quiet", action=_DeprecatedQuiet, nargs=0, dest="no_progress",
                   help="deprecated alias of --no-progress")


def add_inference(p: argparse.ArgumentParser) -> None:
    """``--window``, ``--overlap``, ``--batch-size`` (None = the model folder's setting),
    ``--tta``."""
    p.add_argument("--window", type=int, default=None, metavar="PX",
                   help="network window in px (default: the model folder's inference setting)")
    p.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="overlap of adjacent windows in px (default: the model folder's)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="windows per forward pass (default: the model folder's)")
    add_tta(p)


def add_tta(p: argparse.ArgumentParser) -> None:
    """``--tta off|mirror|flips|d4`` (test-time augmentation, :mod:`ircr.inference.tta`)."""
    p.add_argument("--tta", default="off", choices=TTA_CHOICES,
                   help="test-time augmentation of HoVer-Net maps: off (default), mirror (the "
                        "maps of the window and its left-right mirror averaged: 2x the network "
                        "time), flips (4 mirrors, 4x) or d4 (8 rotations and mirrors, 8x); "
                        "fewer false positives on unfamiliar tissue (docs/models.md)")


def add_cluster(p: argparse.ArgumentParser, what: str) -> None:
    """``--cluster`` and ``--threads-per-worker`` (:mod:`ircr.executor.factory`)."""
    p.add_argument("--cluster", default=None, metavar="SPEC",
                   help=f"run {what} as Dask tasks: local:N (a local cluster of N worker "
                        "processes, one GPU each when there are GPUs), tcp://HOST:PORT (an "
                        "existing scheduler) or a scheduler file .json")
    p.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="torch threads per Dask worker (default: cores / N on local:N)")
