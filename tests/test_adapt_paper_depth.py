"""One ``ircr adapt`` step of the paper-depth network (narrow width) on a real MoNuSeg tile.

test_adapt.py adapts the packaged (lite) model; this one starts from a model folder of the
paper's depth (encoder blocks 3-4-6-3, decoder units 8-4) at width 1/8, so the adaptation
path (tile sampling, init weights, IRCR step with the EMA teacher, model folder) is also
run on the architecture of the paper.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from ircr.engine.adapt import AdaptRequest, run_adapt
from ircr.inference.model_folder import load_model_folder, save_model_folder
from ircr.models import build_model
from ircr.models.config import ModelConfig
from ircr.postproc.watershed import WBISParams

PAPER_DEPTH = ModelConfig(width=0.125, blocks=[3, 4, 6, 3], decoder_units=[8, 4])


def test_one_adapt_step_at_paper_depth_on_a_real_tile(monuseg_root: Path,
                                                      tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = save_model_folder(tmp_path / "source", build_model(PAPER_DEPTH), PAPER_DEPTH,
                            asdict(WBISParams()), mpp=0.25, patch_size=64)
    tile = sorted((monuseg_root / "images").glob("*.tif"))[0]  # 40x, about 0.25 µm/px
    out = tmp_path / "adapted"
    folder = run_adapt(AdaptRequest(
        model=str(src), targets=[str(tile)], out=str(out), labelled="none", mpp=0.25,
        tiles=2, tile_size=64, iterations=1, seed=0, device="cpu", threads=1, progress=False,
        overrides=["data.workers=0", "data.batch_size_unlabelled=1",
                   "train.deterministic=false"]))  # (its import of torch._inductor: 10 s)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(float(r["iterations"])) for r in rows] == [1]
    loss = float(rows[0]["train_loss"])
    assert math.isfinite(loss) and loss > 0  # unlabelled only: the consistency terms
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert (meta["model"]["blocks"], meta["model"]["decoder_units"]) == ([3, 4, 6, 3], [8, 4])
    assert meta["adapt"]["targets"] == [str(tile)] and meta["adapt"]["iterations"] == 1
    before, after = (load_model_folder(f).model for f in (src, folder))
    assert all(torch.isfinite(v).all() for v in after.state_dict().values()
               if v.is_floating_point())
    old = dict(before.named_parameters())
    changed = [k for k, v in after.named_parameters() if not torch.equal(v, old[k])]
    assert changed, "the adapt step did not change the weights (parameters, not BN buffers)"
