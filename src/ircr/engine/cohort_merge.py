"""``ircr segment merge OUT``: the cohort summary rebuilt from the finished outputs in OUT.

After shards (``--shard I/N``: Slurm arrays, Snakemake, Nextflow) have written their inputs'
outputs into one folder, every finished input has its ``<name>_summary.json`` (written last,
atomically; :mod:`ircr.engine.outputs`). This reads them all (sub-folders included) and writes
``ircr_summary.csv/.json`` and ``ircr_nuclei_all.csv`` (:mod:`ircr.engine.folder_outputs`)
with one row per finished input, sorted by image name. Inputs without a summary (failed or not
run yet) are not in it: rerun their shard with ``--skip-done``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ircr.engine.folder_outputs import SUMMARY_JSON, summary_row, write_folder_outputs
from ircr.errors import IrcrError, file_error

SUFFIX = "_summary.json"
REQUIRED = ("input", "kind", "n_nuclei", "outputs")


def _read(path: Path) -> dict[str, Any] | None:
    """A per-input summary, or None for another JSON file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not all(k in doc for k in REQUIRED):
        return None
    return doc


def finished_rows(out: Path, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One summary row per ``<name>_summary.json`` under ``out``, sorted by image name.

    Output paths are taken as they are now (next to the summary), so a folder that was moved
    or mounted elsewhere still merges.
    """
    rows = []
    for f in sorted(out.rglob("*" + SUFFIX)):
        if f.name.startswith(".") or (f.parent == out and f.name == SUMMARY_JSON):
            continue
        doc = _read(f)
        if doc is None:
            if log is not None:
                log(f"{f}: not an input's summary (unreadable or other JSON), left out")
            continue
        sub = f.parent.relative_to(out)
        here = {k: str(f.parent / Path(v).name) for k, v in dict(doc["outputs"]).items()}
        seconds = float(doc.get("seconds") or 0.0)
        rows.append(summary_row(str(sub / Path(str(doc["input"])).name),
                                {**doc, "outputs": here}, seconds, out / sub))
    return sorted(rows, key=lambda r: r["image"])


def merge_cohort(out: str | Path, log: Callable[[str], None] | None = None
                 ) -> tuple[list[dict[str, Any]], list[Path]]:
    """Rebuild the cohort summary of ``out``; returns (rows, files written).

    Raises:
        IrcrError: ``out`` is not a folder or holds no finished input.
    """
    out = Path(out)
    if not out.is_dir():
        raise file_error(out, "output folder not found")
    rows = finished_rows(out, log)
    if not rows:
        raise IrcrError(f"{out}: no finished input to merge (no <name>{SUFFIX}; run "
                        "`ircr segment ... -o` into this folder first)")
    return rows, write_folder_outputs(out, rows)
