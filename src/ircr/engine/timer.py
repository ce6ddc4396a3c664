"""Wall-clock seconds per pipeline stage (for the ``timings_s`` of segmentation summaries)."""

from __future__ import annotations

import time


class Timer:
    """Accumulates wall-clock seconds per stage: ``with timer("network"): ...``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stage = ""

    def __call__(self, stage: str) -> Timer:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self._t0
        self.totals[self._stage] = self.totals.get(self._stage, 0.0) + dt

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (time measured elsewhere, e.g. in a worker thread)."""
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        """Totals rounded to milliseconds."""
        return {k: round(v, 3) for k, v in self.totals.items()}
