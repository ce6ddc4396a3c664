"""What a finished experiment run is scored on: validation and test metrics of its models.

* validation: the trainer's last validation (``metrics.csv``) or, for a method whose models
  are only model folders (``bass``), those folders on the split's validation images;
* test: each evaluated model on the test images (a test dataset, or the run's own split's test
  images with ``test_fraction``), whole images or every grid patch (``test_unit``), as means
  and per-image (per-patch) rows — the trainer's in-memory models (``eval_models``) or the
  method's finished model folders (``model_folders``) with their own family, post-processing
  and sliding window, as ``ircr evaluate`` scores them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError

METRIC_KEYS = ("aji", "dice", "f1", "pq", "aji_plus", "dq", "sq")


def val_from_csv(run_dir: Path, models: list[str]) -> dict[str, dict[str, float]]:
    """Validation metrics of the trainer's last validated epoch in ``metrics.csv``."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_student_aji")]
    if not rows:
        return {}
    last = rows[-1]
    out: dict[str, dict[str, float]] = {}
    for m in models:
        vals = {k: float(last[f"val_{m}_{k}"]) for k in METRIC_KEYS if last.get(f"val_{m}_{k}")}
        if vals:
            out[m] = vals
    return out


def metrics_on_test(tr: Any, evaluate: list[str], test_dataset: str | None, test_split: str,
                 unit: str = "image", own_test: bool = False
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean metrics of each evaluated model on the test images, and the per-image rows.

    The trainer's in-memory models (``eval_models``: HoVer-Net, its post-processing) or, for
    a method with its own loop and model family (``bass``), its finished model folders
    (``model_folders``: each with its family, post-processing and sliding window).
    """
    from ircr.data.store import PreparedDataset
    from ircr.inference.evaluate import select_images

    if own_test:  # the run's own split holds its test images (test_fraction)
        ds = PreparedDataset(tr.cfg.data.dataset)
        names, label = select_images(ds, "test", {"train": {"split": tr.split.name}})
    elif test_dataset:
        ds = PreparedDataset(test_dataset)
        names, label = select_images(ds, test_split)
    else:
        return {}, {}
    out: dict[str, Any] = {"_images": len(names), "_split": label, "_unit": unit}
    rows: dict[str, Any] = {}
    models = {k: v for k, v in tr.method.eval_models().items() if k in evaluate}
    family, postproc = tr.eval_family()  # a method's own family (pgfanet, cdcl) or HoVer-Net
    for name, model in models.items():
        was = model.training
        res = _evaluate(model, ds, names, tr.cfg.eval, postproc, tr.device,
                        tr.amp is not None, unit, family)
        model.train(was)
        out[name], rows[name] = {k: float(v) for k, v in res.mean.items()}, res.per_image
    if not models:
        for name, folder in tr.method.model_folders().items():
            if name in evaluate:
                res = _evaluate_folder(folder, ds, names, tr, unit)
                out[name], rows[name] = {k: float(v) for k, v in res.mean.items()}, res.per_image
    return out, rows


def folder_val(tr: Any, evaluate: list[str]) -> dict[str, dict[str, float]]:
    """Validation metrics of a method whose models are only model folders (``bass``): its
    folders on the split's validation images (whole images, ``eval.max_images``), as the
    trainer validates the others."""
    if tr.method.eval_models() or not tr.split.val_images:
        return {}
    names = list(tr.split.val_images)[: tr.cfg.eval.max_images or None]
    return {name: {k: float(v) for k, v in
                   _evaluate_folder(folder, tr.dataset, names, tr, "image").mean.items()}
            for name, folder in tr.method.model_folders().items() if name in evaluate}


def _evaluate(model: Any, ds: Any, names: list[str], cfg: Any, postproc: Any, device: Any,
              amp: bool, unit: str, family: Any = None, mpp: float | None = None) -> Any:
    """Whole-image or per-patch evaluation (inference.evaluate) -> EvalResult."""
    from ircr.inference.evaluate import evaluate_model, evaluate_patches

    fn = evaluate_patches if unit == "patch" else evaluate_model
    return fn(model, ds, names, cfg, postproc, device, amp=amp, family=family, model_mpp=mpp)


def _evaluate_folder(folder: Path, ds: Any, names: list[str], tr: Any, unit: str) -> Any:
    """Evaluate a finished model folder as ``ircr evaluate`` does (its own window/postproc)."""
    import dataclasses

    from ircr.inference.model_folder import load_model_folder, resolve_inference

    if not (Path(folder) / "model.yaml").is_file():
        raise IrcrError(f"{folder}: the method finished without this model folder")
    loaded = load_model_folder(folder, device=tr.device)
    win = resolve_inference(loaded.inference, None, None, None)
    cfg = dataclasses.replace(tr.cfg.eval, window=win["window"], overlap=win["overlap"],
                              batch_size=win["batch_size"])
    return _evaluate(loaded.model, ds, names, cfg, loaded.postproc, tr.device,
                     tr.amp is not None, unit, loaded.family, loaded.mpp)
