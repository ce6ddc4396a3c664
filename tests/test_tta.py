"""Test-time augmentation (``--tta flips|d4``, :mod:`ircr.inference.tta`).

The mapping back of each mirrored/transposed pass is checked on a network that is exactly
equivariant by construction (HV = finite differences of a blurred input, NP from the blurred
input itself): averaging its passes must give its plain output, and each raw mirrored pass must
obey the hand rule (mirror x: the x map reversed and negated). On the packaged model and a real
MoNuSeg crop, the averaged maps must stay close to the plain ones (a wrong sign or swapped
channel would cancel the HV maps). Accuracy is measured in docs/models.md, not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

import ircr
from ircr.cli.main import main
from ircr.cli.options import TTA_CHOICES
from ircr.config import from_dict
from ircr.data.prepare import prepare_dataset
from ircr.engine.segmenter import NucleusSegmenter
from ircr.errors import IrcrError
from ircr.inference.evaluate import EvalConfig
from ircr.inference.family import get_family
from ircr.inference.predict import predict_maps
from ircr.inference.tta import TTA_MODES, FlipAveraged, check_tta, flip_averaged, tta_passes
from ircr.io.image import read_image, read_label_map

VAL_IMAGE = "TCGA-21-5784-01Z-00-DX1"


class Equivariant(nn.Module):
    """NP logits (-s, s) and HV (d/dx s, d/dy s) of s = 3x3-blurred channel mean (zero pad).

    Zero padding and symmetric kernels make it exactly equivariant: mirroring the input
    mirrors s, NP and negates the mirrored axis' derivative; transposing swaps the two."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s = F.avg_pool2d(x.mean(1, keepdim=True), 3, stride=1, padding=1,
                         count_include_pad=True)
        dx = F.conv2d(s, torch.tensor([[[[-1.0, 0.0, 1.0]]]]), padding=(0, 1))
        dy = F.conv2d(s, torch.tensor([[[[-1.0], [0.0], [1.0]]]]), padding=(1, 0))
        return {"np": torch.cat([-s, s], 1) / 50.0, "hv": torch.cat([dx, dy], 1) / 100.0}


def _real_crop(monuseg_root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(monuseg_root / "images" / f"{VAL_IMAGE}.tif")
    gt = read_label_map(monuseg_root / "labels_inst" / f"{VAL_IMAGE}.png")
    return image[:size, :size].copy(), gt[:size, :size].copy()


def test_modes_and_passes() -> None:
    assert TTA_MODES == ("off", "mirror", "flips", "d4")
    assert TTA_CHOICES == TTA_MODES  # the CLI's copy (parsing imports no torch)
    assert [tta_passes(m) for m in TTA_MODES] == [1, 2, 4, 8]
    net = Equivariant()
    assert flip_averaged(net, "off") is net
    assert flip_averaged(net, "flips") is flip_averaged(net, "flips")  # one per net and mode
    assert flip_averaged(net, "d4") is not flip_averaged(net, "flips")


@pytest.mark.parametrize("mode", ["mirror", "flips", "d4"])
def test_averaging_an_equivariant_net_gives_its_plain_output(mode: str) -> None:
    x = torch.rand(2, 3, 40, 56) * 255  # not square: the transposed passes change the shape
    net = Equivariant()
    with torch.inference_mode():
        plain, avg = net(x), FlipAveraged(net, mode)(x)
    assert avg["hv"].shape == plain["hv"].shape == (2, 2, 40, 56)
    torch.testing.assert_close(avg["hv"], plain["hv"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.softmax(avg["np"], 1), torch.softmax(plain["np"], 1),
                               atol=1e-6, rtol=1e-5)


def test_mirrored_passes_follow_the_hand_rule() -> None:
    """Mirror x: every map reversed along x and HV x negated (HV y kept); transpose: axes and
    HV channels swapped. What FlipAveraged undoes, checked on the raw network output."""
    x = torch.rand(1, 3, 24, 32) * 255
    net = Equivariant()
    with torch.inference_mode():
        hv = net(x)["hv"][0]
        hv_mx = net(x.flip(-1))["hv"][0]
        hv_t = net(x.transpose(-1, -2))["hv"][0]
    torch.testing.assert_close(hv_mx[0], -hv[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(hv_mx[1], hv[1].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(hv_t[0], hv[1].T, atol=1e-5, rtol=0)
    torch.testing.assert_close(hv_t[1], hv[0].T, atol=1e-5, rtol=0)
    assert (hv[0] - hv_mx[0].flip(-1)).abs().max() > 0.1  # without the sign: far off


def test_packaged_model_maps_stay_close_to_the_plain_ones(monuseg_root: Path) -> None:
    image, gt = _real_crop(monuseg_root, 256)
    seg = ircr.load_model("default", device="cpu")
    prob0, hv0 = predict_maps(seg.model, image, window=seg.window, overlap=seg.overlap)
    prob4, hv4 = predict_maps(flip_averaged(seg.model, "flips"), image, window=seg.window,
                              overlap=seg.overlap)
    assert np.corrcoef(prob0.ravel(), prob4.ravel())[0, 1] > 0.95
    for c in (0, 1):  # a wrong sign or swapped channel would cancel the averaged map
        assert np.corrcoef(hv0[c].ravel(), hv4[c].ravel())[0, 1] > 0.9
        assert 0.8 < hv4[c].std() / hv0[c].std() < 1.1
    assert not np.array_equal(prob0, prob4)
    n_gt = len(np.unique(gt)) - 1
    res = ircr.load_model("default", device="cpu", tta="flips").segment(image, mpp=0.25)
    n_pred = len(np.unique(res.inst[res.inst > 0]))
    assert 0.7 * n_gt < n_pred < 1.3 * n_gt


def test_only_hovernet_models_take_tta() -> None:
    with pytest.raises(IrcrError, match="needs a HoVer-Net model"):
        NucleusSegmenter(nn.Identity(), None, family=get_family("cdcl"), tta="flips")
    with pytest.raises(IrcrError, match="unknown test-time augmentation 'twice'"):
        check_tta("twice", "hovernet", "--tta")
    assert check_tta("off", "maskrcnn") == "off"
    with pytest.raises(IrcrError, match=r"run\.yaml: config key 'eval\.tta' must be 'off' \| "
                                        r"'mirror' \| 'flips' \| 'd4', got 'twice'"):
        from_dict(EvalConfig, {"tta": "twice"}, where="run.yaml", prefix="eval.")
    seg = NucleusSegmenter(Equivariant(), None, device="cpu", tta="d4")
    assert "TTA d4 (8 passes)" in seg.describe()
    assert seg.setting().tta == "d4"


def test_cli_segment_evaluate_and_tune_with_tta(monuseg_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = _real_crop(monuseg_root, 192)
    Image.fromarray(image).save(tmp_path / "tile.png")
    rc = main(["segment", str(tmp_path / "tile.png"), "-o", str(tmp_path / "out"), "--mpp",
               "0.25", "--device", "cpu", "--no-progress", "--outputs", "summary",
               "--tta", "flips"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "tile_summary.json").read_text())
    assert summary["model_meta"]["inference"]["tta"] == "flips"
    assert summary["n_nuclei"] > 5
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(tmp_path / "tile.png"), "-o", str(tmp_path / "o2"), "--tta",
              "twice"])
    assert exc.value.code == 2
    assert "invalid choice: 'twice'" in capsys.readouterr().err

    ds = tmp_path / "synth"
    prepare_dataset("synthetic", None, ds, options={"n_images": 2, "size": 96}, patch=64,
                    ratio="1", val_fraction=0.5)
    rc = main(["evaluate", "default", str(ds), "--split", "all", "--out", str(tmp_path / "ev"),
               "--device", "cpu", "--no-progress", "--tta", "d4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TTA d4" in out
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["eval"]["tta"] == "d4"
    rc = main(["tune-postproc", "default", str(ds), "--split", "all", "--out",
               str(tmp_path / "tuned"), "--device", "cpu", "--no-progress", "--tta", "flips",
               "--grid", "threshold=0.5", "--grid", "marker_threshold=0.5", "--grid", "ksize=21",
               "--grid", "min_size=10", "--grid", "min_prob=0"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "tuned" / "tuning.json").read_text())["tta"] == "flips"
