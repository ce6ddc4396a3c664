"""Per-epoch metrics: ``metrics.csv`` in the run folder, plus TensorBoard when installed.

Columns are the union of all keys logged so far (``epoch`` first, then in first-seen order);
when a new key appears the file is rewritten, so every row has every column (empty = not
measured that epoch). On resume, rows of epochs at or after the resume point are dropped, so a
resumed run's CSV equals an uninterrupted one's.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Any


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package (needed by torch's SummaryWriter) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class MetricsLogger:
    """Append one row per epoch to ``<run>/metrics.csv`` (and TensorBoard scalars)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["epoch"]
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or ["epoch"])
                self.rows = [dict(r) for r in reader]
        self._tb: Any = None
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate(self, epoch: int) -> None:
        """Drop rows with ``epoch >= epoch`` (used when resuming) and rewrite the file."""
        self.rows = [r for r in self.rows if int(float(r["epoch"])) < epoch]
        self._rewrite()

    def log(self, epoch: int, values: dict[str, float | int | str]) -> None:
        """Record the metrics of one (0-based) ``epoch``."""
        row: dict[str, Any] = {"epoch": epoch, **values}
        new = [k for k in row if k not in self.columns]
        self.columns.extend(new)
        self.rows.append(row)
        if new or not self.path.is_file():
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writerow(_fmt(row))
        if self._tb is not None:
            for key, val in values.items():
                if isinstance(val, (int, float)) and math.isfinite(float(val)):
                    self._tb.add_scalar(key, float(val), epoch)
            self._tb.flush()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            for r in self.rows:
                writer.writerow(_fmt(r))
        tmp.replace(self.path)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(row: dict[str, Any]) -> dict[str, Any]:
    """Format floats compactly (6 significant digits) for the CSV."""
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


class NullLogger:
    """The metrics logger of ranks other than 0 under torchrun: writes nothing."""

    def truncate(self, epoch: int) -> None:
        """Nothing to drop."""

    def log(self, epoch: int, values: dict[str, Any]) -> None:
        """Rank 0 logs."""

    def close(self) -> None:
        """Nothing open."""
