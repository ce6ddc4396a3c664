#!/usr/bin/env python
"""Issue 22 point 3: does `ircr adapt` pay? The shipped default model -> CPM-15, on CPU.

Split of CPM-15 (train, 15 images) by image, balanced over magnification:
  adaptation half (labels never read): 20x image01 03 05 07, 40x image08 10 12 14
  evaluation half:                     20x image02 04 06,    40x image09 11 13 15
(image04's mask is image05_mask: the known swap of the shared copy, see data/datasets/cpm15.py)

Rows, the same iteration budget N for (b), (d)-(f), seeds 0..S-1, eval-half AJI/Dice/F1/PQ:
  (a) the default model as is (deterministic: one run)
  (b) plain supervised fine-tuning of the default model on its source data (MoNuSeg train,
      128 px patches, split ratio_1_seed0) for N iterations (controls for "more training")
  (c) Macenko stain normalisation (torchstain, numpy backend) of the eval images to a MoNuSeg
      reference, the model as is (deterministic: one run)
  (d) ircr adapt --method mean_teacher, (e) ircr adapt (IRCR), both with the source data as
      the labelled term (--labelled, same split as (b)) and the adaptation-half tiles
  (f) as (e) with the paper's start: no warm-up, no ramp, teacher HV not clamped
Every row keeps the default model's WBIS thresholds. Prints the table (mean ± sample std over
seeds), the 20x / 40x breakdown and the IRCR diagnostics (matched pairs per image, fraction of
teacher nuclei the prior rejects, from metrics.csv).

Usage: OMP_NUM_THREADS=1 python scripts/measure_adapt.py [--work DIR] [--iterations N]
           [--seeds S] [--rows abcdef] [--smoke]
  --smoke: 2 iterations, 1 seed, 4 tiles, 2 eval images: checks the pipeline in ~minutes.
Needs: pip install torchstain (row c; MIT, numpy only). Rerun to resume: finished steps are
skipped (each writes its metrics.json last).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IRCR_SHARED_DATA", REPO.parent / "shared" / "data"))
ADAPT = ["image01", "image03", "image05", "image07", "image08", "image10", "image12", "image14"]
EVAL = ["image02", "image04", "image06", "image09", "image11", "image13", "image15"]
SMOKE_EVAL = ["image02", "image09"]
MASK = {"image04": "image05", "image05": "image04"}  # the known swap of the shared copy
METRICS = ("aji", "dice", "f1", "pq")


def ircr(*args: str) -> None:
    """Run one ircr command (same interpreter), failing loudly."""
    cmd = [sys.executable, "-m", "ircr", *args]
    print("+ ircr " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def mpp_of(name: str) -> float:
    return 0.5 if int(name[5:]) <= 7 else 0.25


def prepare(work: Path, eval_names: list[str]) -> dict[str, Path]:
    """Adaptation targets (PNG with dpi, no labels), eval dataset, MoNuSeg source dataset."""
    from PIL import Image

    cpm = DATA / "CPM15" / "train"
    targets = work / "adapt_targets"
    if not targets.is_dir():
        tmp = work / "adapt_targets.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for n in ADAPT:  # pixels only: the adaptation half's masks are never opened
            with Image.open(cpm / "images" / f"{n}.png") as im:
                im.convert("RGB").save(tmp / f"{n}.png", dpi=(25400 / mpp_of(n),) * 2)
        tmp.rename(targets)
    src = work / "cpm15_eval_src"
    if not src.is_dir():
        (src / "images").mkdir(parents=True)
        (src / "labels_txt").mkdir()
        for n in eval_names:
            (src / "images" / f"{n}.png").symlink_to(cpm / "images" / f"{n}.png")
            mask = cpm / "labels_txt" / f"{MASK.get(n, n)}_mask.txt.gz"
            (src / "labels_txt" / f"{n}_mask.txt.gz").symlink_to(mask)
    ev = work / "cpm15_eval"
    if not (ev / "dataset.json").is_file():
        ircr("data", "prepare", "cpm15", str(src), "-o", str(ev), "--ratio", "1",
             "--val-fraction", "0", "--overwrite")
    mon = work / "monuseg128"
    if not (mon / "dataset.json").is_file():
        ircr("data", "prepare", "monuseg", str(DATA / "MoNuSeg2018" / "train"), "-o", str(mon),
             "--patch", "128", "--ratio", "1", "--seed", "0", "--overwrite")
    return {"targets": targets, "eval": ev, "monuseg": mon}


def stain_normalised(work: Path, ev: Path, mon: Path) -> Path:
    """Row (c): the eval images Macenko-normalised to a MoNuSeg training image (labels as is)."""
    out = work / "cpm15_eval_macenko"
    if (out / "dataset.json").is_file():
        return out
    import torchstain

    from ircr.data.prepare import prepare_samples
    from ircr.data.sample import Sample
    from ircr.data.store import PreparedDataset

    src, ref = PreparedDataset(ev), PreparedDataset(mon)
    norm = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    norm.fit(ref.load_image(ref.index_of("TCGA-18-5592-01Z-00-DX1")))
    samples = []
    for i, name in enumerate(src.names):
        img, _, _ = norm.normalize(I=src.load_image(i), stains=False)
        samples.append(Sample(img.astype("uint8"), src.load_inst(i),
                              {"name": name, "mpp": src.images[i].get("mpp")}))
    prepare_samples(samples, out, source="cpm15-macenko", patch=src.patch_size, ratio=1,
                    val_fraction=0.0, overwrite=True)
    return out


def evaluate(model: Path | str, ds: Path, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        ircr("evaluate", str(model), str(ds), "--split", "all", "--out", str(out), "--device",
             "cpu", "--no-progress")
    return json.loads((out / "metrics.json").read_text())


def keep_default_wbis(folder: Path) -> None:
    """Row (b) trains with default WBIS settings: give its folder the default's thresholds."""
    from ircr.engine.packaged import resolve_model

    shutil.copyfile(resolve_model("default") / "postproc.yaml", folder / "postproc.yaml")


def finetune(work: Path, mon: Path, n: int, seed: int) -> Path:
    run = work / "runs" / f"b_seed{seed}"
    if not (run / "model" / "model.yaml").is_file():
        from ircr.engine.packaged import resolve_model

        resume = ["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []
        ircr("train", str(REPO / "configs" / "default_model" / "lite_monuseg.yaml"), "--out",
             str(run), "--no-progress", "--set", f"data.dataset={mon}",
             "--set", f"train.init_weights={resolve_model('default')}",
             "--set", "train.epochs=1", "--set", f"train.iterations_per_epoch={n}",
             "--set", "train.lr=1.0e-4", "--set", "train.lr_steps=[]",
             "--set", f"train.seed={seed}", "--set", "train.keep_every=0",
             "--set", "train.val_every=0", *resume)
        keep_default_wbis(run / "model")
    return run / "model"


def adapt(work: Path, row: str, paths: dict[str, Path], n: int, seed: int, tiles: list[str],
          extra: list[str]) -> Path:
    run = work / "runs" / f"{row}_seed{seed}"
    if not (run / "model" / "model.yaml").is_file():
        resume = ["--resume"] if (run / "adapt.json").is_file() else []
        ircr("adapt", "default", str(paths["targets"]), "-o", str(run), "--iterations", str(n),
             "--seed", str(seed), "--labelled", str(paths["monuseg"]), "--labelled-split",
             "ratio_1_seed0", "--device", "cpu", "--no-progress", "--set",
             "train.channels_last=true", *tiles, *extra, *resume)
    return run / "model"


def diagnostics(run: Path) -> dict[str, float]:
    """Mean over epochs of the IRCR diagnostics in metrics.csv (NaN-free rows)."""
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    out = {}
    for key in ("pairs_per_image", "prior_reject_frac", "unsup_sup_ratio"):
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
        if vals:
            out[key] = statistics.fmean(vals)
    return out


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def by_mag(doc: dict, mag: str) -> float:
    rows = [r for r in doc["per_image"] if (mpp_of(r["image"]) == 0.5) == (mag == "20x")]
    return statistics.fmean(r["aji"] for r in rows) if rows else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ircr_measure_adapt"))
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", default="abcdef", help="rows to run and print (abcdef)")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    n, seeds, eval_names = a.iterations, list(range(a.seeds)), EVAL
    tiles = ["--tiles", "64", "--tile-size", "256"]
    if a.smoke:
        n, seeds, eval_names = 2, [0], SMOKE_EVAL
        tiles = ["--tiles", "4", "--tile-size", "128"]
    a.work.mkdir(parents=True, exist_ok=True)
    paths = prepare(a.work, eval_names)
    ev = a.work / "eval"
    docs: dict[str, list[dict]] = {}
    if "a" in a.rows:
        docs["(a) default model as is"] = [evaluate("default", paths["eval"], ev / "a")]
    if "c" in a.rows:
        docs["(c) Macenko to MoNuSeg, model as is"] = [evaluate(
            "default", stain_normalised(a.work, paths["eval"], paths["monuseg"]), ev / "c")]
    paper = ["--set", "method.warmup_iterations=0", "--set", "method.rampup_iterations=0",
             "--set", "method.clamp_teacher_hv=false"]
    specs = [("(b) supervised fine-tuning on MoNuSeg", "b", None),
             ("(d) adapt: Mean Teacher", "d", ["--method", "mean_teacher"]),
             ("(e) adapt: IRCR", "e", []),
             ("(f) adapt: IRCR, paper start", "f", paper)]
    diag: dict[str, list[dict[str, float]]] = {}
    for title, row, extra in specs:
        if row not in a.rows:
            continue
        docs[title] = []
        for s in seeds:
            model = finetune(a.work, paths["monuseg"], n, s) if extra is None else \
                adapt(a.work, row, paths, n, s, tiles, extra)
            docs[title].append(evaluate(model, paths["eval"], ev / f"{row}_seed{s}"))
            if row in ("e", "f"):
                diag.setdefault(title, []).append(diagnostics(model.parent))
    print(f"\nCPM-15 eval half ({len(eval_names)} images), {n} iterations, seeds {seeds}")
    print("| row | AJI | Dice | F1 | PQ | AJI 20x | AJI 40x |")
    print("|---|---|---|---|---|---|---|")
    for title, ds in docs.items():
        cells = [fmt([d["mean"][m] for d in ds]) for m in METRICS]
        mags = [fmt([by_mag(d, g) for d in ds]) for g in ("20x", "40x")]
        print(f"| {title} | " + " | ".join(cells + mags) + " |")
    for title, rows in diag.items():
        keys = sorted({k for r in rows for k in r})
        print(f"{title}: " + ", ".join(f"{k} {fmt([r[k] for r in rows if k in r])}"
                                       for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
