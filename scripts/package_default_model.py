"""Select and package the default model (used by ``scripts/train_default_model.sh``).

Two steps:

``select RUN OUT``
    Model selection on the validation images: the epoch checkpoint (``RUN/checkpoints/
    epoch_NNNN.pt``) with the best validation AJI in ``RUN/metrics.csv`` becomes a model folder
    ``OUT`` (fp32), with the shipped inference setting (one fitted 1088 px window per tile,
    overlap 64, batch 1: docs/benchmarks.md), WBIS ``gradient_range: fixed`` (slide tiles give
    the same instances) and the training record.

``package SELECTED EVAL_TUNED DEST``
    Writes the shipped folder ``DEST`` (``src/ircr/resources/models/default``): weights stored
    in fp16 (loaded as fp32), the tuned ``postproc.yaml`` and ``tuning.json`` of SELECTED,
    ``metrics.json`` with the validation metrics before tuning (the training run's validation
    of the selected epoch: same images, same 256/64 sliding window as ``ircr evaluate``) and
    after tuning (``ircr evaluate`` output EVAL_TUNED), and the model card (``card`` in
    model.yaml): data source and licence, training command, metrics.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
INFERENCE = {"window": 1088, "overlap": 64, "batch_size": 1}
SHIPPED_WBIS = {"gradient_range": "fixed"}  # tuned and shipped with this rule
LICENCE = ("CC BY-NC-SA 4.0 (the weights derive from the MoNuSeg 2018 training data, "
           "licensed CC BY-NC-SA 4.0: non-commercial use, share alike, attribution); "
           "the ircr code itself is Apache-2.0")
TRAINING_DATA = ("MoNuSeg 2018 training set (Kumar et al., IEEE TMI 2017 / MICCAI 2018 "
                 "challenge): 30 H&E tiles of 1000 x 1000 px at 40x (0.25 µm/px) from 7 "
                 "organs, 16,958 annotated nuclei; 27 images for training, 3 held out by "
                 "image for validation (TCGA-21-5784, TCGA-B0-5698, TCGA-B0-5711)")
COMMAND = "scripts/train_default_model.sh (configs/default_model/lite_monuseg.yaml)"
SPEED = ("CPU, 2 torch threads of a 2-core AMD EPYC VM (docs/benchmarks.md, 'Huge-page tensors')"
         ': real 1000 x 1000 tiles 3.1-3.4 s per megapixel, a 2048 x 2048 slide 3.6 s/MP, eager '
         '(3.7-4.2x the path before issue 23 in one side-by-side run); peak RSS 3.1-3.6 GB for a'
         ' tile, 1.4 GB for a 20,000 x 20,000 slide region')
TTA = ("off by default. --tta mirror (load_model(tta='mirror')): the window and its mirror "
       "averaged, 1.9x the time; on CPM-15 (15 tiles, shipped thresholds) AJI 0.542, PQ 0.488, "
       "2,891 nuclei predicted for 2,905 (0.537, 0.472, 3,059 without). --tta flips: 4 mirrors, "
       "3.7-4.1x: AJI 0.546, PQ 0.494, 2,842 predicted. MoNuSeg validation unchanged (AJI "
       "0.572 / 0.569, PQ 0.519 / 0.516); docs/models.md, 'Test-time augmentation'")


def best_epoch(run: Path) -> tuple[int, dict[str, float]]:
    """(epoch, its val metrics) with the highest validation AJI in ``run/metrics.csv``."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    scored = [r for r in rows if r.get("val_student_aji") not in (None, "")]
    if not scored:
        raise SystemExit(f"{run / 'metrics.csv'}: no validation rows (val_student_aji)")
    best = max(scored, key=lambda r: (float(r["val_student_aji"]), int(r["epoch"])))
    metrics = {k[len("val_student_"):]: round(float(v), 4) for k, v in best.items()
               if k.startswith("val_student_") and v not in ("", None)}
    return int(best["epoch"]), metrics


def select(run: Path, out: Path) -> None:
    """Write the best-validation epoch of ``run`` as a model folder ``out``."""
    from ircr.config import to_dict
    from ircr.models import build_model
    from ircr.train.checkpoint import load_checkpoint
    from ircr.train.config import experiment_from_dict

    cfg = experiment_from_dict(yaml.safe_load((run / "config.yaml").read_text()),
                               where=str(run / "config.yaml"))
    epoch, metrics = best_epoch(run)
    state = load_checkpoint(run / "checkpoints" / f"epoch_{epoch:04d}.pt")
    model = build_model(cfg.model, load_pretrained=False)
    model.load_state_dict(state["model"])
    iterations = int(state["iteration"])
    extra = {"method": cfg.method.name,
             "train": {"dataset": "MoNuSeg 2018 train (30 images)", "split": cfg.data.split,
                       "selected_epoch": epoch, "iterations": iterations,
                       "epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size,
                       "lr_schedule": cfg.train.lr_schedule,
                       "selection": "best validation AJI"}}
    postproc = {**to_dict(cfg.postproc), **SHIPPED_WBIS}
    _save(out, model.eval(), cfg.model, postproc, patch_size=cfg.data.patch_size,
          metrics={"validation_default_wbis": metrics}, extra=extra)
    print(f"selected epoch {epoch} (iteration {iterations}, val AJI {metrics['aji']:.4f}) "
          f"-> {out}")


def _save(out: Path, model: torch.nn.Module, model_cfg: Any, postproc: dict[str, Any],
          patch_size: int, metrics: dict[str, Any], extra: dict[str, Any]) -> None:
    """save_model_folder at 0.25 µm/px with the INFERENCE window (a keyword where supported)."""
    from ircr.inference.model_folder import save_model_folder

    if "inference" in inspect.signature(save_model_folder).parameters:
        kwargs: dict[str, Any] = {"inference": INFERENCE}
    else:
        kwargs, extra = {}, {**extra, "inference": INFERENCE}
    save_model_folder(out, model, model_cfg, postproc, mpp=0.25, patch_size=patch_size,
                      metrics=metrics, extra=extra, **kwargs)


def _mean(path: Path) -> tuple[dict[str, float], list[str]]:
    doc = json.loads(path.read_text())
    means = {k: round(float(v), 4) for k, v in doc["mean"].items()}
    return means, [str(r["image"]) for r in doc["per_image"]]


def package(selected: Path, eval_tuned: Path, dest: Path, cpm15: Path | None = None) -> None:
    """Write the shipped model folder ``dest`` from the selected, tuned folder (``cpm15``:
    the ``ircr evaluate`` output of the tuned folder on CPM-15, recorded in the card)."""
    from ircr.inference.model_folder import load_model_folder

    loaded = load_model_folder(selected)
    meta = dict(loaded.meta)
    half = loaded.model.half()
    n_params = sum(p.numel() for p in loaded.model.parameters())
    tuned, images = _mean(eval_tuned / "metrics.json")
    default = dict((loaded.metrics or {})["validation_default_wbis"])
    card: dict[str, Any] = {
        "description": "HoVer-Net lite (width 1/4, 2 residual units per encoder group, "
                       "decoder units [4, 2]; same 256 -> 256 design and WBIS post-processing "
                       "as the paper network) for H&E nuclei instance segmentation at 40x",
        "architecture": "pre-activation ResNet encoder, NP + HV decoders (no NC branch)",
        "parameters": n_params,
        "weights": "fp16 on disk, loaded as fp32",
        "training_data": TRAINING_DATA,
        "licence": LICENCE,
        "method": f"{meta.get('method')} (one seed; selected epoch "
                  f"{meta['train']['selected_epoch']}, {meta['train']['iterations']} iterations "
                  f"of batch {meta['train'].get('batch_size', 4)} on {loaded.patch_size} px "
                  "patches, 2 CPU cores)",
        "training_command": COMMAND,
        "speed": SPEED,
        "test_time_augmentation": TTA,
        "validation": {"images": images, "default_wbis": default, "tuned_wbis": tuned,
                       "note": f"mean over the {len(images)} validation images; default_wbis: "
                               "the training run's validation of the selected epoch (default "
                               "thresholds, gradient_range tile, 256 px windows); tuned_wbis: "
                               "ircr evaluate with the shipped postproc.yaml (gradient_range "
                               "fixed) and inference window, thresholds chosen on these same "
                               "images (optimistic)"},
    }
    metrics = {"validation_default_wbis": default, "validation_tuned_wbis": tuned}
    if cpm15 is not None:
        scores, names = _mean(cpm15 / "metrics.json")
        card["independent_check"] = {
            "cpm15": scores,
            "note": f"CPM-15 (MICCAI 2015 challenge, mean over its {len(names)} tiles at 20x and "
                    "40x), "
                    "scored with the shipped postproc.yaml; never used for selection or tuning"}
        metrics["cpm15_tuned_wbis"] = scores
    extra = {k: v for k, v in meta.items() if k not in (
        "ircr_version", "created", "family", "model", "mpp", "patch_size", "files",
        "inference")}
    extra["card"] = card
    if dest.exists():
        shutil.rmtree(dest)
    _save(dest, half, loaded.model_cfg, loaded.postproc, patch_size=loaded.patch_size,
          metrics=metrics, extra=extra)
    shutil.copyfile(selected / "tuning.json", dest / "tuning.json")
    size = (dest / "weights.pt").stat().st_size / 1e6
    print(f"packaged {n_params} parameters ({size:.2f} MB fp16) -> {dest}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``select`` or ``package``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    s = sub.add_parser("select")
    s.add_argument("run", type=Path)
    s.add_argument("out", type=Path)
    p = sub.add_parser("package")
    for name in ("selected", "eval_tuned", "dest"):
        p.add_argument(name, type=Path)
    p.add_argument("--cpm15", type=Path, default=None,
                   help="ircr evaluate output of the selected model on CPM-15")
    args = ap.parse_args(argv)
    if args.step == "select":
        select(args.run, args.out)
    else:
        package(args.selected, args.eval_tuned, args.dest, args.cpm15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
