"""Evaluate a model on whole images of a prepared dataset (paper §4.1.2 protocol).

Per image: sliding-window inference over the whole image (``predict_maps``, windows blended),
WBIS once on the whole image, then AJI, Dice, F1_obj, PQ (DQ, SQ) and AJI+ against the ground
truth (whole images are not padded, so every pixel counts). The summary is the mean over
images. The same code validates during training (``val_<model>_<metric>`` in metrics.csv).
An image whose pixel size (dataset.json ``mpp``) differs from the model's is resized to the
model's for the network and WBIS and its instances brought back, as ``ircr segment`` does, so
mixed-magnification datasets (CPM-15: 20x and 40x) are scored at each image's own resolution.

``ircr evaluate MODEL DATASET --split val|test|all|NAME``:

* ``val``: the validation images of the split the model was trained with (recorded in the
  model folder) or, failing that, of the dataset's only split file;
* ``NAME`` (a split name or split file): that split's validation images;
* ``all``: every labelled image of the dataset (e.g. a test set prepared on its own);
* ``test``: the images whose metadata says ``split: test`` (readers of datasets with an
  official test set); failing that, the test images held out by the split the model was
  trained with (``--test-fraction``, e.g. BASS's 6:2:2) or by the dataset's only split with
  a test set; an error when there are none.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ircr.config import bounded, to_dict
from ircr.data.splits import Patch
from ircr.data.store import PreparedDataset
from ircr.errors import IrcrError
from ircr.inference.device import AmpSetting
from ircr.inference.family import InferenceSetting, ModelFamily, get_family
from ircr.inference.predict import MAX_BATCH, MAX_WINDOW, predict_maps, window_size_problem
from ircr.inference.scale import processing_size, rescale_factor, resize_image, resize_labels
from ircr.inference.tta import TTAMode, check_tta, flip_averaged
from ircr.io.atomic import atomic_write_text
from ircr.io.paths import child_path, ensure_dir, unique_name
from ircr.metrics import aggregate, instance_metrics

METRICS = ("aji", "dice", "f1", "pq", "dq", "sq", "aji_plus")


@dataclass
class EvalConfig:
    """Whole-image evaluation (validation during training and ``ircr evaluate``).

    Attributes:
        window, overlap, batch_size: sliding-window inference (``predict_maps``).
        f1_mode: "iou" (one-to-one at IoU > 0.5, the default and what the reports use),
            "centroid" (within f1_radius pixels) or "glas" (the GlaS detection rule the IRCR
            paper's F1_obj cites: :mod:`ircr.metrics`).
        max_images: validate on at most this many images (None = all; smoke tests).
        tta: test-time augmentation of the network's maps (HoVer-Net models only;
            :mod:`ircr.inference.tta`): ``off`` (default), ``mirror`` (2 passes), ``flips`` (4),
            ``d4`` (8).
    """

    window: int = bounded(256, 16, MAX_WINDOW)
    overlap: int = bounded(64, 0, MAX_WINDOW)
    batch_size: int = bounded(8, 1, MAX_BATCH)
    f1_mode: Literal["iou", "centroid", "glas"] = "iou"
    f1_radius: float = bounded(12.0, 0, 10_000, lo_open=True)
    max_images: int | None = bounded(None, 1, 10**9)
    tta: TTAMode = "off"

    def validate(self, where: str = "config") -> None:
        """Window/overlap/batch checks (one-line IrcrError naming ``where``)."""
        for ok, key, problem in (
            (self.window >= 16, "eval.window", "must be >= 16"),
            (0 <= self.overlap < self.window, "eval.overlap", "must be in [0, eval.window)"),
            (self.batch_size >= 1, "eval.batch_size", "must be >= 1"),
            (self.f1_radius > 0, "eval.f1_radius", "must be > 0"),
            (self.max_images is None or self.max_images >= 1, "eval.max_images", "must be >= 1"),
        ):
            if not ok:
                raise IrcrError(f"{where}: config key '{key}' {problem}")
        too_big = window_size_problem(self.window, self.batch_size)
        if too_big is not None:
            raise IrcrError(f"{where}: config key 'eval.{too_big[0]}' {too_big[1]}")


@dataclass
class EvalResult:
    """Per-image rows (name, metrics, counts) and the mean over images."""

    per_image: list[dict[str, Any]]
    mean: dict[str, float]
    split: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Fixed-width text table: one row per image and a mean row."""
        cols = ["image", *METRICS, "n_gt", "n_pred"]
        width = max([5, *(len(str(r["image"])) for r in self.per_image)])
        lines = [f"{'image':<{width}} " + " ".join(f"{c:>8}" for c in cols[1:])]
        for r in [*self.per_image, {"image": "mean", **self.mean}]:
            cells = []
            for c in cols[1:]:
                v = r.get(c, "")
                cells.append(f"{v:>8.4f}" if isinstance(v, float) else f"{v!s:>8}")
            lines.append(f"{str(r['image']):<{width}} " + " ".join(cells))
        return "\n".join(lines)


def image_at_model_scale(ds: PreparedDataset, idx: int, model_mpp: float | None
                         ) -> tuple[np.ndarray, tuple[int, int]]:
    """Dataset image ``idx`` resized to the model's µm/px, and its own (H, W).

    An image whose ``mpp`` (dataset.json) differs from ``model_mpp`` by more than 5 % is
    resized (:mod:`ircr.inference.scale`), as ``ircr segment`` does; unknown pixel sizes and
    ``model_mpp=None`` (validation during training) leave it as it is.
    """
    image = np.asarray(ds.load_image(idx))
    h, w = image.shape[:2]
    f = rescale_factor(ds.images[idx].get("mpp"), model_mpp)
    return resize_image(image, *processing_size(h, w, f)), (h, w)


def predict_whole(model: nn.Module, ds: PreparedDataset, name: str, cfg: EvalConfig,
                  device: torch.device | str | None = None,
                  amp: AmpSetting = False, model_mpp: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image prediction of dataset image ``name`` at the model's µm/px (``model_mpp``).

    Returns prob (h, w) and hv (2, h, w) float32 at the processing size (the image's own
    size when no rescaling is needed; averaged over ``cfg.tta``'s mirrors);
    :func:`resize_labels` brings instances back.
    """
    image, _ = image_at_model_scale(ds, ds.index_of(name), model_mpp)
    return predict_maps(flip_averaged(model, cfg.tta), image, window=cfg.window,
                        overlap=cfg.overlap, batch_size=cfg.batch_size, device=device, amp=amp)


def _setting(cfg: EvalConfig, fam: ModelFamily, device: torch.device | None,
             amp: AmpSetting) -> InferenceSetting:
    """The network setting of an evaluation (``eval.tta`` checked against the family)."""
    tta = cfg.tta if cfg.tta == "off" else check_tta(cfg.tta, fam.name, "eval.tta")
    return InferenceSetting(window=cfg.window, overlap=cfg.overlap, batch_size=cfg.batch_size,
                            device=device, amp=amp, tta=tta)


def evaluate_model(model: nn.Module, ds: PreparedDataset, names: list[str], cfg: EvalConfig,
                   postproc: Any = None,
                   device: torch.device | str | None = None, amp: AmpSetting = False,
                   overlays: Path | None = None, progress: bool = False,
                   family: ModelFamily | None = None,
                   model_mpp: float | None = None) -> EvalResult:
    """Evaluate ``model`` on whole images ``names`` of ``ds`` (metrics averaged over images).

    ``family`` (default HoVer-Net) predicts each whole image and turns it into instances;
    ``postproc`` is its post-processing (a mapping, its dataclass, or None = defaults).
    ``model_mpp``: the model's µm/px; images at another pixel size are resized to it for the
    network and WBIS, and the instances scored at the image's own resolution (None: as is).
    """
    fam = family or get_family()
    params = fam.parse_postproc(postproc)
    dev = None if device is None else torch.device(device)
    setting = _setting(cfg, fam, dev, amp)
    rows, results = [], []
    taken: set[str] = set()
    if overlays is not None:
        ensure_dir(overlays, "overlay folder")
    it: Any = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, unit="image", dynamic_ncols=True)
    for name in it:
        idx = ds.index_of(name)
        if not ds.images[idx].get("labelled"):
            raise IrcrError(f"{ds.path}: image '{name}' has no labels; cannot evaluate it")
        work, (h, w) = image_at_model_scale(ds, idx, model_mpp)
        pred, _ = fam.predict_instances(model, work, setting, params)
        pred = resize_labels(pred, h, w)
        gt = np.asarray(ds.load_inst(idx))
        res = instance_metrics(gt, pred, f1_mode=cfg.f1_mode, radius=cfg.f1_radius)
        results.append(res)
        row: dict[str, Any] = {"image": name}
        row.update({k: float(getattr(res, k)) for k in METRICS})
        row["n_gt"], row["n_pred"] = int(res.n_gt), int(res.n_pred)
        rows.append(row)
        if overlays is not None:  # the name comes from dataset.json: never a path
            png = child_path(overlays, unique_name(name, taken) + ".png")
            _write_overlay(png, np.asarray(ds.load_image(idx)), gt, pred,
                           f"{name}: AJI {res.aji:.3f}, {res.n_gt} true / {res.n_pred} "
                           "predicted nuclei")
    agg = aggregate(results, mode="mean") if results else {}
    mean = {k: float(agg[k]) for k in METRICS if k in agg}
    return EvalResult(per_image=rows, mean=mean)


# -- per-patch evaluation: the BASS paper's test unit (``ircr evaluate --unit patch``) ------
#
# The BASS paper scores its test set as overlapping 256 px patches (MoNuSeg: 6 test images x 49
# patches = 294), each patch segmented on its own and scored against the ground truth cropped
# to it, the metrics averaged over patches. Here the patches are the prepared dataset's own
# grid (``ircr data prepare --stride 128``: 7 x 7 = 49 per 1000 px image); a patch at the right
# or bottom edge is its part inside the image (232 px wide on a 1000 px image), never padded,
# so every scored pixel is a real one. A nucleus cut by a patch edge is scored as the part inside
# the patch, in the prediction and in the ground truth alike. Images at another pixel size than
# the model's are resized for the network and their instances brought back, as for whole images.
#
# Whole images (:func:`ircr.inference.evaluate.evaluate_model`) stay the default everywhere.


def image_patches(ds: PreparedDataset, idx: int) -> list[Patch]:
    """The dataset grid's patches of image ``idx`` (raster order; ``h, w`` = inside part)."""
    return [p for p in ds.patches if p.image == idx]


def evaluate_patches(model: nn.Module, ds: PreparedDataset, names: list[str], cfg: EvalConfig,
                     postproc: Any = None, device: torch.device | str | None = None,
                     amp: AmpSetting = False, progress: bool = False,
                     family: ModelFamily | None = None,
                     model_mpp: float | None = None) -> EvalResult:
    """Evaluate ``model`` on every grid patch of the images ``names`` (mean over patches).

    Returns an :class:`EvalResult` whose rows are patches, named ``<image>@<y0>,<x0>``.
    """
    fam = family or get_family()
    params = fam.parse_postproc(postproc)
    dev = None if device is None else torch.device(device)
    setting = _setting(cfg, fam, dev, amp)
    jobs = []
    for name in names:
        idx = ds.index_of(name)
        if not ds.images[idx].get("labelled"):
            raise IrcrError(f"{ds.path}: image '{name}' has no labels; cannot evaluate it")
        jobs.append((name, idx, image_patches(ds, idx)))
    total = sum(len(p) for _, _, p in jobs)
    if total == 0:
        raise IrcrError(f"{ds.path}: no patch of the chosen images to evaluate")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="patch", dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    results = []
    try:
        for name, idx, patches in jobs:
            image, gt_all = np.asarray(ds.load_image(idx)), np.asarray(ds.load_inst(idx))
            f = rescale_factor(ds.images[idx].get("mpp"), model_mpp)
            for p in patches:
                crop = image[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w]
                gt = gt_all[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w]
                work = resize_image(np.ascontiguousarray(crop), *processing_size(p.h, p.w, f))
                pred, _ = fam.predict_instances(model, work, setting, params)
                res = instance_metrics(gt, resize_labels(pred, p.h, p.w), f1_mode=cfg.f1_mode,
                                       radius=cfg.f1_radius)
                results.append(res)
                row: dict[str, Any] = {"image": f"{name}@{p.y0},{p.x0}"}
                row.update({k: float(getattr(res, k)) for k in METRICS})
                row["n_gt"], row["n_pred"] = int(res.n_gt), int(res.n_pred)
                rows.append(row)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    agg = aggregate(results, mode="mean")
    return EvalResult(per_image=rows, mean={k: float(agg[k]) for k in METRICS if k in agg})


def evaluate_models(models: dict[str, nn.Module], ds: PreparedDataset, names: list[str],
                    cfg: EvalConfig, postproc: Any,
                    device: torch.device | str | None, amp: AmpSetting = False,
                    progress: bool = False, family: ModelFamily | None = None
                    ) -> dict[str, dict[str, float]]:
    """Mean metrics of each named model (validation during training; ``cfg.max_images``);
    ``family``: the models' family (None = HoVer-Net)."""
    chosen = list(names)[: cfg.max_images] if cfg.max_images else list(names)
    return {name: evaluate_model(m, ds, chosen, cfg, postproc, device, amp,
                                 progress=progress, family=family).mean
            for name, m in models.items()}


GT_COLOR, PRED_COLOR = (0, 200, 0), (255, 230, 0)


def _write_overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                   title: str = "") -> None:
    """Full-resolution overlay (ground truth green, prediction yellow) under a legend band."""
    from ircr.io.figures import caption_image
    from ircr.io.writers import overlay_image, write_png

    out = overlay_image(overlay_image(image, gt, color=GT_COLOR), pred, color=PRED_COLOR)
    write_png(path, caption_image(out, title or path.stem,
                                  [(GT_COLOR, "ground truth"), (PRED_COLOR, "prediction")]))


def select_images(ds: PreparedDataset, split: str, meta: dict[str, Any] | None = None
                  ) -> tuple[list[str], str]:
    """Image names for ``--split`` (see the module docstring) and a label for reports."""
    labelled = [m["name"] for m in ds.images if m.get("labelled")]
    if split == "all":
        if not labelled:
            raise IrcrError(f"{ds.path}: the dataset has no labelled images to evaluate")
        return labelled, "all"
    if split == "test":
        test = [m["name"] for m in ds.images if str(m.get("split", "")).lower() == "test"
                and m.get("labelled")]
        if test:
            return test, "test"
        return _split_test_images(ds, meta)
    name = split
    if split == "val":
        trained = str((meta or {}).get("train", {}).get("split") or "")
        known = ds.split_names()
        if trained and trained in known:
            name = trained
        elif len(known) == 1:
            name = known[0]
        elif not known:
            raise IrcrError(f"{ds.path}: no split files, so no validation images; "
                            "use --split all")
        else:
            raise IrcrError(f"{ds.path}: several splits ({', '.join(known)}); "
                            "name one with --split NAME")
    sp = ds.load_split(name)
    vals = [ds.names[i] for i in sp.val_images]
    if not vals:
        raise IrcrError(f"{sp.path}: split '{sp.name}' has no validation images")
    return vals, f"{sp.name}:val"


def _split_test_images(ds: PreparedDataset, meta: dict[str, Any] | None) -> tuple[list[str], str]:
    """Test images held out by a split file (the model's own split first)."""
    trained = str((meta or {}).get("train", {}).get("split") or "")
    known = ds.split_names()
    names = [trained] if trained in known else known
    with_test = [sp for sp in (ds.load_split(n) for n in names) if sp.test_images]
    if with_test and len({tuple(sp.test_images) for sp in with_test}) == 1:  # same test set
        sp = with_test[0]
        return [ds.names[i] for i in sp.test_images], f"{sp.name}:test"
    if len(with_test) > 1:
        raise IrcrError(f"{ds.path}: splits hold different test images "
                        f"({', '.join(sp.name for sp in with_test)}) and the model folder does "
                        "not say which it was trained with; use --split all on a test dataset")
    raise IrcrError(f"{ds.path}: no test images in this prepared dataset (prepare it with "
                    "--test-fraction, or the test set as its own dataset and use --split all)")


def write_results(result: EvalResult, out: Path) -> list[Path]:
    """Write ``metrics.json`` (mean + per image + info) and ``per_image.csv`` under ``out``."""
    import io
    import json

    ensure_dir(out)
    js = out / "metrics.json"
    doc = {"split": result.split, "n_images": len(result.per_image), "mean": result.mean,
           "per_image": result.per_image, **to_dict(result.info)}
    cs = out / "per_image.csv"
    cols = ["image", *METRICS, "n_gt", "n_pred"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in result.per_image:
        w.writerow(r)
    w.writerow({"image": "mean", **result.mean})
    atomic_write_text(cs, buf.getvalue())
    atomic_write_text(js, json.dumps(doc, indent=2, default=_json_num) + "\n")  # last
    return [js, cs]


def _json_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return str(v)


def evaluate_folder(model_dir: str | Path, dataset: str | Path, split: str = "val",
                    out: str | Path | None = None, overlays: bool = False,
                    device: str = "auto", cfg: EvalConfig | None = None,
                    progress: bool = True, window: int | None = None,
                    overlap: int | None = None, batch_size: int | None = None,
                    unit: str = "image", dilate: int | None = None,
                    tta: str | None = None) -> EvalResult:
    """Evaluate a model folder on a prepared dataset (the ``ircr evaluate`` backend).

    The sliding-window setting is the model folder's ``inference`` (the one ``ircr segment``
    and ``ircr.load_model`` use too), overridden by ``window``/``overlap``/``batch_size``
    when given; ``cfg`` supplies the F1 settings (its window fields are replaced).
    ``unit``: ``"image"`` (whole images, the default) or ``"patch"`` (every grid patch on its
    own, mean over patches: the BASS paper's unit, :mod:`ircr.inference.evaluate_patches`).
    ``dilate``: 0/1 overrides the painting's 1-px growth of a detection model (``maskrcnn``;
    the released BASS evaluation uses 1).
    ``tta``: test-time augmentation (``off``, ``mirror``, ``flips``, ``d4``; None = ``cfg.tta``,
    default off; HoVer-Net models only).
    """
    import dataclasses

    if unit not in ("image", "patch"):
        raise IrcrError(f"--unit: must be 'image' or 'patch', got {unit!r}")
    if dilate is not None and dilate not in (0, 1):
        raise IrcrError(f"--dilate: must be 0 or 1, got {dilate!r}")

    from ircr.compat import allow_huge_page_tensors
    from ircr.inference.device import amp_dtype, select_device
    from ircr.inference.model_folder import load_model_folder, resolve_inference

    allow_huge_page_tensors()  # inference: huge-page CPU tensors if no tensor exists yet
    dev = select_device(device)
    loaded = load_model_folder(model_dir, device=dev)
    setting = resolve_inference(loaded.inference, window, overlap, batch_size)
    cfg = cfg or EvalConfig()
    mode = check_tta(cfg.tta if tta is None else tta, loaded.family.name, "--tta")
    cfg = dataclasses.replace(cfg, window=setting["window"], overlap=setting["overlap"],
                              batch_size=setting["batch_size"], tta=mode)
    ds = PreparedDataset(dataset)
    names, label = select_images(ds, split, loaded.meta)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:  # fail before the (long) inference, not after
        ensure_dir(out_dir)
    postproc = loaded.postproc
    if dilate is not None:
        if not dataclasses.is_dataclass(postproc) or not hasattr(postproc, "dilate"):
            raise IrcrError(f"--dilate: the model's post-processing ({loaded.family.name}) "
                            "has no dilation; it applies to detection models (maskrcnn)")
        postproc = dataclasses.replace(postproc, dilate=int(dilate))  # type: ignore[type-var]
    if unit == "patch":
        if overlays:
            raise IrcrError("--overlays: written for whole images only (--unit image)")
        res = evaluate_patches(loaded.model, ds, names, cfg, postproc, dev,
                               amp=amp_dtype("auto", dev), progress=progress,
                               family=loaded.family, model_mpp=loaded.mpp)
    else:
        res = evaluate_model(loaded.model, ds, names, cfg, postproc, dev,
                             amp=amp_dtype("auto", dev),
                             overlays=(out_dir / "overlays") if (overlays and out_dir) else None,
                             progress=progress, family=loaded.family, model_mpp=loaded.mpp)
    res.split = label
    res.info = {"model": str(Path(model_dir)), "dataset": str(Path(dataset)),
                "eval": to_dict(cfg), "inference": setting, "postproc": to_dict(postproc),
                "model_mpp": loaded.mpp, "unit": unit}
    if out_dir is not None:
        write_results(res, out_dir)
    return res
