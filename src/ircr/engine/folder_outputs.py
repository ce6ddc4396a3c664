"""Whole-run outputs of ``ircr segment`` over several inputs (a folder, many files).

Next to the per-image files, the output folder gets:

* ``ircr_nuclei_all.csv``: every nucleus of every input, the per-image CSV columns
  (:data:`ircr.io.writers.TABLE_COLUMNS`) preceded by ``image`` (the input path relative to
  its folder argument) — one table for pandas/R/Excel;
* ``ircr_summary.csv``: one row per input (nuclei, area, tissue area of slides, density, mpp,
  seconds, outputs, ``status``: done / skipped / failed, and the ``error`` of a failed one);
* ``ircr_summary.json``: the same rows plus totals (inputs, nuclei, area, overall density).

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
ROW_KEYS = ("image", "n_nuclei", "area_mm2", "tissue_area_mm2", "nuclei_per_mm2", "input_mpp",
            "mpp_source", "seconds", "output_dir", "status", "error")


def summary_row(image: str, summary: dict[str, Any], seconds: float,
                output_dir: Path) -> dict[str, Any]:
    """One ``ircr_summary.csv`` row from a per-input summary dict (``process()``'s)."""
    return {"image": image, "n_nuclei": summary.get("n_nuclei"),
            "area_mm2": summary.get("area_mm2"),
            "tissue_area_mm2": summary.get("tissue_area_mm2"),
            "nuclei_per_mm2": summary.get("nuclei_per_mm2"),
            "input_mpp": summary.get("input_mpp"), "mpp_source": summary.get("mpp_source"),
            "seconds": round(seconds, 2), "output_dir": str(output_dir),
            "status": "skipped" if summary.get("skipped") else "done", "error": None,
            "csv": summary.get("outputs", {}).get("csv")}


def failed_row(image: str, error: str, output_dir: Path) -> dict[str, Any]:
    """The ``ircr_summary.csv`` row of an input that failed (``error``: one line)."""
    return {**{k: None for k in ROW_KEYS}, "image": image, "output_dir": str(output_dir),
            "status": "failed", "error": error, "csv": None}


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


def write_folder_outputs(out: Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write the merged CSV (when every finished row has a per-image CSV) and both summaries.

    Each file is written atomically (:mod:`ircr.io.atomic`); errors name the file.
    """
    written = []
    finished = [r for r in rows if r.get("status") != "failed"]
    if finished and all(r.get("csv") for r in finished):
        try:
            written.append(atomic_write(out / MERGED_CSV, lambda p: _merge_csv(rows, p)))
        except OSError as exc:  # reading a per-image CSV
            raise file_error(exc.filename or out, f"cannot read ({exc.strerror})") from None
    written.append(atomic_write(out / SUMMARY_CSV, lambda p: _summary_csv(rows, p)))
    nuclei = sum(int(r.get("n_nuclei") or 0) for r in rows)
    areas = [r["area_mm2"] for r in finished if r.get("area_mm2")]
    area = sum(areas) if len(areas) == len(finished) and areas else None
    doc = {"inputs": len(rows), "failed": len(rows) - len(finished), "n_nuclei": nuclei,
           "area_mm2": area,
           "nuclei_per_mm2": nuclei / area if area else None,
           "seconds": round(sum(float(r.get("seconds") or 0) for r in rows), 2),
           "per_input": [{k: r.get(k) for k in ROW_KEYS} for r in rows]}
    written.append(atomic_write_text(out / SUMMARY_JSON, json.dumps(doc, indent=2) + "\n"))
    return written
