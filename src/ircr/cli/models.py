"""``ircr models list``: the trained models shipped with the package and their cards."""

from __future__ import annotations

import argparse
from typing import Any

from ircr.cli.options import NO_NETWORK, add_device, add_progress, check_device


def register(subparsers: Any) -> None:
    """Add ``ircr models list``."""
    p = subparsers.add_parser(
        "models", help="list the trained models shipped with ircr (with their model cards)",
        description="Packaged models work offline: `ircr segment INPUT -o OUT` uses 'default'; "
                    "any name listed here can be passed as MODEL to segment, tune-postproc "
                    "or ircr.load_model(NAME).")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("list", help="packaged models with their model cards")
    ls.add_argument("--names", action="store_true", help="only the names, one per line")
    for parser in (p, ls):
        add_device(parser, note=NO_NETWORK)
        add_progress(parser, note="this command shows none")
    ls.set_defaults(func=handler)
    p.set_defaults(func=handler, names=False)


def handler(args: argparse.Namespace) -> int:
    """Print the packaged models (names only, or the full cards)."""
    from ircr.engine.packaged import format_card, packaged_models

    check_device(args.device)
    models = packaged_models()
    if not models:
        print("no packaged models installed")
        return 0
    if args.names:
        print("\n".join(m.name for m in models))
        return 0
    print("\n\n".join(format_card(m) for m in models))
    return 0
