"""Diagnostics of the semi-supervised methods: per-epoch statistics and overlays.

* :class:`EpochStats` accumulates per-iteration numbers (losses, matched pairs, match
  distances, prior rejections) and returns per-epoch means for ``metrics.csv`` / TensorBoard.
* :func:`instance_overlay` draws one unlabelled patch with the teacher instances outlined
  green when kept / filled red when rejected by the prior, the student instances outlined
  blue and the matched teacher-student pairs linked by yellow lines between their centroids.
* :func:`save_overlays` writes a few such overlays as PNG files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ircr.io.figures import caption_image
from ircr.io.paths import child_path, safe_name
from ircr.io.writers import outline_mask

KEPT = (40, 200, 60)
REJECTED = (230, 40, 40)
STUDENT = (40, 120, 255)
PAIR = (255, 230, 0)
LEGEND = ((KEPT, "teacher"), (REJECTED, "rejected"), (STUDENT, "student"), (PAIR, "pair"))


@dataclass
class EpochStats:
    """Running sums of per-iteration diagnostics; :meth:`means` gives the per-epoch values.

    Losses are averaged over iterations; ``pairs_per_image`` over unlabelled images,
    ``match_dist_mean`` over matched pairs and ``prior_reject_frac`` over scored teacher
    instances (so each is a true pooled mean, not a mean of means).
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0
    pairs: int = 0
    dist_sum: float = 0.0
    teacher_instances: int = 0
    rejected: int = 0

    def add_losses(self, values: dict[str, float]) -> None:
        """Add one iteration's scalar losses (name -> float)."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def add_matching(self, images: int, distances: Iterable[float]) -> None:
        """Add the kept-pair distances (pixels) found in ``images`` unlabelled images."""
        d = np.asarray(list(distances), dtype=np.float64)
        self.images += int(images)
        self.pairs += int(d.size)
        self.dist_sum += float(d.sum())

    def add_prior(self, scored: int, rejected: int) -> None:
        """Add the number of teacher instances scored by the prior and how many it rejected."""
        self.teacher_instances += int(scored)
        self.rejected += int(rejected)

    def means(self) -> dict[str, float]:
        """Per-epoch means (NaN where nothing was counted)."""
        out = {k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}
        if self.images:
            out["pairs_per_image"] = self.pairs / self.images
            out["match_dist_mean"] = self.dist_sum / self.pairs if self.pairs else float("nan")
        if self.teacher_instances or self.images:
            out["prior_reject_frac"] = (
                self.rejected / self.teacher_instances if self.teacher_instances else 0.0
            )
        return out

    def reset(self) -> None:
        """Start a new epoch."""
        self.__init__()  # type: ignore[misc]


def _up(a: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor along the first two axes."""
    return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def _centroids(inst: np.ndarray, ids: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Mean (row, col) of each listed id of ``inst``."""
    if len(ids) == 0:
        return {}
    cs = ndi.center_of_mass(np.ones(inst.shape), labels=inst, index=list(ids))
    return {int(i): (float(c[0]), float(c[1])) for i, c in zip(ids, cs)}


def instance_overlay(
    image: np.ndarray,
    teacher: np.ndarray,
    student: np.ndarray | None = None,
    rejected_ids: Iterable[int] = (),
    pairs: Sequence[tuple[int, int]] = (),
    scale: int = 3,
) -> np.ndarray:
    """Draw teacher/student instances and matches on an image.

    Args:
        image: (H, W, 3) uint8 RGB (the weak view the teacher saw).
        teacher: (H, W) int teacher instance map T.
        student: (H, W) int student instance map S, or None.
        rejected_ids: teacher ids the prior rejected (U = 0): filled red; the others
            outlined green.
        pairs: kept matches as (teacher id, student id).
        scale: integer upscaling of the output for readability.

    Returns:
        (H*scale, W*scale, 3) uint8 RGB overlay.
    """
    img = np.ascontiguousarray(image[..., :3]).astype(np.float32)
    teacher = np.asarray(teacher)
    rej = np.isin(teacher, np.fromiter(rejected_ids, dtype=np.int64, count=-1))
    # rejected nuclei filled (they are few); kept ones outlined only, so the tissue stays
    # visible even when an early teacher predicts large merged regions
    img[rej] = 0.6 * img[rej] + 0.4 * np.asarray(REJECTED, np.float32)
    out = np.ascontiguousarray(_up(img.clip(0, 255).astype(np.uint8), scale))
    t_big = _up(teacher, scale)
    t_edge = outline_mask(t_big)
    out[t_edge] = KEPT
    out[t_edge & _up(rej, scale)] = REJECTED
    if student is not None:
        s_big = _up(np.asarray(student), scale)
        out[outline_mask(s_big)] = STUDENT
    if pairs and student is not None:
        tc = _centroids(teacher, [p[0] for p in pairs])
        sc = _centroids(np.asarray(student), [p[1] for p in pairs])
        for t_id, s_id in pairs:
            (ty, tx), (sy, sx) = tc[int(t_id)], sc[int(s_id)]
            p0 = (int(round((tx + 0.5) * scale)), int(round((ty + 0.5) * scale)))
            p1 = (int(round((sx + 0.5) * scale)), int(round((sy + 0.5) * scale)))
            cv2.line(out, p0, p1, PAIR, 1, lineType=cv2.LINE_AA)
            cv2.circle(out, p0, max(1, scale), PAIR, -1)
    return out


def save_overlays(
    folder: str | Path,
    items: Sequence[dict[str, object]],
    prefix: str = "overlay",
) -> list[Path]:
    """Write overlays as PNG files.

    Args:
        folder: output folder (created).
        items: dicts with keys ``image``, ``teacher``, and optionally ``student``,
            ``rejected_ids``, ``pairs`` and ``name`` (see :func:`instance_overlay`).
        prefix: file name prefix.

    Returns:
        The written paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, it in enumerate(items):
        ov = instance_overlay(
            it["image"],  # type: ignore[arg-type]
            it["teacher"],  # type: ignore[arg-type]
            it.get("student"),  # type: ignore[arg-type]
            it.get("rejected_ids", ()),  # type: ignore[arg-type]
            it.get("pairs", ()),  # type: ignore[arg-type]
        )
        name = str(it.get("name", k))
        ov = caption_image(ov, name, LEGEND)
        path = child_path(folder, safe_name(f"{prefix}_{name}") + ".png")  # name from data
        cv2.imwrite(str(path), cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
