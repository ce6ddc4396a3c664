"""Does clamping the teacher's HV to [-1, 1] change the teacher's WBIS instances?

The EMA teacher's HV feeds two things in IRCR-Net: the consistency target F_t and the WBIS
that builds the teacher instances T (MIAC matching, PIAC prior scores). This script runs the
packaged lite model (src/ircr/resources/models/default, supervised, MoNuSeg) on 256 px patches
of its three held-out MoNuSeg images and compares WBIS on the raw HV with WBIS on the clamped
HV: AJI of each against the ground truth and AJI between the two (1.0 = identical instances),
plus the share of HV pixels outside [-1, 1].

Three teacher states: the trained model as packaged ("converged"), and the same weights with
its BatchNorm running statistics pulled back towards their initial values (mean 0, var 1), as
an EMA teacher's statistics are k iterations after a cold start with alpha = 0.95: the
statistics are ``0.95**k * init + (1 - 0.95**k) * trained`` (k = 0 is the cold teacher of the
paper's start; k = 20 about where docs/method.md measured the teacher to be sane again).

Usage: PYTHONPATH=src python scripts/measure_hv_clamp.py [../shared/data/MoNuSeg2018/train]
Prints one table row per teacher state (mean and range over the patches).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ircr.inference.model_folder import load_model_folder
from ircr.metrics import instance_metrics
from ircr.postproc.watershed import WBISParams, wbis

IMAGES = ("TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1")
PATCH = 256
CORNERS = ((100, 100), (100, 600), (600, 100), (600, 600))  # 4 patches per 1000 px image


def patches(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image (256, 256, 3) uint8, gt (256, 256) int32) for 4 corners of each held-out image."""
    out = []
    for name in IMAGES:
        img = np.asarray(Image.open(root / "images" / f"{name}.tif").convert("RGB"))
        gt = np.asarray(Image.open(root / "labels_inst" / f"{name}.png")).astype(np.int32)
        for y, x in CORNERS:
            out.append((img[y:y + PATCH, x:x + PATCH], gt[y:y + PATCH, x:x + PATCH]))
    return out


def cold_stats(model: nn.Module, k: int) -> nn.Module:
    """A copy whose BN running statistics are 0.95**k of the way back to (mean 0, var 1)."""
    m = copy.deepcopy(model)
    a = 0.95 ** k
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            assert mod.running_mean is not None and mod.running_var is not None
            mod.running_mean.mul_(1 - a)
            mod.running_var.mul_(1 - a).add_(a)
    return m.eval()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/MoNuSeg2018/train")
    loaded = load_model_folder(Path(__file__).parents[1] / "src/ircr/resources/models/default")
    data = patches(root)
    params = WBISParams()  # the trainer's masks use the config's postproc (defaults)
    print("| teacher | HV px outside [-1,1] (%) | AJI raw-HV vs GT | AJI clamped-HV vs GT | "
          "AJI raw vs clamped |")
    print("|---|---|---|---|---|")
    for label, k in (("converged (packaged)", None), ("BN stats k=20", 20),
                     ("BN stats k=5", 5), ("BN stats k=0 (cold)", 0)):
        model = loaded.model.eval() if k is None else cold_stats(loaded.model, k)
        rows = []
        for img, gt in data:
            x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                out = model(x)
            prob = torch.softmax(out["np"].float(), 1)[0, 1].numpy()
            hv = out["hv"][0].float().numpy()
            raw = wbis(prob, hv, params)
            clamped = wbis(prob, np.clip(hv, -1.0, 1.0), params)
            rows.append((float((np.abs(hv) > 1).mean()),
                         instance_metrics(gt, raw).aji, instance_metrics(gt, clamped).aji,
                         instance_metrics(raw, clamped).aji if raw.any() or clamped.any()
                         else 1.0))
        arr = np.asarray(rows)
        arr[:, 0] *= 100  # percent
        cells = [f"{arr[:, j].mean():.3f} ({arr[:, j].min():.3f}-{arr[:, j].max():.3f})"
                 for j in range(4)]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
