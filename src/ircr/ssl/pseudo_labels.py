"""BASS stage 2: pseudo-labels for the unlabelled patches (reference §7.2).

For every unlabelled patch: run the detector (optionally with test-time augmentation,
:mod:`ircr.ssl.tta`), paint the detections with score > the grid's lowest threshold (mask
probability >= 0.5, higher score wins overlaps, :mod:`ircr.postproc.detections`). Then the
box-score threshold t* is chosen by count matching (:mod:`ircr.ssl.count_threshold`) and each
patch keeps its instances with score > t* (exact: painting is prefix-consistent).

Output, both written atomically into ``out_dir`` (the threshold file last, so its presence
means the stage is complete):

* ``pseudo_labels.npz``: ``labels`` (N, P, P) int32 instance maps (ids 1..K, decreasing
  score), ``patches`` (N, 5) int64 (image index, y0, x0, h, w: the dataset's patch tuple),
  ``scores`` (total,) float32 and ``offsets`` (N + 1,) int64 (scores of patch i's ids at
  ``scores[offsets[i]:offsets[i + 1]]``), ``format`` and ``threshold``;
* ``threshold.json``: t*, n_L, the n_U(t) curve, counts per patch and the settings.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ircr.data.splits import Patch
from ircr.errors import IrcrError
from ircr.io.atomic import atomic_write_bytes, atomic_write_text
from ircr.postproc.detections import PaintParams, keep_top, paint_detections
from ircr.ssl.count_threshold import THRESHOLD_GRID, count_match_threshold
from ircr.ssl.tta import Detector, TTAConfig, detect_tta

__all__ = ["PseudoLabels", "generate_pseudo_labels", "load_pseudo_labels", "LABELS_FILE",
           "THRESHOLD_FILE"]

LABELS_FILE = "pseudo_labels.npz"
THRESHOLD_FILE = "threshold.json"
_FORMAT = "ircr-pseudo-labels-v1"


@dataclass
class PseudoLabels:
    """Pseudo-labels of one run: ``labels`` (N, P, P) int32 per patch, their ``patches``,
    per-id ``scores`` (a list of (K_i,) arrays) and the chosen ``threshold``."""

    patches: list[Patch]
    labels: np.ndarray
    scores: list[np.ndarray]
    threshold: float
    info: dict[str, Any]


def generate_pseudo_labels(
    detect: Detector,
    patches: Sequence[Patch],
    read_patch: Callable[[Patch], np.ndarray],
    labelled_counts: Sequence[int],
    out_dir: str | Path,
    *,
    tta: TTAConfig | None = None,
    mask_threshold: float = 0.5,
    min_area: int = 1,
    fixed_threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    extra_info: dict[str, Any] | None = None,
) -> PseudoLabels:
    """Run stage 2 and write its files; returns the pseudo-labels.

    Args:
        detect: detector callable (see :mod:`ircr.ssl.tta`), model in eval mode.
        patches: the unlabelled patches, in the order they are stored.
        read_patch: patch -> (P, P, 3) uint8 image (all patches the same size).
        labelled_counts: number of ground-truth instances per labelled patch (n_L).
        out_dir: folder for ``pseudo_labels.npz`` and ``threshold.json`` (must exist).
        tta: test-time augmentation (default: none).
        mask_threshold: pixel threshold on the pasted mask probabilities (paper: 0.5).
        min_area: painted instances with fewer pixels are dropped.
        fixed_threshold: skip count matching and use this box-score threshold.
        progress: called as ``progress(done, total)`` after each patch.
        extra_info: more JSON-safe keys for ``threshold.json`` (e.g. a settings fingerprint).
    """
    if not patches:
        raise IrcrError("pseudo-labels: the split has no unlabelled patch")
    cfg = (tta or TTAConfig()).check("method.bass.tta")
    floor = float(THRESHOLD_GRID.min())
    if fixed_threshold is not None:
        if not 0.0 <= float(fixed_threshold) < 1.0:
            raise IrcrError(f"method.bass.pseudo_threshold: must be in [0, 1), got "
                            f"{fixed_threshold}")
        floor = min(floor, float(fixed_threshold))
    params = PaintParams(score_threshold=floor, mask_threshold=mask_threshold, dilate=0,
                         fragments="largest", min_area=min_area).check("method.bass")
    ranked: list[np.ndarray] = []
    painted_scores: list[np.ndarray] = []
    det_scores: list[np.ndarray] = []
    for i, p in enumerate(patches):
        image = read_patch(p)
        if ranked and image.shape[:2] != ranked[0].shape:
            raise IrcrError(f"pseudo-labels: patch {tuple(p)} is {image.shape[:2]}, "
                            f"others are {ranked[0].shape}")
        det = detect_tta(detect, image, cfg)
        painted = paint_detections(det["scores"], det["masks"], params, image.shape[:2])
        ranked.append(painted.inst.astype(np.uint16 if painted.inst.max(initial=0) < 65536
                                          else np.int32))
        painted_scores.append(painted.scores)
        det_scores.append(det["scores"])
        if progress is not None:
            progress(i + 1, len(patches))
    match = count_match_threshold(labelled_counts, det_scores)
    t = match.threshold if fixed_threshold is None else float(fixed_threshold)
    labels = np.stack([keep_top(r.astype(np.int32), s, t) for r, s in
                       zip(ranked, painted_scores, strict=True)])
    kept = [s[s > t] for s in painted_scores]
    info = {
        "format": _FORMAT,
        **match.to_json(),  # its "threshold" is the count-matching t*; the one used:
        "threshold": t,
        "threshold_source": "count matching" if fixed_threshold is None else "fixed",
        "count_matching_threshold": match.threshold,
        "n_patches": len(patches),
        "n_labelled_patches": len(labelled_counts),
        "instances_kept": int(sum(len(k) for k in kept)),
        "instances_per_patch_mean": float(np.mean([len(k) for k in kept])),
        "detections_per_patch_mean": float(np.mean([len(s) for s in det_scores])),
        "kept_per_patch": [len(k) for k in kept],
        "mask_threshold": float(mask_threshold),
        "min_area": int(min_area),
        "tta": asdict(cfg),
        "labels_file": LABELS_FILE,
        **(extra_info or {}),
    }
    out = Path(out_dir)
    _write(out, patches, labels, kept, t, info)
    return PseudoLabels(list(patches), labels, kept, t, info)


def _write(out: Path, patches: Sequence[Patch], labels: np.ndarray,
           scores: list[np.ndarray], t: float, info: dict[str, Any]) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in scores])]).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, format=np.array(_FORMAT), threshold=np.float64(t), labels=labels.astype(np.int32),
        patches=np.asarray([tuple(p) for p in patches], np.int64).reshape(-1, 5),
        scores=(np.concatenate(scores) if scores else np.zeros(0)).astype(np.float32),
        offsets=offsets,
    )
    atomic_write_bytes(out / LABELS_FILE, buf.getvalue())
    atomic_write_text(out / THRESHOLD_FILE, json.dumps(info, indent=1) + "\n")  # last


def load_pseudo_labels(out_dir: str | Path) -> PseudoLabels:
    """Read back what :func:`generate_pseudo_labels` wrote (one-line IrcrError when the
    files are missing, incomplete or not ours)."""
    out = Path(out_dir)
    js, npz = out / THRESHOLD_FILE, out / LABELS_FILE
    if not js.is_file() or not npz.is_file():
        raise IrcrError(f"{out}: no complete pseudo-labels ({THRESHOLD_FILE} and {LABELS_FILE})")
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as z:
            if str(z["format"]) != _FORMAT:
                raise IrcrError(f"{npz}: not an ircr pseudo-label file")
            labels, pt = z["labels"], z["patches"]
            flat, offsets, t = z["scores"], z["offsets"], float(z["threshold"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # a truncated or damaged file (BadZipFile, a bad CRC, a short stream): one line
        raise IrcrError(f"{npz}: unreadable pseudo-labels ({type(exc).__name__}: damaged or "
                        "truncated file)") from None
    n = len(pt)
    if labels.ndim != 3 or labels.shape[0] != n or offsets.shape != (n + 1,):
        raise IrcrError(f"{npz}: inconsistent pseudo-label arrays")
    scores = [flat[offsets[i]:offsets[i + 1]] for i in range(n)]
    return PseudoLabels([Patch(*map(int, row)) for row in pt], labels, scores, t, info)
