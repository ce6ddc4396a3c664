"""``ircr demo``: a self-contained CPU demonstration (synthetic data, IRCR vs supervised)."""

from __future__ import annotations

import argparse
from typing import Any

from ircr.cli.options import add_device, add_progress
from ircr.demo import EXPECTED_TIME


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="train IRCR and supervised-only on synthetic tiles and compare them (CPU, no "
             f"downloads, ~{EXPECTED_TIME['full']} on an idle 2-core CPU)",
        description="Generate a synthetic labelled + unlabelled H&E-like set, prepare it, train a "
                    "small HoVer-Net with IRCR and with supervised-only for the same number of "
                    "iterations, evaluate both on the validation split, segment one tile and "
                    "write report.md with overlays and loss curves. About "
                    f"{EXPECTED_TIME['full']} on an idle 2-core CPU (--quick: about "
                    f"{EXPECTED_TIME['quick']}); it scales with the machine's load. "
                    "Run it again with the same --out to resume after an interruption.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller run that only checks the pipeline works (about "
                        f"{EXPECTED_TIME['quick']} on an idle 2-core CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and order (default 0)")
    add_device(p, default="cpu", note="the documented timings and results are on CPU")
    add_progress(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the demo and print where the report is."""
    from ircr.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                      device=args.device)
    print(result.summary())
    print(f"report: {result.report}")
    return 0
