"""Tune the WBIS thresholds of a trained model on validation images (``ircr tune-postproc``).

Like StarDist's ``optimize_thresholds``: the network runs once per image (sliding window,
the model's inference setting), then WBIS runs for every point of a small grid over the
documented post-processing parameters (:class:`ircr.postproc.watershed.WBISParams`); the
point with the best mean metric (AJI by default) over the images wins. Ties keep the earlier
grid point, and the grid starts from the model's current values, so a tie never changes them.

The result is written into the model folder (``postproc.yaml`` replaced atomically, the whole
grid in ``tuning.json``) or, for packaged models and with ``out``, into a copy of the folder.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ircr.config import from_dict, short_repr
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.inference.scale import resize_labels
from ircr.metrics import aggregate, instance_metrics
from ircr.postproc.confidence import drop_unconfident
from ircr.postproc.watershed import WBISParams, wbis

# the default grid: foreground threshold, marker (energy) threshold, Sobel kernel size, the
# smallest kept object and the lowest kept mean object probability (0: off, HoVer-Net's);
# 3 x 4 x 3 x 2 = 72 WBIS runs per image, each filtered at the 5 min_prob values
DEFAULT_GRID: dict[str, tuple[float | int, ...]] = {
    "threshold": (0.4, 0.5, 0.6),
    "marker_threshold": (0.3, 0.4, 0.5, 0.6),
    "ksize": (15, 21, 25),
    "min_size": (10, 30),
    "min_prob": (0.0, 0.7, 0.75, 0.8, 0.85),
}
TUNABLE = ("threshold", "marker_threshold", "ksize", "min_size", "marker_min_size", "open_ksize",
           "min_prob")
FLOAT_KEYS = ("threshold", "marker_threshold", "min_prob")
TUNE_METRICS = ("aji", "pq", "f1", "dice", "aji_plus")
TUNING_JSON = "tuning.json"


@dataclass
class TuneResult:
    """Best WBIS parameters, their score, the score of the starting ones, and every row."""

    best: dict[str, Any]
    best_score: float
    start_score: float
    metric: str
    images: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    tta: str = "off"  # the test-time augmentation of the maps tuned on

    def summary(self) -> str:
        changed = ", ".join(f"{k}={v}" for k, v in self.best.items() if k in TUNABLE)
        return (f"best mean {self.metric} {self.best_score:.4f} (was {self.start_score:.4f}) "
                f"on {len(self.images)} image(s): {changed}")


def parse_grid(items: list[str] | None) -> dict[str, tuple[float | int, ...]]:
    """``["threshold=0.4,0.5", ...]`` -> grid (defaults for keys not given).

    Every value is checked as ``postproc.yaml`` checks it (finite, in range: thresholds in
    [0, 1], ksize an odd size in 1..31, ...), before anything runs.

    Raises:
        IrcrError: unknown key, malformed, empty or out-of-range list (names ``--grid``).
    """
    grid = dict(DEFAULT_GRID)
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in TUNABLE:
            raise IrcrError(f"--grid: expected KEY=v1,v2,... with KEY one of "
                            f"{', '.join(TUNABLE)}, got '{short_repr(item)}'")
        cast = float if key in FLOAT_KEYS else int
        try:
            parsed = tuple(cast(v) for v in values.split(",") if v.strip())
        except ValueError as exc:
            raise IrcrError(f"--grid: {key}: not a list of numbers: "
                            f"'{short_repr(values)}'") from exc
        if not parsed:
            raise IrcrError(f"--grid: {key}: no values")
        for v in parsed:
            try:
                from_dict(WBISParams, {key: v}, where="--grid").effective()
            except IrcrError as exc:
                given = values if len(values) <= 40 else values[:37] + "..."
                raise IrcrError(f"--grid {key}={given}: "
                                f"{str(exc).removeprefix('--grid: ')}") from None
        grid[key] = parsed
    return grid


def _grid_points(start: WBISParams, grid: dict[str, tuple[float | int, ...]]
                 ) -> list[WBISParams]:
    """Every grid point (current values first), each validated by WBISParams.effective;
    ``min_prob`` varies fastest (consecutive points share their WBIS run)."""
    keys = sorted(grid, key=lambda k: k == "min_prob")
    values = [sorted(set(grid[k]) | {getattr(start, k)}, key=lambda v, k=k: (  # type: ignore[misc]
        v != getattr(start, k), v)) for k in keys]
    points = []
    for combo in itertools.product(*values):
        p = WBISParams(**{**asdict(start), **dict(zip(keys, combo))})
        p.effective()
        points.append(p)
    return points


class _Scorer:
    """Mean ``metric`` of WBIS(params) over (prob, hv, gt); instances scored at gt's size.

    Points that differ only in ``min_prob`` share one WBIS run per image (the filter is the
    last step, :func:`ircr.postproc.confidence.drop_unconfident`), kept for the last point.
    """

    def __init__(self, maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str):
        self.maps, self.metric = maps, metric
        self._key: WBISParams | None = None
        self._base: list[np.ndarray] = []

    def __call__(self, params: WBISParams) -> float:
        key = replace(params, min_prob=0.0)
        if key != self._key:
            self._key, self._base = key, [wbis(prob, hv, key) for prob, hv, _ in self.maps]
        results = [instance_metrics(gt, resize_labels(drop_unconfident(inst, prob,
                                                                       params.min_prob),
                                                      *gt.shape))
                   for inst, (prob, _, gt) in zip(self._base, self.maps)]
        return float(aggregate(results, mode="mean")[self.metric])


def tune_postproc(maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]], start: WBISParams,
                  grid: dict[str, tuple[float | int, ...]] | None = None, metric: str = "aji",
                  images: list[str] | None = None) -> TuneResult:
    """Grid search over WBIS parameters on precomputed (prob, hv, gt) maps.

    prob/hv may be at the model's pixel size and gt at the image's own (see
    :func:`predict_for_tuning`): the instances are resized to gt before scoring.

    Raises:
        IrcrError: unknown metric or no images.
    """
    if metric not in TUNE_METRICS:
        raise IrcrError(f"--metric: must be one of {', '.join(TUNE_METRICS)}, got '{metric}'")
    if not maps:
        raise IrcrError("tune-postproc: no labelled images to tune on")
    rows: list[dict[str, Any]] = []
    best, best_score, start_score = start, -1.0, float("nan")
    score_of = _Scorer(maps, metric)
    for i, params in enumerate(_grid_points(start, grid or DEFAULT_GRID)):
        score = score_of(params)
        if i == 0:
            start_score = score
        rows.append({**{k: getattr(params, k) for k in TUNABLE}, metric: score})
        if score > best_score:
            best, best_score = params, score
    return TuneResult(asdict(best), best_score, start_score, metric, list(images or []), rows)


def predict_for_tuning(model_dir: str | Path, dataset: str | Path, split: str = "val",
                       device: str = "auto", progress: bool = False, tta: str = "off"
                       ) -> tuple[Any, list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                                  list[str]]:
    """Load a model folder and predict (prob, hv) once for each selected labelled image
    (``tta``: the maps averaged over mirrors, :mod:`ircr.inference.tta`)."""
    from ircr.compat import allow_huge_page_tensors
    from ircr.inference.device import select_device
    from ircr.inference.evaluate import EvalConfig, predict_whole, select_images
    from ircr.inference.model_folder import load_model_folder
    from ircr.inference.tta import check_tta

    allow_huge_page_tensors()  # inference: huge-page CPU tensors if no tensor exists yet
    dev = select_device(device)
    loaded = load_model_folder(model_dir, device=dev)
    if loaded.family.name != "hovernet":
        raise IrcrError(f"{model_dir}: tune-postproc tunes the WBIS thresholds of HoVer-Net "
                        f"models; this is a '{loaded.family.name}' model")
    check_tta(tta, loaded.family.name, "--tta")
    ds = PreparedDataset(dataset)
    names, _ = select_images(ds, split, loaded.meta)
    inference = loaded.meta.get("inference")
    inference = inference if isinstance(inference, dict) else {}
    cfg = from_dict(EvalConfig, {**{k: v for k, v in inference.items()
                                    if k in ("window", "overlap", "batch_size")}, "tta": tta},
                    where=str(Path(model_dir) / "model.yaml"), prefix="inference.")
    maps = []
    for name in names:
        idx = ds.index_of(name)
        if not ds.images[idx].get("labelled"):
            raise IrcrError(f"{ds.path}: image '{name}' has no labels; cannot tune on it")
        prob, hv = predict_whole(loaded.model, ds, name, cfg, dev, model_mpp=loaded.mpp)
        maps.append((prob, hv, np.asarray(ds.load_inst(idx))))
        if progress:
            print(f"tune-postproc: predicted {name}", flush=True)
    return loaded, maps, names


def write_tuned(model_dir: str | Path, result: TuneResult, out: str | Path | None = None,
                dataset: str = "") -> Path:
    """Write the best parameters into ``model_dir`` (or a copy at ``out``); returns the folder.

    A copy is made under a temporary name next to ``out`` and renamed once, so ``out`` is
    either the complete tuned folder or absent (leftovers of a killed run are removed on
    the next one). In place, ``tuning.json`` is removed before ``postproc.yaml`` is replaced
    and written after it: whenever it exists it describes ``postproc.yaml``.

    Raises:
        IrcrError: the target is a packaged (read-only) model and no ``out`` was given,
            ``out`` already exists, or a write fails (disk full, ...; names the target).
    """
    from ircr.engine.packaged import is_packaged_folder

    doc = {"metric": result.metric, "best_score": result.best_score,
           "start_score": result.start_score, "images": result.images, "dataset": dataset,
           "tta": result.tta, "best": result.best, "grid": result.rows}
    if out is not None:
        return _write_copy(Path(model_dir), Path(out), result.best, doc)
    if is_packaged_folder(model_dir):
        raise IrcrError(f"{model_dir}: a packaged model is not changed in place; "
                        "pass --out DIR to write a tuned copy")
    _write_in_place(Path(model_dir), result.best, doc)
    return Path(model_dir)


def _write_in_place(folder: Path, best: dict[str, Any], doc: dict[str, Any]) -> None:
    """Replace postproc.yaml and tuning.json so that tuning.json never disagrees with it."""
    from ircr.inference.model_folder import write_postproc
    from ircr.io.atomic import atomic_write_text, clean_stale_temps, write_error

    clean_stale_temps(folder)
    try:
        (folder / TUNING_JSON).unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(folder / TUNING_JSON, exc, "cannot replace") from None
    write_postproc(folder, best)
    atomic_write_text(folder / TUNING_JSON, json.dumps(doc, indent=2) + "\n")


def _write_copy(model_dir: Path, target: Path, best: dict[str, Any],
                doc: dict[str, Any]) -> Path:
    """Copy ``model_dir`` to a temporary folder, tune it there, rename it to ``target``."""
    from ircr.inference.model_folder import write_postproc
    from ircr.io.atomic import TMP_MARK, atomic_write_text, clean_stale_temp_dirs, temp_path

    clean_stale_temp_dirs(target)
    if target.exists() or target.is_symlink():
        raise IrcrError(f"{target}: already exists; choose a new --out folder")
    tmp = temp_path(target)
    try:
        shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns(f"*{TMP_MARK}*"))
        write_postproc(tmp, best)
        atomic_write_text(tmp / TUNING_JSON, json.dumps(doc, indent=2) + "\n")
        os.rename(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, IrcrError)):
            raise IrcrError(f"{target}: cannot write the tuned copy "
                            f"({_reason(exc, tmp, target)})") from None
        raise
    return target


def _reason(exc: BaseException, tmp: Path, target: Path) -> str:
    """The cause of a failed copy in a few words (shutil.Error lists one per file)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        first = exc.args[0][0] if exc.args[0] else ("", "", "copy failed")
        why = str(first[-1])
        m = re.match(r"\[Errno \d+\] ([^:]+)", why)
        return m.group(1) if m else short_repr(why)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc).replace(str(tmp), str(target))
