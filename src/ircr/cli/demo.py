"""``ircr demo``: a self-contained CPU demonstration (synthetic data, IRCR vs supervised)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="train IRCR and supervised-only on synthetic tiles and compare them (CPU, no "
             "downloads, ~10 min on 2 cores)",
        description="Generate a synthetic labelled + unlabelled H&E-like set, prepare it, train a "
                    "small HoVer-Net with IRCR and with supervised-only for the same number of "
                    "iterations, evaluate both on the validation split, segment one tile and "
                    "write report.md with overlays and loss curves.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller run (< ~1 min) that only checks the pipeline works")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and order (default 0)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the demo and print where the report is."""
    from ircr.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed)
    print(result.summary())
    print(f"report: {result.report}")
    return 0
