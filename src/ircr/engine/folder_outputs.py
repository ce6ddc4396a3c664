"""Whole-run outputs of ``ircr segment`` over several inputs (a folder, many files).

Next to the per-image files, the output folder gets:

* ``ircr_nuclei_all.csv``: every nucleus of every input, the per-image CSV columns
  (:data:`ircr.io.writers.TABLE_COLUMNS`) preceded by ``image`` (the input path relative to
  its folder argument) — one table for pandas/R/Excel;
* ``ircr_summary.csv``: one row per input (status, nuclei, areas, density, mpp, seconds,
  outputs, error);
* ``ircr_summary.json``: the same rows plus totals (inputs, failures, nuclei, areas, overall
  density).

Areas: ``area_mm2`` is the whole image; ``tissue_area_mm2`` the area the density divides by
(slides: the tissue mask; tiles: the whole image, which is processed whole), and
``nuclei_per_mm2 = n_nuclei_in_tissue / tissue_area_mm2`` (slides count the nuclei whose
centroid is in the tissue mask). The total density divides the summed counts by the summed
tissue areas, so totals and rows use the same area. A row's ``status`` is ``done``,
``skipped`` (done by an earlier run, ``--skip-done``; ``seconds`` is that run's time) or
``failed`` (with ``error``; failed inputs have no outputs and no area).

The merged CSV is built from the per-image CSV files, so it needs the ``csv`` output.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ircr.errors import file_error
from ircr.io.atomic import atomic_write, atomic_write_text
from ircr.io.writers import TABLE_COLUMNS

MERGED_CSV = "ircr_nuclei_all.csv"
SUMMARY_CSV = "ircr_summary.csv"
SUMMARY_JSON = "ircr_summary.json"
RESERVED_STEMS = frozenset(Path(n).stem for n in (MERGED_CSV, SUMMARY_CSV, SUMMARY_JSON))
ROW_KEYS = ("image", "status", "n_nuclei", "n_nuclei_in_tissue", "area_mm2",
            "tissue_area_mm2", "nuclei_per_mm2", "input_mpp", "mpp_source", "slide_reader",
            "seconds", "output_dir", "error")


def _recorded_seconds(summary: dict[str, Any]) -> float | None:
    """The run time an earlier run recorded in its summary (skipped inputs)."""
    t = summary.get("timings_s")
    if not isinstance(t, dict):
        return None
    if isinstance(t.get("total"), (int, float)):
        return float(t["total"])
    return sum(float(v) for v in t.values() if isinstance(v, (int, float))) or None


def summary_row(image: str, summary: dict[str, Any], seconds: float,
                output_dir: Path) -> dict[str, Any]:
    """One ``ircr_summary.csv`` row from a per-input summary dict (``process()``'s).

    A skipped input (``summary["skipped"]``) gets the seconds its earlier run recorded.
    """
    skipped = bool(summary.get("skipped"))
    secs = _recorded_seconds(summary) if skipped else seconds
    n_in = summary.get("n_nuclei_in_tissue")
    tissue = summary.get("tissue_area_mm2")
    if summary.get("kind") == "tile":  # summaries of older versions: tiles are processed whole
        n_in = summary.get("n_nuclei") if n_in is None else n_in
        tissue = summary.get("area_mm2") if tissue is None else tissue
    return {"image": image, "status": "skipped" if skipped else "done",
            "n_nuclei": summary.get("n_nuclei"), "n_nuclei_in_tissue": n_in,
            "area_mm2": summary.get("area_mm2"), "tissue_area_mm2": tissue,
            "nuclei_per_mm2": summary.get("nuclei_per_mm2"),
            "input_mpp": summary.get("input_mpp"), "mpp_source": summary.get("mpp_source"),
            "slide_reader": summary.get("slide_reader"),
            "seconds": None if secs is None else round(secs, 2),
            "output_dir": str(output_dir), "error": None,
            "csv": summary.get("outputs", {}).get("csv")}


def failed_row(image: str, error: str, output_dir: Path | None = None) -> dict[str, Any]:
    """The row of an input that failed (no outputs; ``error``: one line)."""
    return {**{k: None for k in ROW_KEYS}, "image": image, "status": "failed", "error": error,
            "output_dir": None if output_dir is None else str(output_dir), "csv": None}


def _merge_csv(rows: Sequence[dict[str, Any]], tmp: Path) -> None:
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("image", *TABLE_COLUMNS))
        for r in rows:
            if not r.get("csv"):  # a failed input
                continue
            with open(r["csv"], newline="", encoding="utf-8") as src:
                reader = csv.reader(src)
                next(reader, None)
                for line in reader:
                    w.writerow((r["image"], *line))


def _summary_csv(rows: Sequence[dict[str, Any]], tmp: Path) -> None:
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        dw = csv.DictWriter(fh, fieldnames=ROW_KEYS, extrasaction="ignore")
        dw.writeheader()
        for r in rows:
            dw.writerow({k: "" if r.get(k) is None else r[k] for k in ROW_KEYS})


def _sum(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """Sum of ``key`` over rows, None when a row lacks it (a total would mix areas)."""
    vals = [r.get(key) for r in rows]
    if not rows or any(v is None for v in vals):
        return None
    return float(sum(vals))  # type: ignore[arg-type]


def _totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the done/skipped rows; density = summed counts / summed tissue areas."""
    n_in, tissue = _sum(rows, "n_nuclei_in_tissue"), _sum(rows, "tissue_area_mm2")
    return {"n_nuclei": sum(int(r.get("n_nuclei") or 0) for r in rows),
            "n_nuclei_in_tissue": None if n_in is None else int(n_in),
            "area_mm2": _sum(rows, "area_mm2"), "tissue_area_mm2": tissue,
            "nuclei_per_mm2": n_in / tissue if n_in is not None and tissue else None}


def write_folder_outputs(out: Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write the merged CSV (when every finished row has a per-image CSV) and both summaries.

    Each file is written atomically (:mod:`ircr.io.atomic`); errors name the file.
    """
    written = []
    ok = [r for r in rows if r.get("status") != "failed"]
    if ok and all(r.get("csv") for r in ok):
        try:
            written.append(atomic_write(out / MERGED_CSV, lambda p: _merge_csv(ok, p)))
        except OSError as exc:  # reading a per-image CSV
            raise file_error(exc.filename or out, f"cannot read ({exc.strerror})") from None
    written.append(atomic_write(out / SUMMARY_CSV, lambda p: _summary_csv(rows, p)))
    doc = {"inputs": len(rows), "failed": len(rows) - len(ok), **_totals(ok),
           "seconds": round(sum(float(r.get("seconds") or 0) for r in ok), 2),
           "per_input": [{k: r.get(k) for k in ROW_KEYS} for r in rows]}
    written.append(atomic_write_text(out / SUMMARY_JSON, json.dumps(doc, indent=2) + "\n"))
    return written
