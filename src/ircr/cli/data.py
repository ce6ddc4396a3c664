"""``ircr data``: prepare a dataset, add splits, show a prepared dataset."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from ircr.cli.options import NO_NETWORK, add_device, add_progress, check_device
from ircr.errors import IrcrError

_DATASETS = "monuseg, cpm15, consep, pannuke, monusac, lizard, folder, synthetic"


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are read as YAML scalars (1, 0.5, true, text)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise IrcrError(f"--option: expected KEY=VALUE, got '{item}'")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, (str, int, float, bool)) or parsed is None:
            parsed = value
        out[key.strip()] = parsed
    return out


def register(subparsers: Any) -> None:
    """Add ``ircr data {prepare,split,show}``."""
    parser = subparsers.add_parser("data", help="prepare and inspect datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _no_action(parser))

    p = sub.add_parser(
        "prepare",
        help="convert a dataset into the canonical on-disk form (images, labels, patches, split)",
    )
    p.add_argument("name", metavar="NAME", help=f"dataset reader: {_DATASETS}")
    p.add_argument("root", metavar="ROOT", nargs="?", default=None,
                   help="dataset folder (not needed for 'synthetic')")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--patch", type=int, default=256, help="patch size in px (default 256)")
    p.add_argument("--stride", type=int, default=None, help="patch stride (default: --patch)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of labelled images held out for validation (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="fraction of labelled images held out for testing, by image "
                        "(default 0; BASS's 6:2:2: --val-fraction 0.2 --test-fraction 0.2)")
    p.add_argument("--ratio", default="1/8",
                   help="labelled fraction of train patches: 1/32, 1/16, 1/8, 1/4, 1, a/b, "
                        "or a number in (0, 1] (default 1/8)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reader option, repeatable (e.g. --option labels=xml)")
    p.add_argument("--limit", type=int, default=None, help="prepare only the first N images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    add_device(p, note=NO_NETWORK)
    add_progress(p, note="no per-image lines")
    p.set_defaults(func=_prepare)

    s = sub.add_parser("split", help="write more split files for a prepared dataset")
    s.add_argument("dataset", metavar="DATASET", type=Path, help="prepared dataset folder")
    s.add_argument("--ratio", nargs="+", default=["1/8"], help="one or more labelled ratios")
    s.add_argument("--seed", nargs="+", type=int, default=[0], help="one or more seeds")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--test-fraction", type=float, default=0.0,
                   help="fraction of labelled images held out for testing (default 0)")
    s.set_defaults(func=_split)

    sh = sub.add_parser("show", help="print counts and write an overlay PNG of some patches")
    sh.add_argument("dataset", metavar="DATASET", type=Path, help="prepared dataset folder")
    sh.add_argument("--split", default=None, help="split name or YAML path")
    sh.add_argument("-o", "--out", type=Path, default=None, help="overlay PNG to write")
    sh.add_argument("--n", type=int, default=4, help="number of patches in the overlay")
    sh.set_defaults(func=_show)


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from ircr.data.prepare import prepare_dataset

    if args.root is None and str(args.name).lower() != "synthetic":
        raise IrcrError(f"ircr data prepare: ROOT is required for dataset '{args.name}'")
    check_device(args.device)

    def progress(i: int, name: str) -> None:
        print(f"  [{i + 1}] {name}", file=sys.stderr)

    with warnings.catch_warnings(record=True) as caught:  # reader notes: one line each
        warnings.simplefilter("always")
        try:
            res = prepare_dataset(
                args.name, args.root, args.out, options=parse_options(args.option),
                limit=args.limit, patch=args.patch, stride=args.stride,
                val_fraction=args.val_fraction, ratio=args.ratio, seed=args.seed,
                overwrite=args.overwrite, progress=None if args.no_progress else progress,
                test_fraction=args.test_fraction,
            )
        finally:
            for w in caught:
                print(f"ircr: warning: {w.message}", file=sys.stderr)
    print(
        f"prepared {res.n_images} images ({res.n_labelled_images} labelled, "
        f"{res.n_nuclei} nuclei), {res.n_patches} patches -> {res.path}"
    )
    note = _marked_val_note(res.path)
    for sp in res.split_paths:
        print(f"split: {sp}{note}")
    return 0


def _marked_val_note(dataset: Path) -> str:
    """' (validation: the N images ...)' when the dataset fixes its validation images."""
    from ircr.data.prepare import marked_val
    from ircr.data.store import PreparedDataset

    n = len(marked_val(PreparedDataset(dataset).images))
    return (f" (validation: the {n} images the dataset marks split: val; --val-fraction "
            "is not used)") if n else ""


def _split(args: argparse.Namespace) -> int:
    from ircr.data.prepare import add_split
    from ircr.data.splits import check_fractions, parse_ratio

    ratios = [parse_ratio(r) for r in args.ratio]
    check_fractions(args.val_fraction, args.test_fraction)
    note = _marked_val_note(args.dataset)
    for r in ratios:
        for seed in args.seed:
            path = add_split(args.dataset, r, seed, args.val_fraction, args.test_fraction)
            print(f"split: {path}{note}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ircr.data.store import show_dataset

    if args.n < 1:
        raise IrcrError(f"--n: must be >= 1, got {args.n}")
    print(show_dataset(args.dataset, split=args.split, overlay=args.out, n=args.n))
    return 0
