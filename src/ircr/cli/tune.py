"""``ircr tune-postproc MODEL DATASET``: grid-search the WBIS thresholds on validation images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ircr.cli.options import add_device, add_progress, add_tta


def register(subparsers: Any) -> None:
    """Add the ``tune-postproc`` subcommand."""
    p = subparsers.add_parser(
        "tune-postproc", help="tune a model's WBIS post-processing thresholds on labelled images",
        description="Run the network once per validation image, then WBIS over a small grid of "
                    "post-processing parameters; the best mean metric is written to the model "
                    "folder's postproc.yaml (grid in tuning.json), or to a copy with --out "
                    "(required for packaged models).")
    p.add_argument("model", metavar="MODEL",
                   help="model folder, or a packaged model name (default)")
    p.add_argument("dataset", metavar="DATASET", type=Path, help="prepared dataset folder")
    p.add_argument("--split", default="val",
                   help="images to tune on: val (default: the model's training split), all, "
                        "test, or a split name/file (its validation images)")
    p.add_argument("--metric", default="aji", help="aji (default), pq, f1, dice or aji_plus")
    p.add_argument("--grid", action="append", metavar="KEY=v1,v2,...",
                   help="values of one parameter (repeatable; threshold, marker_threshold, "
                        "ksize, min_size, marker_min_size, open_ksize, min_prob); others keep "
                        "the "
                        "default grid")
    p.add_argument("--out", type=Path, default=None,
                   help="write a tuned copy of the model folder here instead of in place")
    p.add_argument("--dry-run", action="store_true", help="report the best values, write nothing")
    add_tta(p)
    add_device(p)
    add_progress(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Predict, search the grid, print the result and write it."""
    from ircr.engine.packaged import is_packaged_folder, resolve_model
    from ircr.engine.tune import parse_grid, predict_for_tuning, tune_postproc, write_tuned
    from ircr.errors import IrcrError

    grid = parse_grid(args.grid)
    folder = resolve_model(args.model)
    if args.out is None and not args.dry_run and is_packaged_folder(folder):
        raise IrcrError(f"{args.model}: a packaged model is not changed in place; "
                        "pass --out DIR to write a tuned copy")
    if args.out is not None and args.out.exists():
        raise IrcrError(f"{args.out}: already exists; choose a new --out folder")
    loaded, maps, names = predict_for_tuning(folder, args.dataset, args.split, args.device,
                                             progress=not args.no_progress, tta=args.tta)
    start = loaded.postproc  # WBISParams, parsed by load_model_folder
    result = tune_postproc(maps, start, grid, args.metric, names)
    result.tta = args.tta
    print(f"tune-postproc: {result.summary()}")
    if args.dry_run:
        return 0
    target = write_tuned(folder, result, args.out, dataset=str(args.dataset))
    print(f"tune-postproc: wrote {target / 'postproc.yaml'} and {target / 'tuning.json'}")
    return 0
