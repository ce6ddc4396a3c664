"""Segmentation engine: one trained model folder applied to tiles, folders and whole slides.

``load_model(folder)`` returns a :class:`NucleusSegmenter`. ``segment(image_or_path)`` runs
an in-memory image (or image file) and returns a :class:`~ircr.engine.result.SegmentResult`
(instance map and per-nucleus table); ``process(path, out_dir)`` writes the chosen outputs
(:mod:`ircr.engine.outputs`) for one input file, streaming whole-slide images
(:mod:`ircr.engine.slide`).

Both paths share the same engine: the image is brought to the model's training resolution
(``mpp`` in model.yaml; :mod:`ircr.engine.resolution`), cut into ``tile`` x ``tile`` cores
read with a ``margin`` of context, each read window goes through the model family
(:mod:`ircr.inference.family`: HoVer-Net = blended sliding-window maps + WBIS), and instances
are stitched with the responsible-tile rule of :mod:`ircr.engine.tiling`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ircr.compat import allow_huge_page_tensors, keep_freed_memory
from ircr.engine.inputs import MAX_INMEMORY_PIXELS, check_input_file, load_input, output_stem
from ircr.engine.measure import empty_table, nucleus_table
from ircr.engine.outputs import (
    OutputFormat,
    check_outputs,
    finished_summary,
    output_files,
    output_names,
)
from ircr.engine.packaged import resolve_model
from ircr.engine.plausibility import drop_oversized, max_object_px
from ircr.engine.provenance import versions
from ircr.engine.resolution import check_processing_size
from ircr.engine.result import SegmentResult
from ircr.engine.slide import run_slide
from ircr.engine.tiling import Tile, stitch_image
from ircr.engine.timer import Timer
from ircr.errors import IrcrError, file_error
from ircr.inference.device import describe_device, select_device
from ircr.inference.family import InferenceSetting, ModelFamily, Prediction, get_family
from ircr.inference.model_folder import load_model_folder, resolve_inference
from ircr.inference.scale import processing_size, rescale_factor, resize_image, resize_labels
from ircr.inference.tta import check_tta, tta_passes
from ircr.io.atomic import clean_stale_temps
from ircr.io.paths import ensure_dir
from ircr.io.wsi import check_mpp, is_slide
from ircr.ssl.prior import load_prior

DEFAULT_TILE = 1024
# largest fitted network window a slide tile gets by default: keeps the peak RSS of a
# 20,000 x 20,000 px slide region under 2 GB with the packaged model (issue 23; a 1088 px
# window per slide tile peaked at 2.7 GB)
SLIDE_WINDOW = 768
# compile="auto": a slide with at least this many megapixels of tissue tiles (cores, at the
# model's resolution) is segmented by the compiled network on CPU. Measured on the 2-core VM
# (docs/benchmarks.md): the compile costs ~47 s once per process and saves ~3.5 s/MP on
# slides (9.3 -> 5.8 s/MP), so it pays from ~13 MP; 64 MP (4 mm² of tissue at 0.25 µm/px)
# keeps a clear margin on slower machines.
AUTO_COMPILE_MP = 64.0
COMPILE_MODES = ("off", "on", "auto")


def compile_mode(value: bool | str) -> str:
    """``off`` / ``on`` / ``auto`` from a bool or one of those names."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in COMPILE_MODES:
        raise IrcrError(f"compile: expected one of {', '.join(COMPILE_MODES)} or a bool, "
                        f"got {value!r}")
    return value


def default_tile(window: int, overlap: int, margin: int, slide: bool = False) -> int:
    """Stitching tile core (px) when none is given.

    Images held in memory: ``DEFAULT_TILE`` (a 1000 px tile is one tile, and with a window
    of at least 1088 px one network pass). Slides, with a network window of at least
    ``DEFAULT_TILE`` px: the core whose read window (core + 2 margins) plus the window's
    context (``overlap``) is one fitted window of at most ``SLIDE_WINDOW`` px, so each slide
    tile is one network pass of bounded memory; otherwise ``DEFAULT_TILE``.
    """
    fit = (min(window, SLIDE_WINDOW) - overlap - 2 * margin) // 8 * 8
    return fit if slide and window >= DEFAULT_TILE and fit >= 256 else DEFAULT_TILE


class NucleusSegmenter:
    """A trained network plus everything needed to segment images with it.

    Args:
        model: a network of ``family`` (HoVer-Net: ``forward`` returns ``{"np", "hv"}``).
        postproc: the family's post-processing parameters (HoVer-Net:
            :class:`ircr.postproc.watershed.WBISParams`, a mapping of them, or None).
        model_mpp: microns per pixel the model was trained at (None: never rescale).
        device: "auto", "cpu", "cuda[:N]", "mps" or a torch.device.
        batch_size: network windows per forward pass; amp: mixed precision (True: bf16, fp16
            on CUDA without bf16; :func:`ircr.inference.device.amp_dtype`).
        window, overlap: network window and its overlap (sliding-window inference).
        tile, margin: core size and context margin of the stitching tiles, in pixels at the
            model's resolution; ``margin`` must exceed the largest nucleus (default 24 µm);
            ``tile`` None: :func:`default_tile` (1024 for images in memory; for slides with
            a large window, one bounded network window per tile: ``slide_tile``).
        prior: morphological prior for the ``prior_score`` column (None: NaN).
        name, meta: the model folder and its model.yaml facts (for summaries).
        workers: post-processing threads overlapping the network on whole slides.
        family: the model family (None = HoVer-Net).
        compile: run the network through ``torch.compile`` (one-line message and eager
            fallback when compiling fails): True/"on", False/"off", or "auto" (compiled on
            CPU for slides with at least ``AUTO_COMPILE_MP`` megapixels of tissue, eager for
            everything else; :meth:`for_slide`). The network runs in channels_last
            memory format on CUDA.
        tta: test-time augmentation of the network's maps (:mod:`ircr.inference.tta`):
            ``off`` (default), ``mirror`` (2 passes per window), ``flips`` (4) or ``d4`` (8);
            HoVer-Net only.
    """

    def __init__(self, model: nn.Module, postproc: Any, model_mpp: float | None = None,
                 device: str | torch.device | None = None, batch_size: int = 8,
                 amp: bool = False, window: int = 256, overlap: int = 64,
                 tile: int | None = None,
                 margin: int | None = None, prior: Any = None, name: str = "",
                 meta: dict[str, Any] | None = None, workers: int = 2,
                 family: ModelFamily | None = None, compile: bool | str = False,
                 tta: str = "off") -> None:
        if batch_size < 1:
            raise IrcrError(f"--batch-size: must be >= 1, got {batch_size}")
        self.family = family or get_family()
        self.tta = check_tta(tta, self.family.name, "--tta")
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.postproc = self.family.parse_postproc(postproc)
        self.model_mpp = model_mpp
        self.batch_size, self.amp = int(batch_size), bool(amp)
        self.window, self.overlap = int(window), int(overlap)
        self.compile_mode = compile_mode(compile)
        self.compile = self.compile_mode == "on"
        self.channels_last = self.device.type == "cuda"
        if margin is None:
            margin = int(math.ceil(24.0 / (model_mpp or 0.25) / 8.0) * 8)
        self.slide_tile = int(tile if tile is not None else
                              default_tile(self.window, self.overlap, int(margin), slide=True))
        if tile is None:
            tile = default_tile(self.window, self.overlap, int(margin))
        if min(tile, self.slide_tile) < 64 or margin < 0:
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
        tta = f"; TTA {self.tta} ({tta_passes(self.tta)} passes)" if self.tta != "off" else ""
        return (f"device {describe_device(self.device)}; window {self.window} / overlap "
                f"{self.overlap} px, batch size {self.batch_size}; AMP {amp}"
                f"{'; compiled' if self.compile else ''}"
                f"{'; compile auto' if self.compile_mode == 'auto' else ''}"
                f"{tta}; model at {mpp}; "
                f"tile {self.tile} (slides {self.slide_tile}) + margin {self.margin} px")

    # ---- the shared per-window engine --------------------------------------------------------
    def setting(self) -> InferenceSetting:
        """The sliding-window and compute setting of every network call."""
        return InferenceSetting(window=self.window, overlap=self.overlap,
                                batch_size=self.batch_size, device=self.device, amp=self.amp,
                                channels_last=self.channels_last, compile=self.compile,
                                tta=self.tta)

    def for_slide(self, megapixels: float) -> NucleusSegmenter:
        """The segmenter that runs a slide of ``megapixels`` of tissue tiles.

        ``compile`` ``auto``: a shallow copy, compiled on CPU when ``megapixels >=
        AUTO_COMPILE_MP``, eager otherwise (it shares the model and its compiled graphs);
        ``on`` / ``off``: this segmenter. ``self`` is never changed, so slides run by
        several threads of one process (a Dask worker) do not see each other's setting.
        """
        if self.compile_mode != "auto":
            return self
        view = copy.copy(self)
        view.compile = self.device.type == "cpu" and megapixels >= AUTO_COMPILE_MP
        return view

    def predict(self, image: np.ndarray) -> Prediction:
        """Network part for a (h, w, 3) uint8 window: ``prob`` (h, w) + family maps."""
        return self.family.predict(self.model, image, self.setting())

    def predict_later(self, image: np.ndarray) -> Callable[[], Prediction]:
        """:meth:`predict` queued on the device; the returned call waits for it (any thread)."""
        return self.family.predict_later(self.model, image, self.setting())

    def postprocess(self, pred: Prediction) -> np.ndarray:
        """Instance map (h, w) int32 of one window's prediction (thread-safe)."""
        return self.family.instances(pred, self.postproc)

    # ---- in-memory images ----------------------------------------------------------------------
    def segment(self, image_or_path: Any, mpp: float | None = None,
                force: bool = False) -> SegmentResult:
        """Segment one image.

        Args:
            image_or_path: (H, W, 3) uint8 RGB array, or an image file (PNG, JPEG, TIFF, or a
                whole-slide file small enough to hold in memory).
            mpp: microns per pixel of the input; overrides the file's. Without either, the
                model's resolution is assumed (with a warning).
            force: segment an input that does not look like brightfield H&E (channel planes,
                mostly dark; :mod:`ircr.engine.plausibility`) with a warning instead of an
                error. Objects far above nucleus size are dropped either way
                (``stats["dropped_oversized"]``).

        Returns:
            :class:`SegmentResult` at the input's resolution.
        """
        timer = Timer()
        with timer("read"):
            keep_freed_memory()  # in-memory images: freed window buffers reused, not re-faulted
            inp = load_input(image_or_path, mpp, self.model_mpp, force=force)
        image, in_mpp = inp.image, inp.mpp
        h, w = image.shape[:2]
        f = rescale_factor(in_mpp, self.model_mpp)
        proc_mpp = (in_mpp / f) if in_mpp else self.model_mpp
        ph, pw = processing_size(h, w, f)
        check_processing_size(inp.source, (w, h), (pw, ph), max(MAX_INMEMORY_PIXELS, h * w),
                              in_mpp, self.model_mpp)
        with timer("resize"):
            work = resize_image(image, ph, pw)
        prob_full = np.zeros((ph, pw), np.float32)
        max_px = max_object_px(proc_mpp)
        dropped = 0

        def run_window(t: Tile) -> np.ndarray:
            nonlocal dropped
            y0, x0, y1, x1 = t.read
            with timer("network"):
                pred = self.predict(np.ascontiguousarray(work[y0:y1, x0:x1]))
            cy0, cx0, cy1, cx1 = t.core
            prob_full[cy0:cy1, cx0:cx1] = pred.prob[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            with timer("postprocess"):
                local, n = drop_oversized(self.postprocess(pred), max_px,
                                          (cy0 - y0, cx0 - x0, cy1 - y0, cx1 - x0))
            dropped += n
            return local

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
        return SegmentResult(inst, table, prob, in_mpp, inp.mpp_source, proc_mpp,
                             timer.rounded(), {**stats.as_dict(), "dropped_oversized": dropped},
                             image)

    # ---- files -------------------------------------------------------------------------------
    def process(self, path: str | Path, out_dir: str | Path,
                outputs: Sequence[str] | None = None, mpp: float | None = None,
                stem: str | None = None, tissue: bool = True, progress: bool = False,
                log: Callable[[str], None] | None = None, overwrite: bool = False,
                skip_done: bool = False, force: bool = False,
                clean_temps: bool = True) -> dict[str, Any]:
        """Segment one file and write the selected ``outputs`` (default: all) into ``out_dir``.

        Whole-slide images (see :func:`ircr.io.wsi.is_slide`) are streamed; other images are
        segmented in memory. Returns the summary dict (also written as JSON when selected).

        Every output is written under a temporary name and renamed when complete; the summary
        comes last and marks the input done. Existing outputs are refused unless
        ``overwrite``; with ``skip_done`` a done input is skipped (the returned dict has
        ``skipped: True``) and an unfinished one is redone. ``force``: segment an input that
        does not look like brightfield H&E, with a warning (see :meth:`segment`).
        ``clean_temps=False`` leaves the temporary files of dead processes in ``out_dir`` (other
        machines may write there: their processes look dead from here). The summary's
        ``seconds``: this call's wall time.
        """
        t_start = time.perf_counter()
        path = Path(path)
        check_input_file(path)
        formats = check_outputs(list(output_names() if outputs is None else outputs))
        if mpp is not None:
            mpp = check_mpp(mpp)
        out = ensure_dir(out_dir)
        stem = stem or output_stem(path)
        files = output_files(out, stem, [f.name for f in formats])
        if clean_temps:
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
        for fmt in formats:  # not done until the summary is rewritten
            if fmt.write_summary is not None:
                files[fmt.name].unlink(missing_ok=True)
        if is_slide(path):
            run = run_slide(self, path, formats, files, mpp, tissue, progress, log, force)
            summary = self.summary_base(path, "slide", run.in_mpp, run.mpp_source,
                                        run.processing_mpp)
            summary.update(run.summary_fields())
            summary.update(outputs={k: str(v) for k, v in files.items()}, warnings=[])
        else:
            summary = self._write_tile_outputs(path, formats, files, mpp, force)
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        for fmt in formats:
            if fmt.write_summary is not None:
                fmt.write_summary(files[fmt.name], summary)
        return summary

    def _write_tile_outputs(self, path: Path, formats: Sequence[OutputFormat],
                            files: dict[str, Path], mpp: float | None,
                            force: bool = False) -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = self.segment(path, mpp=mpp, force=force)
        notes = [str(c.message) for c in caught]
        for note in notes:
            warnings.warn(note, stacklevel=2)
        t0 = time.perf_counter()
        for fmt in formats:
            if fmt.write_tile is not None:
                fmt.write_tile(files[fmt.name], res)
        timings = dict(res.timings, write=round(time.perf_counter() - t0, 3))
        h, w = res.inst.shape
        area_mm2 = h * w * res.mpp**2 / 1e6 if res.mpp else None
        summary = self.summary_base(path, "tile", res.mpp, res.mpp_source, res.processing_mpp)
        summary.update(
            image_size_px=[w, h], n_nuclei=len(res), n_nuclei_in_tissue=len(res),
            dropped_oversized=res.stats["dropped_oversized"], area_mm2=area_mm2,
            tissue_area_mm2=area_mm2,  # a tile is processed whole: no tissue mask
            nuclei_per_mm2=(len(res) / area_mm2) if area_mm2 else None,
            density_basis="all nuclei / image area (tiles are processed whole)",
            timings_s=timings,
            stitching={k: v for k, v in res.stats.items() if k != "dropped_oversized"},
            outputs={k: str(v) for k, v in files.items()}, warnings=notes,
        )
        return summary

    def summary_base(self, path: Path, kind: str, mpp: float | None, mpp_source: str,
                     processing_mpp: float | None) -> dict[str, Any]:
        """Fields common to tile and slide summaries (input, model, device, versions)."""
        return {
            "input": str(path), "kind": kind, "model": self.name, "model_meta": self.meta,
            "device": describe_device(self.device), "batch_size": self.batch_size,
            "amp": self.amp, "window": self.window, "overlap": self.overlap,
            "tile": self.slide_tile if kind == "slide" else self.tile, "margin": self.margin,
            "input_mpp": mpp, "mpp_source": mpp_source, "processing_mpp": processing_mpp,
            "versions": versions(),
        }


def load_model(path: str | Path | None = None, device: str | torch.device | None = None,
               batch_size: int | None = None, amp: bool = False, tile: int | None = None,
               margin: int | None = None, prior: str | Path | None = None,
               workers: int = 2, window: int | None = None,
               overlap: int | None = None, compile: bool | str = False,
               tta: str = "off") -> NucleusSegmenter:
    """Load a model folder (weights.pt, model.yaml, postproc.yaml[, prior.npz]).

    Args:
        path: the model folder, or the name of a packaged model (``"default"``; None = the
            default model shipped with the package, see ``ircr models list``).
        device: "auto" (default: CUDA, then MPS, then CPU), "cpu", "cuda[:N]" or "mps".
        batch_size, window, overlap: sliding-window inference; None = the folder's
            ``inference`` setting (the one ``ircr evaluate`` uses; see
            :mod:`ircr.inference.model_folder`).
        amp: mixed precision.
        tile, margin: stitching tile core and margin (pixels at the model's resolution;
            tile None: :func:`default_tile` of the window).
        prior: prior .npz for the ``prior_score`` column; default: the folder's prior.npz,
            else the package's default prior.
        workers: post-processing threads for whole slides.
        compile: ``torch.compile`` the network (eager fallback with a message on failure):
            True/"on", False/"off", or "auto" (slides with enough tissue, on CPU).
        tta: test-time augmentation: "off" (default), "mirror", "flips" or "d4"
            (:mod:`ircr.inference.tta`; HoVer-Net models; 2, 4 or 8 network passes per window).

    Raises:
        IrcrError: the folder or one of its files is missing or corrupt.

    In a process that has made no tensor yet (``ircr segment``, ``ircr evaluate``, a Dask
    worker, a script that starts with it) this also asks PyTorch for huge-page CPU tensors
    (:func:`ircr.compat.allow_huge_page_tensors`: slides 2-2.5x faster on CPU; training
    processes do not get it, their steps measured 0.8x with it).
    """
    allow_huge_page_tensors()  # read by PyTorch at its first CPU tensor: before the weights
    path = resolve_model(path)
    loaded = load_model_folder(path, device="cpu")
    setting = resolve_inference(loaded.inference, window, overlap, batch_size)
    params = loaded.postproc  # parsed once, by load_model_folder
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
    return NucleusSegmenter(
        loaded.model, params, model_mpp=loaded.mpp, device=device,
        batch_size=setting["batch_size"], amp=amp, window=setting["window"],
        overlap=setting["overlap"], tile=tile,
        margin=margin, prior=morph, name=str(path),
        meta={**{k: loaded.meta.get(k) for k in ("ircr_version", "created", "method", "mpp",
                                                 "patch_size") if k in loaded.meta},
              "inference": {**setting, "tta": tta}},
        workers=workers, family=loaded.family, compile=compile, tta=tta,
    )
