"""``train.amp: off`` (a paper-exact run: float32 everywhere, no bf16 autocast on CUDA).

The key is validated, means float32 on every device, changes nothing on a CUDA-less CPU
(where ``auto`` never autocasts either) and is recorded in the run (config.yaml) and in the
model folder (``train.autocast``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.inference.device import amp_dtype
from ircr.train.config import experiment_from_dict
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ampsynth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 3, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.34)
    return out


def config(ds: Path, **train: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    split = next(p.stem for p in (ds / "splits").glob("*.yaml"))
    data["data"].update(dataset=str(ds), split=split)
    data["train"].update({"progress": False, "epochs": 1, "iterations_per_epoch": 2,
                          "val_every": 0, "device": "cpu", **train})
    return data


def test_amp_off_is_validated_and_float32_everywhere(synth: Path) -> None:
    # YAML 1.1 reads an unquoted off as False: both spellings mean "off"
    for value in ("off", False):
        cfg = experiment_from_dict(config(synth, amp=value), "t.yaml")
        assert cfg.train.amp == "off"
    with pytest.raises(IrcrError, match="train.amp"):
        experiment_from_dict(config(synth, amp="fp8"), "t.yaml")
    for dev in ("cpu", "cuda", "mps"):  # the rule itself needs no device
        assert amp_dtype("off", torch.device(dev)) is None
    assert amp_dtype("auto", torch.device("cpu")) is None  # CPU never autocasts by default


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto means bf16 on this CUDA machine")
def test_amp_off_changes_nothing_on_cpu_and_is_recorded(synth: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    states = {}
    for amp in ("off", "auto"):
        tr = Trainer(experiment_from_dict(config(synth, amp=amp), "t.yaml"), tmp_path / amp,
                     config_source="t.yaml")
        assert tr.amp is None
        with tr.autocast():
            out = tr.model(torch.zeros(1, 3, 64, 64))
        assert all(v.dtype == torch.float32 for v in out.values())
        model_dir = tr.run()
        states[amp] = {k: v.clone() for k, v in tr.model.state_dict().items()}
        assert read_yaml(tmp_path / amp / "config.yaml")["train"]["amp"] == amp
        assert read_yaml(model_dir / "model.yaml")["train"]["autocast"] == "off"
    assert states["off"].keys() == states["auto"].keys()
    for k, v in states["off"].items():
        assert torch.equal(v, states["auto"][k]), k  # identical training, bit for bit
