"""``ircr train CONFIG [--set key=value ...] [--resume] [--out RUN_DIR]``.

Several processes: ``torchrun --nproc-per-node N -m ircr train CONFIG --out RUN``
(:mod:`ircr.train.distributed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ircr.cli.options import add_device, add_progress


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a model from an experiment config (methods: supervised, "
                      "mean_teacher, self_training, ircr, bass, pgfanet, cdcl)",
        description="Train one experiment (method in the config: supervised, mean_teacher, "
                    "self_training, ircr, bass, pgfanet, cdcl). The run folder gets config.yaml, "
                    "split.yaml, metrics.csv, checkpoints/last.pt and the final model/ folder "
                    "(bass: its three stages' folders, docs/bass.md). A rerun into a started "
                    "run folder needs --resume, for every method.")
    p.add_argument("config", metavar="CONFIG", type=Path, help="experiment YAML (configs/...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=10 or --set "
                        "train.checkpoint_minutes=10 (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/<config file stem>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from checkpoints/last.pt (written every "
                        "train.checkpoint_every iterations / train.checkpoint_minutes, at "
                        "epoch ends, and on Ctrl-C or SIGTERM; bass: from its stages' "
                        "outputs and checkpoints)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N processes on this machine (N GPUs, else N CPU processes): "
                        "a shortcut for torchrun --standalone --nproc-per-node N -m ircr train "
                        "...; global batch = N x data.batch_size (docs/method.md)")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Load and validate the config, then train; prints the model folder."""
    from ircr.train import distributed
    from ircr.train.config import load_experiment
    from ircr.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    cfg = load_experiment(args.config, overrides)
    out = args.out or Path("runs") / Path(args.config).stem
    if args.nproc != 1:  # the config is valid: hand over to torchrun
        return _launch(distributed.torchrun_command(args.nproc, _argv(args, out)))
    try:  # under torchrun every process runs this; rank 0 writes and prints
        trainer = Trainer(cfg, out, resume=bool(args.resume), config_source=str(args.config))
        model_dir = trainer.run()
    finally:
        distributed.shutdown()
    if not trainer.dist.main:
        return 0
    if trainer.already_finished:
        print(f"{out}: run already finished at iteration {trainer.iteration}; nothing to do")
    print(f"model folder: {model_dir}")
    return 0


def _argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The ``ircr train`` arguments of this call without ``--nproc`` (for each process)."""
    argv = ["train", str(args.config), "--out", str(out), "--device", args.device]
    for item in args.overrides:
        argv += ["--set", item]
    if args.resume:
        argv.append("--resume")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def _launch(cmd: list[str]) -> int:
    """Run torchrun and return its exit status; Ctrl-C is left to the training processes
    (they checkpoint and stop), this parent only waits."""
    import subprocess

    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the same Ctrl-C reached torchrun and its processes
            continue
