"""``ircr segment [MODEL] INPUT... -o OUTDIR``: segment tiles, folders and whole-slide images.

MODEL is a model folder or a packaged model name (``ircr models list``); without it (or with
``--model default``) the ``default`` model shipped with the package is used.

INPUT is any mix of image files (PNG, JPEG, TIFF), folders (their image files; ``--recursive``
for sub-folders, mirrored under OUTDIR) and whole-slide images (SVS, NDPI, pyramidal
TIFF/OME-TIFF, ...). Per input, ``--outputs`` chooses among: ``labels`` (``<name>_labels.tif``),
``geojson`` (``<name>.geojson``, QuPath detections), ``csv`` (``<name>.csv``), ``overlay``
(``<name>_overlay.png``) and ``summary`` (``<name>_summary.json``).

Each output is written under a temporary name and renamed when complete; the summary is
written last and marks an input done. Existing outputs are refused unless ``--overwrite``;
``--skip-done`` skips inputs whose outputs are complete and redoes the others (batch jobs).
SIGTERM is handled like Ctrl-C: the unfinished temporary files are removed.
Every input is checked (readable header; a slide's pixel size) before the model is loaded;
an input that fails, then or during its run, is reported with one line and the run goes on
with the others; the failures are listed with their reasons at the end (and in the folder
summary), and only then is the exit status non-zero (2).
With more than one input (or a folder), OUTDIR also gets ``ircr_nuclei_all.csv`` (every
nucleus, with its image), ``ircr_summary.csv`` and ``ircr_summary.json``
(:mod:`ircr.engine.folder_outputs`; inputs skipped by ``--skip-done`` are included).
``--cluster`` (Dask) and ``--shard I/N`` run one task per input, ``ircr segment merge OUTDIR``
rebuilds the summary of shards (:mod:`ircr.cli.cohort`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ircr.cli.cohort import add_cohort_options, is_merge, run_cohort, run_merge, wants_cohort
from ircr.cli.options import add_cluster, add_device, add_inference, add_progress
from ircr.errors import IrcrError


def register(subparsers: Any) -> None:
    """Add ``ircr segment``."""
    p = subparsers.add_parser(
        "segment", help="segment nuclei in images, folders and whole-slide images",
        description="Run a trained model folder on image files, folders and whole slides; "
                    "writes label TIFF, QuPath GeoJSON, CSV, overlay PNG and a JSON summary.")
    p.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                   help="optional model (a model folder or a packaged model name; default: "
                        "the packaged 'default' model), then image files, folders or "
                        "whole-slide images")
    p.add_argument("--model", dest="model", default=None, metavar="MODEL",
                   help="model folder or packaged model name (`ircr models list`); then "
                        "every positional argument is an input")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="OUTDIR",
                   help="output folder (created; required)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--outputs", default=None,
                   help="comma-separated outputs (default: all; built in: labels, geojson, "
                        "csv, overlay, summary)")
    p.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel of the inputs (overrides the files' metadata)")
    add_device(p)
    add_inference(p)
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16/fp16)")
    p.add_argument("--compile", dest="compile", action="store_const", const="on",
                   default="auto",
                   help="torch.compile the network for every input (CPU: ~2.3x faster per "
                        "megapixel after a compile of ~45 s per window shape; falls back to "
                        "eager with a message where it cannot compile). Default: compiled on "
                        "CPU for slides with at least 64 MP of tissue, eager otherwise")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off",
                   help="never compile (the eager network for every input)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="stitching tile core in px at the model's resolution (default 1024; "
                        "on slides, with the default model's 1088 px window, 512: one "
                        "768 px network pass per tile)")
    p.add_argument("--margin", type=int, default=None, metavar="PX",
                   help="context margin in px at the model's resolution; must exceed the "
                        "largest nucleus (default: 24 µm in px, e.g. 96 px at 0.25 µm/px)")
    p.add_argument("--workers", type=int, default=2,
                   help="post-processing threads on whole slides (2)")
    p.add_argument("--no-tissue", action="store_true",
                   help="segment the whole slide (no tissue detection)")
    p.add_argument("--force", action="store_true",
                   help="segment inputs that do not look like brightfield H&E (fluorescence, "
                        "channel planes, mostly dark) with a warning instead of refusing them")
    p.add_argument("--prior", type=Path, default=None,
                   help="prior .npz for the prior_score column (default: the model's, else "
                        "the packaged one)")
    add_progress(p)
    add_cluster(p, "one task per input")
    add_cohort_options(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (default: refuse)")
    again.add_argument("--skip-done", action="store_true",
                       help="skip inputs whose outputs are complete; redo unfinished ones")
    p.set_defaults(func=handler)


def _looks_like_model(text: str | Path) -> bool:
    """A packaged model name, a folder holding a model (or a run folder with model/), or a
    path that does not exist and is not named like an image (a mistyped model folder is then
    reported as a missing model, as before MODEL became optional)."""
    from ircr.engine.inputs import supported_suffixes
    from ircr.engine.packaged import is_packaged_name

    if is_packaged_name(text):
        return True
    arg = Path(text)
    if not arg.exists():
        return arg.suffix.lower() not in supported_suffixes()
    return arg.is_dir() and any((arg / f).is_file() for f in (
        "model.yaml", "weights.pt", "postproc.yaml", "model/model.yaml"))


def split_model(model: str | None,
                positionals: list[str] | list[Path]) -> tuple[str | Path, list[Path]]:
    """(model, inputs) from ``--model`` and the positionals ``[MODEL] INPUT...``.

    Without ``--model`` the first positional is the model when more arguments follow and it
    is a packaged model name, a model folder, or a missing path not named like an image;
    otherwise every positional is an input and the packaged ``default`` model is used.
    A bare packaged name (``default``) is the packaged model even where a folder of that name
    exists here (``./default`` is the folder).

    Raises:
        IrcrError: only a model was given (no input).
    """
    from ircr.engine.packaged import DEFAULT_MODEL, is_packaged_name

    if model is not None:
        return model, [Path(p) for p in positionals]
    first = positionals[0]
    if _looks_like_model(first) and (len(positionals) > 1 or Path(first).exists()
                                     or is_packaged_name(first)):
        if len(positionals) == 1:
            raise IrcrError(f"{first}: this is a model; give the images to segment after it "
                            "(ircr segment [MODEL] INPUT... -o OUTDIR)")
        return first, [Path(p) for p in positionals[1:]]
    return DEFAULT_MODEL, [Path(p) for p in positionals]


def collect_inputs(inputs: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, output sub-folder) for every input; folders are expanded.

    Files are not opened here (:func:`ircr.engine.inputs.preflight` checks each one).

    Raises:
        IrcrError: a folder holds no supported file, or two inputs would write the same
            output names.
    """
    from ircr.engine.inputs import output_stem, supported_suffixes

    suffixes = supported_suffixes()
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            pattern = item.rglob("*") if recursive else item.glob("*")
            files = sorted(f for f in pattern if f.is_file() and f.suffix.lower() in suffixes
                           and not f.name.startswith("."))
            if not files:
                raise IrcrError(f"{item}: folder has no supported image files"
                                + ("" if recursive else " (use --recursive for sub-folders)"))
            found += [(f, f.parent.relative_to(item)) for f in files]
        else:  # checked with the others before the model loads (a bad one does not stop them)
            found.append((item, Path(".")))
    from ircr.engine.folder_outputs import RESERVED_STEMS

    seen: dict[Path, Path] = {}
    for f, sub in found:
        key = sub / output_stem(f)
        if str(key) in RESERVED_STEMS:
            raise IrcrError(f"{f}: its outputs would overwrite the run summary "
                            f"{key}.csv/.json; rename the file")
        if key in seen:
            raise IrcrError(f"{f}: output names clash with {seen[key]} (same name in the same "
                            "output folder); rename one or run them separately")
        seen[key] = f
    return found


def _fmt_rate(summary: dict[str, Any]) -> str:
    rate = summary.get("nuclei_per_mm2")
    return f" ({rate:.0f}/mm²)" if rate else ""


def _checked_inputs(files: list[tuple[Path, Path]], args: argparse.Namespace,
                    failures: list[tuple[Path, Path, str]]) -> list[tuple[Path, Path]]:
    """The inputs that pass the checks done before the model loads; the others go to
    ``failures`` (file, sub-folder, reason), each reported at once with one line."""
    from ircr.engine.inputs import preflight

    ok = []
    for path, sub in files:
        try:
            with _quiet_warnings():
                preflight(path, args.mpp, force=args.force)
        except IrcrError as exc:
            print(f"ircr: error: {exc}", file=sys.stderr)
            failures.append((path, sub, str(exc)))
        else:
            ok.append((path, sub))
    return ok


def _report_failures(failures: list[tuple[Path, Path, str]], total: int) -> None:
    print(f"ircr: error: {len(failures)} of {total} input(s) failed:", file=sys.stderr)
    for path, _, reason in failures:
        prefix = f"{path}: "
        print(f"  {path}: {reason[len(prefix):] if reason.startswith(prefix) else reason}",
              file=sys.stderr)


def _load(model: str | Path, args: argparse.Namespace) -> Any:
    from ircr.engine.segmenter import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = load_model(model, device=args.device, batch_size=args.batch_size, amp=args.amp,
                         tile=args.tile, margin=args.margin, prior=args.prior,
                         workers=args.workers, window=args.window, overlap=args.overlap,
                         compile=args.compile, tta=args.tta)
    _print_warnings(caught)
    return seg


def handler(args: argparse.Namespace) -> int:
    """Run ``ircr segment``."""
    with _quiet_reader_logs():
        return _segment(args)


def _segment(args: argparse.Namespace) -> int:
    from ircr.engine.outputs import check_outputs, output_names

    if is_merge(args):
        return run_merge(args)
    if args.out is None:
        raise IrcrError("ircr segment: -o/--out OUTDIR is required")
    if args.outputs is None:
        args.outputs = ",".join(output_names())
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    check_outputs(outputs, raw=args.outputs)
    if args.mpp is not None:
        from ircr.io.wsi import check_mpp

        check_mpp(args.mpp)
    model, inputs = split_model(args.model, list(args.inputs))
    files = collect_inputs(inputs, args.recursive)
    from ircr.io.lock import FolderLock
    from ircr.io.paths import ensure_dir

    ensure_dir(args.out)
    if wants_cohort(args):  # --cluster / --shard: one task per input (ircr.engine.cohort);
        with _sigterm_as_interrupt():  # no folder lock: shards and workers share OUT
            return run_cohort(args, model, files, outputs)
    with FolderLock(args.out, "output folder"):  # one writer per output folder
        return _segment_all(args, model, inputs, files, outputs)


def _segment_all(args: argparse.Namespace, model: str | Path, inputs: list[Path],
                 files: list[tuple[Path, Path]], outputs: list[str]) -> int:
    """Check the inputs, load the model and segment every input into the (locked) output
    folder; failures are listed at the end (exit 2), the others finish."""
    from ircr.engine.folder_outputs import failed_row, write_folder_outputs

    failures: list[tuple[Path, Path, str]] = []
    todo = _checked_inputs(files, args, failures)
    if len(files) == 1 and failures:
        return 2  # the one input's error is printed; no model loaded
    rows: dict[Path, dict[str, Any]] = {}
    if todo:
        seg = _load(model, args)
        where = "" if str(model) == seg.name else f" ({seg.name})"
        print(f"ircr segment: model {model}{where}", file=sys.stderr)
        print(f"ircr segment: {seg.describe()}", file=sys.stderr)
        print(f"ircr segment: {len(todo)} input(s) -> {args.out}", file=sys.stderr)
        with _sigterm_as_interrupt():
            for path, sub in todo:
                row = _run_one(seg, path, sub, outputs, args, failures)
                if row is not None:
                    rows[path] = row
    failed = {path: failed_row(str(sub / path.name), reason) for path, sub, reason in failures}
    ordered = [rows.get(path) or failed[path] for path, _ in files]
    if len(files) > 1 or any(p.is_dir() for p in inputs):
        for f in write_folder_outputs(args.out, ordered):
            print(f"wrote {f}")
    if failures:
        if len(files) > 1:  # a single input's error is already its one line
            _report_failures(failures, len(files))
        return 2
    return 0


def _run_one(seg: Any, path: Path, sub: Path, outputs: list[str], args: argparse.Namespace,
             failures: list[tuple[Path, Path, str]]) -> dict[str, Any] | None:
    """Segment one input; its folder-summary row, or None (failure recorded and printed)."""
    from ircr.engine.folder_outputs import summary_row

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = seg.process(
                path, args.out / sub, outputs=outputs, mpp=args.mpp,
                tissue=not args.no_tissue, progress=not args.no_progress,
                log=lambda msg: print(f"ircr segment: {msg}", file=sys.stderr),
                overwrite=args.overwrite, skip_done=args.skip_done, force=args.force)
    except IrcrError as exc:
        _print_warnings(caught)
        print(f"ircr: error: {exc}", file=sys.stderr)
        failures.append((path, sub, str(exc)))
        return None
    _print_warnings(caught)
    secs = time.perf_counter() - t0
    row = summary_row(str(sub / path.name), summary, secs, args.out / sub)
    if summary.get("skipped"):
        print(f"{path}: done before, skipped (--skip-done) -> {args.out / sub}")
    else:
        print(f"{path}: {summary['n_nuclei']} nuclei{_fmt_rate(summary)} in "
              f"{secs:.1f} s -> {args.out / sub}")
    return row


# third-party readers' own warnings (tifffile's and tiffslide's metadata notes) are theirs,
# not the user's: the engine reports what matters about a file in its own words
_QUIET_MODULES = ("tifffile", "tiffslide", "zarr", "PIL")


def _from_reader(w: warnings.WarningMessage) -> bool:
    return any(f"{os.sep}{m}{os.sep}" in str(w.filename) for m in _QUIET_MODULES)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if not _from_reader(w):
            print(f"ircr: warning: {w.message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_reader_logs() -> Iterator[None]:
    """tifffile/tiffslide log metadata notes (as warnings and errors, e.g. "ImageJ series
    metadata invalid", after which they read the file anyway) through ``logging``: keep them
    off the console; a file that cannot be read fails with the engine's own one-line error."""
    loggers = [logging.getLogger(m) for m in _QUIET_MODULES]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    _print_warnings(caught)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so unfinished outputs are cleaned up."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
