"""``ircr experiment PROTOCOL.yaml [--out DIR] [--jobs N | --cluster SPEC] [--budget-minutes M]
[--replan]``
and ``ircr experiment report DIR``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ircr.cli.options import add_cluster, add_device, add_progress
from ircr.errors import IrcrError


def register(subparsers: Any) -> None:
    """Add the ``experiment`` subcommand."""
    p = subparsers.add_parser(
        "experiment", help="run a protocol (methods x label ratios x seeds) to a report",
        description="Run every method x label ratio x seed of a protocol (configs/protocols/) "
                    "in its own run folder (finished runs are skipped, interrupted ones "
                    "resumed), then write report.md, report.csv and plots. "
                    "'ircr experiment report DIR' rebuilds the report from the run folders.")
    p.add_argument("protocol", metavar="PROTOCOL", help="protocol YAML, or 'report'")
    p.add_argument("folder", metavar="DIR", nargs="?", type=Path, default=None,
                   help="with 'report': the experiment folder")
    p.add_argument("--out", type=Path, default=None,
                   help="experiment folder (default: experiments/<protocol file stem>)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    add_cluster(p, "each run")
    p.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                   help="wall-clock budget for the whole experiment: measure each method's "
                        "rate, give all runs of a ratio the iterations that fit, compress "
                        "the lr schedule and the consistency warm-up/ramp-up proportionally")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and stop; writes nothing (with --budget-minutes it "
                        "still runs the warm-up that measures the rates)")
    p.add_argument("--replan", action="store_true",
                   help="plan again when the protocol, a config or the budget changed since "
                        "DIR was planned (changed runs start over; their old folders are "
                        "moved to DIR/replaced/)")
    p.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                   help="seconds between progress lines of a run (default 30)")
    add_device(p, default="")
    add_progress(p, note="the runs' periodic progress lines stay")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run an experiment or rebuild its report."""
    started = time.time()  # a --budget-minutes budget counts from here
    from ircr.experiment.report import write_report
    from ircr.experiment.runner import run_experiment

    if args.protocol == "report":
        if args.folder is None:
            raise IrcrError("ircr experiment report: name the experiment folder (DIR)")
        print(f"report: {write_report(args.folder)}")
        return 0
    if args.folder is not None:
        raise IrcrError(f"ircr experiment: unexpected argument {args.folder} (use --out DIR)")
    if args.cluster is not None:
        from ircr.executor import parse_cluster

        parse_cluster(args.cluster)
        if args.jobs != 1:
            raise IrcrError("--jobs and --cluster: choose one (--cluster local:N runs N at once)")
    proto = Path(args.protocol)
    out = args.out or Path("experiments") / proto.stem
    summary = run_experiment(proto, out, jobs=args.jobs, budget_minutes=args.budget_minutes,
                             dry_run=args.dry_run, progress_every=args.progress_every,
                             device=args.device or None, progress=not args.no_progress,
                             cluster=args.cluster, threads_per_worker=args.threads_per_worker,
                             replan=args.replan, started=started)
    return 1 if summary.get("failed") else 0
