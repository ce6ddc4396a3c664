"""Entry point of the ``ircr`` command: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ircr._version import __version__
from ircr.errors import IrcrError

# Subcommand modules under ircr.cli; each defines ``register(subparsers)`` which adds its
# parser and sets ``func=handler`` where ``handler(args) -> int``.
SUBCOMMANDS = ("data", "train", "pretrain", "adapt", "evaluate", "tune", "segment", "models",
               "prior", "demo", "experiment")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ircr",
        description="Semi-supervised nuclei instance segmentation (IRCR-Net and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"ircr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"ircr.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line ``ircr: error: ...`` and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except IrcrError as exc:
        print(f"ircr: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write/read error the library did not name: still one line
        where = exc.filename or "ircr"
        print(f"ircr: error: {where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = str(exc).strip("'\"")
        print(f"ircr: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
