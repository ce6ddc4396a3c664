"""``ircr adapt MODEL TARGET... -o OUT``: fit a trained model to new slides without labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ircr.cli.options import add_device, add_progress


def register(subparsers: Any) -> None:
    """Add the ``adapt`` subcommand."""
    p = subparsers.add_parser(
        "adapt", help="adapt a trained model to your slides without labels (IRCR / Mean "
                      "Teacher from the model's weights)",
        description="Student and EMA teacher start from MODEL; unlabelled batches come from "
                    "tissue tiles of the TARGETs sampled at the model's pixel size. OUT/model "
                    "is an ordinary model folder (ircr segment OUT/model ...).")
    p.add_argument("model", metavar="MODEL", help="model folder or packaged name (default)")
    p.add_argument("targets", metavar="TARGET", nargs="+",
                   help="images, folders or whole-slide files of the new lab")
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder (model in OUT/model)")
    p.add_argument("--method", default="ircr", choices=("ircr", "mean_teacher"),
                   help="consistency method (default ircr)")
    p.add_argument("--labelled", default=None, metavar="PREPARED",
                   help="prepared dataset kept under a supervised term ('none' = off; default: "
                        "the model's own training data when its folder names one that exists)")
    p.add_argument("--labelled-split", default=None, metavar="SPLIT",
                   help="split of --labelled (default: the model's, or the only one)")
    p.add_argument("--prior", default=None, metavar="NPZ",
                   help="PIAC prior (default: the model folder's prior.npz, else the packaged one)")
    p.add_argument("--mpp", type=float, default=None,
                   help="µm/px of every target (wins over the files', as for ircr segment); "
                        "without it, targets whose files state none are skipped")
    p.add_argument("--tiles", type=int, default=64, help="target tiles to sample (64)")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in px at the model's "
                                                              "µm/px (256)")
    p.add_argument("--iterations", type=int, default=300, help="training iterations (300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiles and the training (0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config value (as in ircr train; repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last checkpoint (same arguments)")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Build the request and run the adaptation; prints the model folder."""
    from ircr.engine.adapt import AdaptRequest, run_adapt
    from ircr.io.wsi import check_mpp

    req = AdaptRequest(
        model=str(args.model), targets=[str(t) for t in args.targets], out=str(args.out),
        method=args.method, labelled=args.labelled, labelled_split=args.labelled_split,
        prior=args.prior, mpp=None if args.mpp is None else check_mpp(args.mpp),
        tiles=args.tiles, tile_size=args.tile_size, iterations=args.iterations,
        seed=args.seed, device=args.device, threads=args.threads,
        progress=not args.no_progress, overrides=list(args.overrides))
    folder = run_adapt(req, resume=bool(args.resume))
    print(f"model folder: {folder}")
    return 0
