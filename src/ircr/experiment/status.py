"""What is on disk for one experiment run: its JSON files and whether it finished.

Shared by the runner (which skips finished runs and resumes the others) and the report (which
shows every planned run with its status), so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.io.atomic import atomic_write_text


def read_json(path: Path) -> Any:
    """Read a JSON file with a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IrcrError(f"{path}: cannot read JSON ({type(exc).__name__})") from None


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON atomically (``ircr.io.atomic``): never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def run_status(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` of a run, or ``{status: missing|incomplete, iteration}``."""
    m = run_dir / "metrics.json"
    if m.is_file():
        doc: dict[str, Any] = read_json(m)
        return doc
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        from ircr.train.checkpoint import load_checkpoint

        try:
            it = int(load_checkpoint(last)["iteration"])
        except (IrcrError, KeyError):
            it = -1
        return {"status": "incomplete", "iterations": it}
    return {"status": "missing"}
