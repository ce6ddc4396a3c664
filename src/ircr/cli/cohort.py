"""``ircr segment ... --cluster SPEC | --shard I/N`` and ``ircr segment merge OUT``.

The CLI side of :mod:`ircr.engine.cohort` and :mod:`ircr.engine.cohort_merge`: parse, call,
print. ``--cluster`` runs one Dask task per input (:mod:`ircr.executor`); ``--shard I/N``
processes a deterministic 1/N of the inputs (serially, or on ``--cluster``) and leaves the
cohort summary to ``ircr segment merge OUT``. Exit status 1 when an input failed (each is
listed with its reason; the others finish).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError


def add_cohort_options(p: argparse.ArgumentParser) -> None:
    """``--shard I/N`` (``--cluster`` comes from :func:`ircr.cli.options.add_cluster`)."""
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process shard I of N of the inputs (array jobs; deterministic); "
                        "then `ircr segment merge OUTDIR` writes the cohort summary")


def wants_cohort(args: argparse.Namespace) -> bool:
    """True when ``--cluster`` or ``--shard`` was given (checked before any work)."""
    if args.cluster is not None:
        from ircr.executor import parse_cluster

        parse_cluster(args.cluster)
    if args.shard is not None:
        from ircr.engine.cohort import parse_shard

        parse_shard(args.shard)
    return args.cluster is not None or args.shard is not None


def is_merge(args: argparse.Namespace) -> bool:
    """``ircr segment merge OUT``: the first positional is ``merge`` (and no such file)."""
    first = args.inputs[0]
    return str(first) == "merge" and not Path(first).exists()


def _log(msg: str) -> None:
    print(f"ircr segment: {msg}", file=sys.stderr, flush=True)


def run_merge(args: argparse.Namespace) -> int:
    """Write the cohort summary of OUT from its finished inputs."""
    from ircr.engine.cohort_merge import merge_cohort

    rest = list(args.inputs[1:])
    if len(rest) + (args.out is not None) != 1:
        raise IrcrError("ircr segment merge: name one output folder (ircr segment merge OUTDIR)")
    out = Path(rest[0]) if rest else args.out
    rows, written = merge_cohort(out, log=_log)
    _log(f"{len(rows)} finished input(s) in {out}")
    for f in written:
        print(f"wrote {f}")
    return 0


def run_cohort(args: argparse.Namespace, model: Any, files: list[tuple[Path, Path]],
               outputs: list[str]) -> int:
    """Run the inputs on the executor of ``--cluster`` (serial without), shard ``--shard``."""
    from ircr.engine.cohort import CohortInput, parse_shard, segment_cohort

    shard = parse_shard(args.shard)
    opts = dict(device=args.device, batch_size=args.batch_size, amp=args.amp, tile=args.tile,
                margin=args.margin, prior=args.prior, workers=args.workers,
                window=args.window, overlap=args.overlap, compile=args.compile,
                tta=args.tta)
    _log(f"model {model}; {len(files)} input(s)"
         + (f", shard {shard[0]}/{shard[1]}" if shard else "") + f" -> {args.out}")
    res = segment_cohort([CohortInput(p, s) for p, s in files], args.out, model,
                         cluster=args.cluster, threads=args.threads_per_worker,
                         outputs=outputs, mpp=args.mpp, tissue=not args.no_tissue,
                         overwrite=args.overwrite, skip_done=args.skip_done, shard=shard,
                         force=getattr(args, "force", False),
                         load_options=opts, log=_log)
    for f in res.written:
        print(f"wrote {f}")
    _log(f"{len(res.rows)} input(s): {res.count('done')} done, {res.count('skipped')} "
         f"skipped (done before), {res.count('failed')} failed; {res.wall_s:.1f} s")
    if shard:
        _log(f"shard {shard[0]}/{shard[1]} finished; when every shard is: "
             f"ircr segment merge {args.out}")
    for image, reason in res.failed:  # the reason names the file when it is about the file
        named = Path(image).name in reason
        print(f"ircr: error: {'' if named else image + ': '}{reason}", file=sys.stderr)
    return 1 if res.failed else 0
