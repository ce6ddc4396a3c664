"""``ircr pretrain -o OUT SOURCES... [--config CFG] [--set key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ircr.cli.options import add_device, add_progress


def register(subparsers: Any) -> None:
    """Add the ``pretrain`` subcommand."""
    p = subparsers.add_parser(
        "pretrain", help="self-supervised encoder pretraining on unlabelled H&E (BYOL + dense)",
        description="Pretrain the HoVer-Net encoder (any model: width/depth) or the BASS "
                    "backbone body on tiles sampled from the tissue of images, folders, "
                    "prepared datasets (labels ignored) and whole slides. OUT gets encoder.pt, "
                    "card.json, metrics.csv and checkpoints/; use OUT as model.pretrained "
                    "(HoVer-Net) or method.model.backbone_weights (BASS).")
    p.add_argument("sources", metavar="SOURCE", nargs="+", type=Path,
                   help="image file, whole-slide image, folder, or prepared dataset folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None,
                   help="pretrain YAML (configs/pretrain/...; default: built-in defaults, or "
                        "OUT/config.yaml with --resume)")
    p.add_argument("--like", type=Path, default=None, metavar="EXPERIMENT",
                   help="take the architecture from an experiment config (ircr train CONFIG): "
                        "model.encoder/width/blocks, or for method bass the backbone, so the "
                        "weights fit it (--set still wins)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.width=0.25 (repeatable)")
    p.add_argument("--mpp", type=float, default=None,
                   help="µm/px of every source (wins over the files' own, as in ircr segment)")
    p.add_argument("--exclude-split", dest="exclude_splits", action="append", default=[],
                   metavar="SPLIT", help="leave the val/test images of this split of prepared "
                                         "datasets out (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT from checkpoints/last.pt (written every "
                        "train.checkpoint_minutes and on Ctrl-C or SIGTERM)")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=handler)


def _resume_hint(args: argparse.Namespace) -> str:
    parts = ["ircr", "pretrain", "-o", str(args.out), *map(str, args.sources)]
    if args.mpp is not None:
        parts += ["--mpp", f"{args.mpp:g}"]
    return shlex.join(parts + ["--resume"])


def like_overrides(path: Path) -> list[str]:
    """``key=value`` overrides giving the architecture of the experiment config ``path``."""
    from ircr.train.config import resolve_includes

    data = resolve_includes(path)
    method = data.get("method") or {}
    if isinstance(method, dict) and method.get("name") == "bass":
        model = method.get("model") or {}
        out = ["target=maskrcnn", f"backbone={model.get('backbone', 'resnet50')}"]
        if "tiny_channels" in model:
            out.append(f"tiny_channels={list(model['tiny_channels'])!r}")
        return out
    if isinstance(method, dict) and method.get("name") == "cdcl":
        dense = method.get("model") or {}
        return ["target=cdcl"] + [f"densenet.{k}={dense[k]!r}" for k in
                                  ("growth_rate", "num_init_features", "bn_size", "block_config")
                                  if k in dense]
    model = data.get("model") or {}
    return ["target=hovernet"] + [f"model.{k}={model[k]!r}" for k in ("encoder", "width", "blocks")
                                  if k in model]


def handler(args: argparse.Namespace) -> int:
    """Build the config, pretrain, print the output folder."""
    from ircr.engine.pretrain import run_pretrain
    from ircr.train.pretrain_config import load_pretrain_config

    overrides = like_overrides(args.like) if args.like is not None else []
    overrides += list(args.overrides)
    if args.exclude_splits:
        overrides.append(f"data.exclude_splits={list(args.exclude_splits)!r}")
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    config = args.config
    if config is None and args.resume and (args.out / "config.yaml").is_file():
        config = args.out / "config.yaml"
    cfg = load_pretrain_config(config, overrides)
    out = run_pretrain(cfg, args.sources, args.out, mpp=args.mpp, resume=bool(args.resume),
                       resume_hint=_resume_hint(args))
    print(f"encoder weights: {out / 'encoder.pt'} (card: {out / 'card.json'})")
    return 0
