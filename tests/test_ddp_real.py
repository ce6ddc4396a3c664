"""One DDP step (2 gloo ranks, the ``ircr train --nproc 2`` code path of
``ircr.train.distributed``) of the paper-depth network (narrow width) on real MoNuSeg patches.

The ranks are started by ``torch.multiprocessing.spawn`` with torchrun's environment (as in
test_ddp.py; the torchrun launcher itself is ``test_ddp.py::test_torchrun_cli``, slow).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp

from ddp_helpers import free_port, paper_depth_step
from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset


@pytest.fixture(scope="module")
def monuseg_one(monuseg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real MoNuSeg tile cut into 64 px patches, 1/4 of them labelled."""
    out = tmp_path_factory.mktemp("monuseg1") / "ds"
    prepare_dataset("monuseg", monuseg_root, out, limit=1, patch=64, ratio="1/4",
                    val_fraction=0.0)
    return out


def test_one_ddp_step_at_paper_depth_on_real_patches(monuseg_one: Path, tmp_path: Path) -> None:
    split = "ratio_1-4_seed0_val0"
    assert (monuseg_one / "splits" / f"{split}.yaml").is_file()
    tmp.spawn(paper_depth_step, args=(2, free_port(), str(monuseg_one), split, str(tmp_path)),
              nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] == 1
    model = read_yaml(tmp_path / "run" / "config.yaml")["model"]
    assert (model["blocks"], model["decoder_units"]) == ([3, 4, 6, 3], [8, 4])  # paper depth
    for key in ("start", "model", "teacher"):  # one start; after the step still equal
        assert r0[key].keys() == r1[key].keys() and r0[key]
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    moved = max(float((r0["model"][k] - r0["start"][k]).abs().max()) for k in r0["model"]
                if torch.is_floating_point(r0["model"][k]))
    assert moved > 1e-5  # the step changed the weights: "equal" above means something
    own = [r0["own_loss"][0], r1["own_loss"][0]]
    assert all(math.isfinite(v) and v > 0 for v in own)
    assert own[0] != own[1]  # each rank trained on its own patches
    assert r0["mean_loss"] == pytest.approx(sum(own) / 2, rel=1e-5)  # the ranks' mean logged
