"""``ircr evaluate MODEL DATASET [--split val|test|all|NAME] [--out DIR] [--overlays]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ircr.cli.options import add_device, add_inference, add_progress


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate a model folder on whole images of a prepared dataset",
        description="Sliding-window inference, WBIS on each whole image, AJI/Dice/F1/PQ/AJI+ "
                    "per image and their mean. Images at another pixel size than the model's "
                    "are resized to it and scored at their own. Writes metrics.json and "
                    "per_image.csv.")
    p.add_argument("model", metavar="MODEL",
                   help="model folder (run/model) or packaged model name (default)")
    p.add_argument("dataset", metavar="DATASET", type=Path, help="prepared dataset folder")
    p.add_argument("--split", default="val",
                   help="val (default: the model's training split), test, all, or a split "
                        "name/file (its validation images)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: MODEL/evaluation/<split>)")
    p.add_argument("--overlays", action="store_true",
                   help="also write overlay PNGs (green = ground truth, yellow = prediction)")
    add_device(p)
    add_inference(p)
    p.add_argument("--f1-mode", default="iou", choices=["iou", "centroid", "glas"],
                   help="object F1 matching: iou (one-to-one at IoU > 0.5, = DQ; default), "
                        "centroid (centroids within 12 px), glas (the GlaS challenge rule "
                        "the IRCR paper's F1_obj cites: more than half of the GT object "
                        "inside the prediction)")
    p.add_argument("--unit", default="image", choices=["image", "patch"],
                   help="image: whole images (default); patch: every patch of the dataset's "
                        "grid on its own, mean over patches (the BASS paper's test unit)")
    p.add_argument("--dilate", type=int, default=None, choices=[0, 1],
                   help="detection models (maskrcnn): grow each painted nucleus by 1 px into "
                        "background (1, the released BASS evaluation) or not (0); default: "
                        "the model folder's postproc.yaml")
    add_progress(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write JSON/CSV."""
    from ircr.config import from_dict
    from ircr.engine.packaged import is_packaged_folder, resolve_model
    from ircr.errors import IrcrError
    from ircr.inference.evaluate import EvalConfig, EvalResult, evaluate_folder

    cfg = from_dict(EvalConfig, {"f1_mode": args.f1_mode}, where="ircr evaluate")
    folder = resolve_model(args.model)
    if args.out is None and is_packaged_folder(folder):
        raise IrcrError(f"{args.model}: a packaged model folder is read-only; pass --out DIR")
    safe = str(args.split).replace("/", "_").replace("\\", "_")
    out = args.out or folder / "evaluation" / Path(safe).stem
    res = evaluate_folder(folder, args.dataset, split=args.split, out=out,
                          overlays=args.overlays, device=args.device, cfg=cfg,
                          progress=not args.no_progress, window=args.window,
                          overlap=args.overlap, batch_size=args.batch_size,
                          unit=args.unit, dilate=args.dilate, tta=args.tta)
    inf = res.info["inference"]
    what = "images" if args.unit == "image" else "patches, each on its own; mean over patches"
    mode = res.info["eval"]["tta"]  # the window setting is the folder's; TTA is eval's
    tta = f"; TTA {mode}" if mode != "off" else ""
    print(f"split: {res.split} ({len(res.per_image)} {what}); window {inf['window']} / overlap "
          f"{inf['overlap']} px, batch size {inf['batch_size']}{tta}")
    print(res.table() if args.unit == "image" else EvalResult([], res.mean).table())
    print(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}")
    return 0
