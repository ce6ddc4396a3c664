"""Box-score threshold for pseudo-labels by count matching (BASS §2.2; reference §7.2).

Assume labelled and unlabelled images hold as many nuclei on average. With n_L the mean
number of ground-truth instances per labelled image and n_U(t) the mean number of
detections with score **> t** per unlabelled image, the threshold is

    t* = argmin_t |n_U(t) - n_L|,   t in linspace(0.1, 1.0, 91) (0.10, 0.11, ..., 1.00).

Ties (equal distance) go to the **smallest** t, the first minimum of the grid as
``np.argmin`` gives it in the reference scripts (the larger pseudo-label set). The grid
values are rounded to 2 decimals, so t = 0.38 is exactly the float 0.38.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ircr.errors import IrcrError

__all__ = ["THRESHOLD_GRID", "CountMatch", "count_match_threshold"]

THRESHOLD_GRID = np.round(np.linspace(0.1, 1.0, 91), 2)


@dataclass
class CountMatch:
    """The chosen threshold and the curve it came from."""

    threshold: float
    n_labelled: float  # mean #GT per labelled image
    n_unlabelled: float  # mean #detections > threshold per unlabelled image
    grid: np.ndarray  # (T,) thresholds
    curve: np.ndarray  # (T,) n_U(t)
    index: int  # position of the threshold in the grid

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the curve as a list of [t, n_U(t)])."""
        return {
            "threshold": float(self.threshold),
            "n_labelled_mean": float(self.n_labelled),
            "n_unlabelled_mean_at_threshold": float(self.n_unlabelled),
            "tie_rule": "smallest threshold",
            "curve": [[float(t), float(n)] for t, n in zip(self.grid, self.curve, strict=True)],
        }


def count_match_threshold(
    labelled_counts: Sequence[int] | np.ndarray,
    unlabelled_scores: Sequence[np.ndarray],
    grid: np.ndarray | None = None,
) -> CountMatch:
    """Choose t* by count matching.

    Args:
        labelled_counts: number of ground-truth instances of each labelled image.
        unlabelled_scores: per unlabelled image, the (K_i,) detection scores.
        grid: candidate thresholds (default :data:`THRESHOLD_GRID`).
    """
    counts = np.asarray(labelled_counts, np.float64).reshape(-1)
    if counts.size == 0:
        raise IrcrError("pseudo-labels: no labelled image to count nuclei on")
    if len(unlabelled_scores) == 0:
        raise IrcrError("pseudo-labels: no unlabelled image to label")
    g = THRESHOLD_GRID if grid is None else np.asarray(grid, np.float64).reshape(-1)
    if g.size == 0:
        raise IrcrError("pseudo-labels: empty threshold grid")
    n_l = float(counts.mean())
    per_image = np.stack([
        (np.asarray(s, np.float64).reshape(-1, 1) > g.reshape(1, -1)).sum(axis=0)
        for s in unlabelled_scores
    ])  # (N_U, T)
    curve = per_image.mean(axis=0)
    k = int(np.argmin(np.abs(curve - n_l)))  # first minimum = smallest t
    return CountMatch(float(g[k]), n_l, float(curve[k]), g.copy(), curve, k)
