"""Segmentation engine: one trained model folder applied to tiles, folders and whole slides.

``load_model(folder)`` returns a :class:`NucleusSegmenter`. ``segment(image_or_path)`` runs
an in-memory image (or image file) and returns a :class:`SegmentResult` (instance map and
per-nucleus table); ``process(path, out_dir)`` writes the chosen outputs for one input file,
streaming whole-slide images (:mod:`ircr.engine.slide`-style pipeline in :meth:`_run_slide`).

Both paths share the same engine: the image is brought to the model's training resolution
(``mpp`` in model.yaml), cut into ``tile`` x ``tile`` cores read with a ``margin`` of context,
each read window goes through :func:`ircr.inference.predict.predict_maps` and WBIS, and instances
are stitched with the responsible-tile rule of :mod:`ircr.engine.tiling`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ircr.config import from_dict
from ircr.engine.tiling import Tile, stitch_image
from ircr.errors import IrcrError, file_error
from ircr.features import nucleus_features
from ircr.inference.device import describe_device, select_device
from ircr.io.atomic import clean_stale_temps
from ircr.io.paths import child_path, ensure_dir
from ircr.io.writers import TABLE_COLUMNS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
OUTPUTS = ("labels", "geojson", "csv", "overlay", "summary")
MPP_TOLERANCE = 0.05  # input/model pixel sizes within 5 % are not rescaled
MAX_INMEMORY_PIXELS = 64_000_000  # segment() reads a slide whole only below this size


@dataclass
class SegmentResult:
    """Result of :meth:`NucleusSegmenter.segment` for one image.

    Attributes:
        inst: (H, W) int32 instance map at the input image's resolution, ids 1..K.
        table: per-nucleus columns :data:`ircr.io.writers.TABLE_COLUMNS`, each (K,) array,
            row i describing instance ``table["id"][i]``.
        prob: (H, W) float32 NP foreground probability.
        mpp: microns per pixel of the input (None if unknown); mpp_source: "file", "--mpp",
            "argument" or "assumed" (the model's); processing_mpp: resolution the network ran at.
        timings: seconds per stage; stats: stitching counters; image: the (H, W, 3) input.
    """

    inst: np.ndarray
    table: dict[str, np.ndarray]
    prob: np.ndarray
    mpp: float | None
    mpp_source: str
    processing_mpp: float | None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    image: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.table["id"]))

    def __repr__(self) -> str:
        h, w = self.inst.shape
        mpp = f"{self.mpp:g} µm/px ({self.mpp_source})" if self.mpp else "unknown mpp"
        total = sum(self.timings.values())
        return (f"SegmentResult({len(self)} nuclei, {w}x{h} px, {mpp}, "
                f"{total:.1f} s; fields inst, table, prob, image, timings, stats)")


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

    def rounded(self) -> dict[str, float]:
        """Totals rounded to milliseconds."""
        return {k: round(v, 3) for k, v in self.totals.items()}


def rescale_factor(input_mpp: float | None, model_mpp: float | None) -> float:
    """Processing pixels per input pixel (1.0 when either is unknown or within 5 %)."""
    if not input_mpp or not model_mpp:
        return 1.0
    f = input_mpp / model_mpp
    return 1.0 if abs(f - 1.0) <= MPP_TOLERANCE else f


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 with area averaging when shrinking, bilinear when enlarging."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(inst: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to (height, width) (pixel centres)."""
    if inst.shape == (height, width):
        return inst
    ys = np.minimum(((np.arange(height) + 0.5) * inst.shape[0] / height).astype(np.int64),
                    inst.shape[0] - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * inst.shape[1] / width).astype(np.int64),
                    inst.shape[1] - 1)
    return np.ascontiguousarray(inst[ys[:, None], xs[None, :]])


def nucleus_table(
    image: np.ndarray,
    labels: np.ndarray,
    prob: np.ndarray,
    um_per_px: float | None,
    prior: Any = None,
    coord_scale: float = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    prior_area_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per-nucleus table (:data:`TABLE_COLUMNS`) of an instance map.

    Args:
        image: (h, w, 3) uint8 RGB; labels: (h, w) int instance map; prob: (h, w) float32.
        um_per_px: microns per pixel of ``labels`` (None: µm columns are NaN).
        prior: a :class:`ircr.ssl.prior.MorphPrior` or None (prior_score NaN).
        coord_scale: output pixels per ``labels`` pixel (slides: level-0 px per processing px).
        offset_xy: position of ``labels``' top-left corner in ``labels`` pixels of the output
            frame (before ``coord_scale``).
        prior_area_scale: factor turning ``labels`` pixel areas into the prior's pixel areas.
    """
    f = nucleus_features(image, labels)
    ids = f["id"]
    n = len(ids)
    s = float(coord_scale)
    ox, oy = offset_xy
    um = float(um_per_px) if um_per_px else math.nan
    bbox = np.asarray(f["bbox"], dtype=np.float64).reshape(n, 4)
    sums = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64),
                       minlength=int(ids.max()) + 1 if n else 1)
    if prior is not None and n:
        pf = dict(f)
        pf["area"] = f["area"] * prior_area_scale
        prior_score = prior.score_features(pf)
    else:
        prior_score = np.full(n, math.nan)
    cx = (f["centroid_x"] + ox + 0.5) * s - 0.5
    cy = (f["centroid_y"] + oy + 0.5) * s - 0.5
    return {
        "id": ids.astype(np.int64),
        "centroid_x_px": cx, "centroid_y_px": cy,
        "centroid_x_um": (f["centroid_x"] + ox + 0.5) * um,
        "centroid_y_um": (f["centroid_y"] + oy + 0.5) * um,
        "bbox_x0_px": np.floor((bbox[:, 1] + ox) * s).astype(np.int64),
        "bbox_y0_px": np.floor((bbox[:, 0] + oy) * s).astype(np.int64),
        "bbox_x1_px": np.ceil((bbox[:, 3] + ox) * s).astype(np.int64),
        "bbox_y1_px": np.ceil((bbox[:, 2] + oy) * s).astype(np.int64),
        "area_px": f["area"] * s * s if s != 1.0 else f["area"].astype(np.int64),
        "area_um2": f["area"] * um * um,
        "perimeter_px": f["perimeter"] * s, "perimeter_um": f["perimeter"] * um,
        "solidity": f["solidity"], "circularity": f["circularity"],
        "eccentricity": f["eccentricity"], "haematoxylin": f["haematoxylin"],
        "prior_score": np.asarray(prior_score, dtype=np.float64),
        "np_prob_mean": sums[ids] / np.maximum(f["area"], 1),
    }


def empty_table() -> dict[str, np.ndarray]:
    """A table with zero rows."""
    return {c: np.zeros(0) for c in TABLE_COLUMNS}


class NucleusSegmenter:
    """A trained network plus everything needed to segment images with it.

    Args:
        model: HoVer-Net-like module (``forward`` returns ``{"np", "hv"}``).
        postproc: WBIS parameters (:class:`ircr.postproc.watershed.WBISParams`).
        model_mpp: microns per pixel the model was trained at (None: never rescale).
        device: "auto", "cpu", "cuda[:N]", "mps" or a torch.device.
        batch_size: network windows per forward pass; amp: mixed precision.
        window, overlap: network window and its overlap (:func:`predict_maps`).
        tile, margin: core size and context margin of the stitching tiles, in pixels at the
            model's resolution; ``margin`` must exceed the largest nucleus (default 24 µm).
        prior: morphological prior for the ``prior_score`` column (None: NaN).
        name, meta: the model folder and its model.yaml facts (for summaries).
        workers: WBIS threads overlapping the network on whole slides.
    """

    def __init__(self, model: nn.Module, postproc: Any, model_mpp: float | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8,
                 amp: bool = False, window: int = 256, overlap: int = 64, tile: int = 1024,
                 margin: int | None = None, prior: Any = None, name: str = "",
                 meta: dict[str, Any] | None = None, workers: int = 2) -> None:
        if batch_size < 1:
            raise IrcrError(f"--batch-size: must be >= 1, got {batch_size}")
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.postproc = postproc
        self.model_mpp = model_mpp
        self.batch_size, self.amp = int(batch_size), bool(amp)
        self.window, self.overlap = int(window), int(overlap)
        if margin is None:
            margin = int(math.ceil(24.0 / (model_mpp or 0.25) / 8.0) * 8)
        if tile < 64 or margin < 0:
            raise IrcrError(f"--tile/--margin: tile must be >= 64 and margin >= 0 "
                            f"(got {tile}, {margin})")
        self.tile, self.margin = int(tile), int(margin)
        self.prior = prior
        self.workers = max(1, int(workers))
        self.name = name
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return f"NucleusSegmenter({self.name or 'model'}: {self.describe()})"

    def describe(self) -> str:
        """One line for the log: device, batch size, AMP, resolution, tiling."""
        amp = "on" if self.amp else "off"
        mpp = f"{self.model_mpp:g} µm/px" if self.model_mpp else "unknown mpp"
        return (f"device {describe_device(self.device)}; window {self.window} / overlap "
                f"{self.overlap} px, batch size {self.batch_size}; AMP {amp}; model at {mpp}; "
                f"tile {self.tile} + margin {self.margin} px")

    # ---- the shared per-window engine --------------------------------------------------------
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NP probability (h, w) and HV (2, h, w) of a (h, w, 3) uint8 window."""
        from ircr.inference.predict import predict_maps

        return predict_maps(self.model, image, window=self.window, overlap=self.overlap,
                            batch_size=self.batch_size, device=self.device, amp=self.amp)

    def postprocess(self, prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
        """WBIS instance map (h, w) int32 of one window's maps."""
        from ircr.postproc.watershed import wbis

        return wbis(prob, hv, self.postproc)

    # ---- in-memory images ----------------------------------------------------------------------
    def _resolve_mpp(self, source: str, file_mpp: float | None, mpp: float | None,
                     slide: bool = False, array: bool = False) -> tuple[float | None, str]:
        if mpp is not None:
            from ircr.io.wsi import check_mpp

            return check_mpp(mpp, "mpp" if array else "--mpp (mpp= in Python)"), "--mpp"
        if file_mpp is not None:
            return file_mpp, "file"
        if self.model_mpp is None:
            return None, "unknown"
        if slide:
            raise IrcrError(f"{source}: no microns-per-pixel in the slide metadata; pass --mpp "
                            f"(mpp= in Python; the model expects {self.model_mpp:g} µm/px)")
        if array:
            warnings.warn(f"image array: no pixel size given; assuming the model's "
                          f"{self.model_mpp:g} µm/px (pass segment(image, mpp=...) to set it)",
                          stacklevel=4)
        else:
            warnings.warn(f"{source}: no microns-per-pixel in the file; assuming the model's "
                          f"{self.model_mpp:g} µm/px (set it with --mpp, or mpp= in Python)",
                          stacklevel=4)
        return self.model_mpp, "assumed"

    def _load_input(self, image_or_path: Any, mpp: float | None
                    ) -> tuple[np.ndarray, float | None, str, str]:
        from ircr.io.image import read_image
        from ircr.io.wsi import image_mpp, is_slide

        if isinstance(image_or_path, np.ndarray):
            img = image_or_path
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise IrcrError(f"image: expected (H, W, 3) uint8 RGB, got {img.dtype} array "
                                f"of shape {img.shape}")
            m, src = self._resolve_mpp("image", None, mpp, array=True)
            return img, m, ("argument" if mpp is not None else src), "image"
        path = Path(image_or_path)
        check_input_file(path)
        if is_slide(path):
            return self._read_small_slide(path, mpp)
        img = read_image(path)
        m, src = self._resolve_mpp(str(path), image_mpp(path), mpp)
        return img, m, src, str(path)

    def _read_small_slide(self, path: Path, mpp: float | None
                          ) -> tuple[np.ndarray, float | None, str, str]:
        from ircr.io.wsi import open_slide

        with open_slide(path, mpp=mpp) as slide:
            w, h = slide.dimensions
            if w * h > MAX_INMEMORY_PIXELS:
                raise file_error(path, f"whole-slide image of {w}x{h} px is too large to "
                                       "segment in memory; use process()/`ircr segment`")
            m, src = self._resolve_mpp(str(path), slide.mpp, mpp, slide=True)
            return slide.read_region(0, 0, 0, w, h), m, src, str(path)

    def segment(self, image_or_path: Any, mpp: float | None = None) -> SegmentResult:
        """Segment one image.

        Args:
            image_or_path: (H, W, 3) uint8 RGB array, or an image file (PNG, JPEG, TIFF, or a
                whole-slide file small enough to hold in memory).
            mpp: microns per pixel of the input; overrides the file's. Without either, the
                model's resolution is assumed (with a warning).

        Returns:
            :class:`SegmentResult` at the input's resolution.
        """
        timer = Timer()
        with timer("read"):
            image, in_mpp, mpp_src, source = self._load_input(image_or_path, mpp)
        h, w = image.shape[:2]
        f = rescale_factor(in_mpp, self.model_mpp)
        proc_mpp = (in_mpp / f) if in_mpp else self.model_mpp
        ph, pw = max(1, round(h * f)), max(1, round(w * f))
        check_processing_size(source, (w, h), (pw, ph), max(MAX_INMEMORY_PIXELS, h * w),
                              in_mpp, self.model_mpp)
        with timer("resize"):
            work = resize_image(image, ph, pw)
        prob_full = np.zeros((ph, pw), np.float32)

        def run_window(t: Tile) -> np.ndarray:
            y0, x0, y1, x1 = t.read
            with timer("network"):
                prob, hv = self.predict(np.ascontiguousarray(work[y0:y1, x0:x1]))
            cy0, cx0, cy1, cx1 = t.core
            prob_full[cy0:cy1, cx0:cx1] = prob[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            with timer("postprocess"):
                return self.postprocess(prob, hv)

        t0 = time.perf_counter()
        inst, stats = stitch_image(ph, pw, run_window, self.tile, self.margin)
        timer.totals["stitch"] = (time.perf_counter() - t0 - timer.totals.get("network", 0.0)
                                  - timer.totals.get("postprocess", 0.0))
        with timer("resize"):
            inst = resize_labels(inst, h, w)
            prob = prob_full if (ph, pw) == (h, w) else cv2.resize(
                prob_full, (w, h), interpolation=cv2.INTER_LINEAR)
        with timer("measure"):
            table = nucleus_table(image, inst, prob, in_mpp, self.prior,
                                  prior_area_scale=f * f) if inst.any() else empty_table()
        return SegmentResult(inst, table, prob, in_mpp, mpp_src, proc_mpp, timer.rounded(),
                             stats.as_dict(), image)

    # ---- files -------------------------------------------------------------------------------
    def process(self, path: str | Path, out_dir: str | Path, outputs: Sequence[str] = OUTPUTS,
                mpp: float | None = None, stem: str | None = None, tissue: bool = True,
                progress: bool = False, log: Callable[[str], None] | None = None,
                overwrite: bool = False, skip_done: bool = False) -> dict[str, Any]:
        """Segment one file and write the selected ``outputs`` into ``out_dir``.

        Whole-slide images (see :func:`ircr.io.wsi.is_slide`) are streamed; other images are
        segmented in memory. Returns the summary dict (also written as JSON when selected).

        Every output is written under a temporary name and renamed when complete; the summary
        comes last and marks the input done. Existing outputs are refused unless
        ``overwrite``; with ``skip_done`` a done input is skipped (the returned dict has
        ``skipped: True``) and an unfinished one is redone.
        """
        from ircr.engine.slide import run_slide
        from ircr.io.wsi import check_mpp, is_slide

        path = Path(path)
        check_input_file(path)
        bad = sorted(set(outputs) - set(OUTPUTS))
        if bad:
            raise IrcrError(f"--outputs: unknown output '{bad[0]}' "
                            f"(choose from {', '.join(OUTPUTS)})")
        if mpp is not None:
            mpp = check_mpp(mpp)
        out = ensure_dir(out_dir)
        stem = stem or output_stem(path)
        files = output_files(out, stem, outputs)
        clean_stale_temps(out)
        if skip_done:
            done = finished_summary(files)
            if done is not None:
                return {**done, "skipped": True}
        elif not overwrite:
            for f in files.values():
                if f.exists():
                    raise file_error(f, "output exists (pass --overwrite to replace it or "
                                        "--skip-done to skip finished inputs)")
        files.get("summary", out / ".none").unlink(missing_ok=True)  # not done until rewritten
        if is_slide(path):
            return run_slide(self, path, out, stem, outputs, mpp, tissue, progress, log)
        return self._write_tile_outputs(path, out, stem, outputs, mpp)

    def _write_tile_outputs(self, path: Path, out: Path, stem: str, outputs: Sequence[str],
                            mpp: float | None) -> dict[str, Any]:
        from ircr.io import writers as wr

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = self.segment(path, mpp=mpp)
        notes = [str(c.message) for c in caught]
        for note in notes:
            warnings.warn(note, stacklevel=2)
        t0 = time.perf_counter()
        files: dict[str, str] = {}
        if "labels" in outputs:
            files["labels"] = str(out / f"{stem}_labels.tif")
            wr.write_label_tiff(files["labels"], res.inst, res.mpp)
        if "geojson" in outputs:
            files["geojson"] = str(out / f"{stem}.geojson")
            with wr.GeoJSONWriter(files["geojson"]) as gj:
                gj.add(geojson_features(res.inst, res.table))
        if "csv" in outputs:
            files["csv"] = str(out / f"{stem}.csv")
            with wr.CSVWriter(files["csv"]) as cw:
                cw.add(res.table)
        if "overlay" in outputs:
            files["overlay"] = str(out / f"{stem}_overlay.png")
            image = res.image if res.image is not None else np.zeros((*res.inst.shape, 3), np.uint8)
            wr.write_png(files["overlay"], wr.overlay_image(image, res.inst))
        timings = dict(res.timings, write=round(time.perf_counter() - t0, 3))
        h, w = res.inst.shape
        area_mm2 = h * w * res.mpp**2 / 1e6 if res.mpp else None
        summary = self.summary_base(path, "tile", res.mpp, res.mpp_source, res.processing_mpp)
        summary.update(
            image_size_px=[w, h], n_nuclei=len(res), area_mm2=area_mm2,
            nuclei_per_mm2=(len(res) / area_mm2) if area_mm2 else None,
            timings_s=timings, stitching=res.stats, outputs=files, warnings=notes,
        )
        if "summary" in outputs:
            files["summary"] = str(out / f"{stem}_summary.json")
            wr.write_summary_json(files["summary"], summary)
        return summary

    def summary_base(self, path: Path, kind: str, mpp: float | None, mpp_source: str,
                     processing_mpp: float | None) -> dict[str, Any]:
        """Fields common to tile and slide summaries (input, model, device, versions)."""
        return {
            "input": str(path), "kind": kind, "model": self.name, "model_meta": self.meta,
            "device": describe_device(self.device), "batch_size": self.batch_size,
            "amp": self.amp, "window": self.window, "overlap": self.overlap,
            "tile": self.tile, "margin": self.margin,
            "input_mpp": mpp, "mpp_source": mpp_source, "processing_mpp": processing_mpp,
            "versions": versions(),
        }


def geojson_features(inst: np.ndarray, table: dict[str, np.ndarray],
                     offset_xy: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                     id_offset: int = 0) -> list[dict[str, Any]]:
    """QuPath detection features of the instances in ``table`` (outlined from ``inst``).

    Shapes are exact pixel-edge outlines (``Polygon``, or ``MultiPolygon`` for a nucleus whose
    parts touch only at a corner; :mod:`ircr.io.outlines`); vertices are
    ``(x + offset_x) * scale`` in the output frame; the "Nucleus id"
    measurement is ``id + id_offset`` (the id in the label image and CSV).
    """
    from ircr.io.outlines import transform_outline
    from ircr.io.writers import MEASUREMENTS, detection_feature, instance_outlines

    ids = np.asarray(table["id"], dtype=np.int64)
    outlines = instance_outlines(inst, ids)
    cols = {name: np.asarray(table[col], dtype=np.float64) for col, name in MEASUREMENTS.items()}
    feats = []
    for i, k in enumerate(ids):
        shape = transform_outline(outlines[int(k)], offset_xy, scale)
        meas = {name: v[i] for name, v in cols.items()}
        meas["Nucleus id"] = float(k + id_offset)
        feats.append(detection_feature(shape, meas))
    return feats


def versions() -> dict[str, str]:
    """Versions of ircr, Python and the libraries that shape the results."""
    import platform
    from importlib import metadata

    from ircr._version import __version__

    out = {"ircr": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "scipy", "scikit-image", "opencv-python-headless",
                 "tifffile", "tiffslide", "openslide-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def output_files(out: Path, stem: str, outputs: Sequence[str]) -> dict[str, Path]:
    """Final path of each selected output of input ``stem`` (checked to stay in ``out``)."""
    names = {"labels": f"{stem}_labels.tif", "geojson": f"{stem}.geojson",
             "csv": f"{stem}.csv", "overlay": f"{stem}_overlay.png",
             "summary": f"{stem}_summary.json"}
    return {k: child_path(out, names[k]) for k in OUTPUTS if k in outputs}


def finished_summary(files: dict[str, Path]) -> dict[str, Any] | None:
    """The summary of a finished earlier run with these outputs, or None when not done.

    Done means: every selected output exists (each is renamed into place only when complete)
    and, when a summary is selected, it is readable JSON (it is written last).
    """
    import json

    if not files or not all(f.is_file() for f in files.values()):
        return None
    if "summary" not in files:
        return {"n_nuclei": None, "outputs": {k: str(v) for k, v in files.items()}}
    try:
        doc = json.loads(files["summary"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def check_processing_size(source: str, size: tuple[int, int], proc: tuple[int, int],
                          limit: int, mpp: float | None, model_mpp: float | None) -> None:
    """Refuse (before allocating) an input that rescaling would blow up beyond ``limit`` px."""
    if proc[0] * proc[1] <= limit:
        return
    raise IrcrError(
        f"{source}: at {mpp:g} µm/px the {size[0]}x{size[1]} px input would be enlarged to "
        f"{proc[0]}x{proc[1]} px for the model's {model_mpp:g} µm/px "
        f"({proc[0] * proc[1] / 1e6:.0f} Mpx, limit {limit / 1e6:.0f} Mpx); check --mpp")


def output_stem(path: Path) -> str:
    """File name without its extension(s) (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_input_file(path: Path) -> None:
    """One-line errors for a missing, empty or unsupported input file."""
    from ircr.io.wsi import SLIDE_SUFFIXES, TIFF_SUFFIXES

    if not path.exists():
        raise file_error(path, "file not found")
    if path.is_dir():
        raise file_error(path, "is a folder (pass the folder to `ircr segment` or use files)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES | SLIDE_SUFFIXES | TIFF_SUFFIXES:
        raise file_error(path, f"unsupported file type '{suffix or path.name}' (expected PNG, "
                               "JPEG, TIFF/OME-TIFF, SVS, NDPI or another whole-slide format)")
    if path.stat().st_size == 0:
        raise file_error(path, "file is empty (0 bytes)")


def load_model(path: str | Path | None = None, device: str | torch.device | None = None,
               batch_size: int | None = None, amp: bool = False, tile: int = 1024,
               margin: int | None = None, prior: str | Path | None = None,
               workers: int = 2, window: int | None = None,
               overlap: int | None = None) -> NucleusSegmenter:
    """Load a model folder (weights.pt, model.yaml, postproc.yaml[, prior.npz]).

    Args:
        path: the model folder, or the name of a packaged model (``"default"``; None = the
            default model shipped with the package, see ``ircr models list``).
        device: "auto" (default: CUDA, then MPS, then CPU), "cpu", "cuda[:N]" or "mps".
        batch_size, window, overlap: sliding-window inference; None = the folder's
            ``inference`` setting (the one ``ircr evaluate`` uses; see
            :mod:`ircr.inference.model_folder`).
        amp: mixed precision.
        tile, margin: stitching tile core and margin (pixels at the model's resolution).
        prior: prior .npz for the ``prior_score`` column; default: the folder's prior.npz,
            else the package's default prior.
        workers: post-processing threads for whole slides.

    Raises:
        IrcrError: the folder or one of its files is missing or corrupt.
    """
    from ircr.engine.packaged import resolve_model
    from ircr.inference.model_folder import POSTPROC_YAML, load_model_folder, resolve_inference
    from ircr.postproc.watershed import WBISParams
    from ircr.ssl.prior import load_prior

    path = resolve_model(path)
    loaded = load_model_folder(path, device="cpu")
    setting = resolve_inference(loaded.inference, window, overlap, batch_size)
    params = from_dict(WBISParams, loaded.postproc, where=str(Path(path) / POSTPROC_YAML))
    prior_path = prior if prior is not None else loaded.prior_file
    try:
        morph = load_prior(prior_path)
    except IrcrError as exc:
        if prior is not None:
            raise
        if prior_path is not None:  # the folder's prior.npz: never silently ignored
            raise IrcrError(f"{exc} (pass --prior to use another prior)") from None
        warnings.warn(f"packaged prior unusable, prior_score will be empty: {exc}", stacklevel=2)
        morph = None
    seg = NucleusSegmenter(
        loaded.model, params, model_mpp=loaded.mpp, device=device,
        batch_size=setting["batch_size"], amp=amp, window=setting["window"],
        overlap=setting["overlap"], tile=tile,
        margin=margin, prior=morph, name=str(path),
        meta={**{k: loaded.meta.get(k) for k in ("ircr_version", "created", "method", "mpp",
                                                 "patch_size") if k in loaded.meta},
              "inference": setting},
        workers=workers,
    )
    return seg
