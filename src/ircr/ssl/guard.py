"""A guard that names a runaway consistency term the moment it happens.

Per iteration the semi-supervised methods hand the guard their supervised loss, their
*weighted* unsupervised terms (what enters the total loss) and the largest absolute teacher
output. The guard

* logs a one-line warning (logger ``ircr.ssl``) with the iteration when the unsupervised
  part is non-finite or more than ``ratio`` times the supervised loss (at most
  ``max_warnings`` lines per epoch; the rest are counted and reported once at the epoch end);
* keeps the per-epoch values that ``metrics.csv`` gets: ``teacher_max_abs`` (max over the
  epoch of |teacher output|, NP logits and HV), ``unsup_sup_ratio`` (mean over the epoch of
  weighted unsupervised / supervised) and ``unsup_sup_ratio_max``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("ircr.ssl")


@dataclass
class ConsistencyGuard:
    """Per-iteration check of the unsupervised/supervised balance (see module docstring).

    Attributes:
        ratio: warn when weighted unsupervised > ``ratio`` x supervised (0 = never warn).
        max_warnings: warning lines per epoch before the rest are only counted.
    """

    ratio: float = 100.0
    max_warnings: int = 3
    teacher_max: float = float("nan")
    ratio_sum: float = 0.0
    ratio_max: float = float("nan")
    n: int = 0
    warned: int = 0
    suppressed: int = 0

    def check(self, iteration: int, sup: float, unsup: dict[str, float],
              teacher_max: float | None = None) -> bool:
        """Record one iteration; returns True when it was flagged (and logged or counted).

        Args:
            iteration: 1-based number of the iteration being computed (for the message).
            sup: supervised loss value.
            unsup: name -> weighted unsupervised term (γ · ramp weight · term).
            teacher_max: max |teacher output| of this iteration, when the teacher ran.
        """
        if teacher_max is not None:
            self.teacher_max = _nanmax(self.teacher_max, float(teacher_max))
        total = sum(float(v) for v in unsup.values())
        ratio = total / sup if sup > 0 else (0.0 if total == 0 else math.inf)
        if math.isfinite(ratio):
            self.ratio_sum += ratio
            self.n += 1
        self.ratio_max = _nanmax(self.ratio_max, ratio)
        bad = not math.isfinite(total) or (self.ratio > 0 and ratio > self.ratio)
        if not bad:
            return False
        if self.warned < self.max_warnings:
            parts = ", ".join(f"{k} {float(v) + 0.0:.4g}" for k, v in unsup.items())  # no -0
            tmax = "" if teacher_max is None else f"; max |teacher output| {teacher_max:.4g}"
            log.warning("iteration %d: unsupervised terms (%s) are %s the supervised loss "
                        "%.4g%s", iteration, parts,
                        "non-finite, against" if not math.isfinite(total)
                        else f"{ratio:.3g}x", sup, tmax)
            self.warned += 1
        else:
            self.suppressed += 1
        return True

    def epoch_values(self) -> dict[str, float]:
        """metrics.csv columns of the epoch, then reset (reports suppressed warnings)."""
        if self.suppressed:
            log.warning("%d more iterations this epoch had runaway unsupervised terms "
                        "(see unsup_sup_ratio_max in metrics.csv)", self.suppressed)
        out = {"teacher_max_abs": self.teacher_max,
               "unsup_sup_ratio": self.ratio_sum / self.n if self.n else float("nan"),
               "unsup_sup_ratio_max": self.ratio_max}
        self.teacher_max, self.ratio_max = float("nan"), float("nan")
        self.ratio_sum, self.n, self.warned, self.suppressed = 0.0, 0, 0, 0
        return out


def _nanmax(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)
