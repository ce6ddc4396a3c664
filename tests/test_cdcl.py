"""CDCL (method ``cdcl``, family ``cdcl``): loss pieces against hand computation, the
network against torchvision's DenseNet-161, the connected-components instances, option errors,
and an end-to-end run on synthetic data (train, model folder, evaluate, segment, resume)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.models import DenseNet, densenet161

from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.models.cdcl_net import CDCLNet, CDCLNetConfig, build_cdcl_net, load_densenet_weights
from ircr.postproc.components import ComponentParams, semantic_instances
from ircr.ssl.cdcl_loss import (
    BankEntries,
    MemoryBank,
    cross_patch_contrastive,
    embedding_labels,
    entropy_loss,
    patch_fc,
    pseudo_label_ce,
)
from ircr.train.config import experiment_from_dict

torch.set_num_threads(2)
# narrow width (growth 8, 16 initial features) at the paper's depth (6-12-36-24)
NARROW: dict[str, Any] = {"growth_rate": 8, "num_init_features": 16,
                          "decoder_channels": [32, 32, 32], "head_channels": 16, "proj_dim": 16}


# -- loss pieces ----------------------------------------------------------------------------
def test_contrastive_loss_hand_computed() -> None:
    # one image, embedding grid 1 x 2, one patch (patch_num 1) with both pixels foreground:
    # FC = 1 >= fdp, so both pixels are anchors
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # pixel 1 (1,0), 2 (0,1)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    labels = torch.ones(1, 1, 2, dtype=torch.long)
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    fc, pid = patch_fc(labels, valid, 1)
    assert fc.flatten().tolist() == [1.0]
    bank = BankEntries(emb=torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
                       label=torch.tensor([0, 0, 1]), fc=torch.tensor([0.0, 0.5, 0.0]))
    # entry 0: other label, FC 0 + 1 <= 0.3 + 0.7 -> negative; entry 1: FC 0.5 + 1 > 1 ->
    # not; entry 2: same label -> not. temp 0.5:
    # pixel 1: pos = 1/0.5 = 2, neg = 0 -> log(e^2 + 1) - 2 = log(1 + e^-2)
    # pixel 2: pos = 0, neg = 1/0.5 = 2 -> log(1 + e^2)
    loss, n = cross_patch_contrastive(s, t, labels, valid, fc, pid, bank, 0.3, 0.7, 0.5)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2  # 1.126928
    assert n == 1 and loss.item() == pytest.approx(expected, abs=1e-6)
    # a half-foreground patch is no anchor: loss 0, no anchor patch
    mixed = torch.tensor([[[1, 0]]])
    fc2, pid2 = patch_fc(mixed, valid, 1)
    loss2, n2 = cross_patch_contrastive(s, t, mixed, valid, fc2, pid2, bank, 0.3, 0.7, 0.5)
    assert n2 == 0 and loss2.item() == 0.0


def test_patch_fc_and_embedding_labels() -> None:
    labels = torch.tensor([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]])
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = False
    fc, pid = patch_fc(labels, valid, 2)
    # top-left: valid pixels (0,1), (1,0), (1,1) with labels 1, 1, 0 -> 2/3
    assert fc[0].flatten().tolist() == pytest.approx([2 / 3, 0.0, 0.0, 1.0])
    assert pid[0, 3, 3].item() == 3 and pid[0, 0, 2].item() == 1
    prob = torch.zeros(1, 8, 8)
    prob[0, :4, :4] = 0.9
    prob[0, 4:, 4:2 + 4] = 0.9  # half of the bottom-right 4x4 block: mean 0.45 -> 0
    v = torch.ones(1, 8, 8, dtype=torch.bool)
    v[0, 7, 0] = False
    lab, ve = embedding_labels(prob, v, (2, 2))
    assert lab[0].tolist() == [[1, 0], [0, 0]]
    assert ve[0].tolist() == [[True, True], [False, True]]


def test_pseudo_label_ce_and_entropy() -> None:
    student = torch.zeros(1, 2, 1, 3)
    student[0, 1, 0, 0] = math.log(3.0)  # p = (1/4, 3/4)
    teacher = torch.tensor([[0.05, 0.95], [0.4, 0.6], [0.95, 0.05]]).T.reshape(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    loss, frac = pseudo_label_ce(student, teacher, valid, 0.9)
    # only pixel 0 is valid and confident (label 1): -log(3/4), divided by 2 valid pixels
    assert loss.item() == pytest.approx(-math.log(0.75) / 2, abs=1e-6)
    assert frac == 0.5
    ent = entropy_loss(student, valid)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ent.item() == pytest.approx((h0 + math.log(2.0)) / 2, abs=1e-6)


def test_memory_bank_is_fifo() -> None:
    bank = MemoryBank(5)

    def entries(values: list[float]) -> BankEntries:
        x = torch.tensor(values)
        return BankEntries(x[:, None], x.long(), x)

    bank.push(entries([1, 2, 3]))
    bank.push(entries([4, 5, 6, 7]))
    got = bank.entries()
    assert got is not None and got.fc.tolist() == [3, 4, 5, 6, 7]
    restored = MemoryBank(5)
    restored.load_state_dict(bank.state_dict())
    again = restored.entries()
    assert again is not None and again.fc.tolist() == [3, 4, 5, 6, 7]


# -- network ------------------------------------------------------------------------------
def test_paper_encoder_is_densenet161() -> None:
    net = CDCLNet(CDCLNetConfig())
    ref = densenet161(weights=None).features.state_dict()
    ours = {k[len("encoder.features."):]: v for k, v in net.state_dict().items()
            if k.startswith("encoder.features.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == \
        {k: tuple(v.shape) for k, v in ref.items()}
    assert [net.get_submodule(f"up.{i}.conv").out_channels for i in range(3)] == [768, 384, 256]


def test_narrow_network_shapes_and_eval_dropout() -> None:
    torch.manual_seed(0)
    net = CDCLNet(CDCLNetConfig(**NARROW))  # type: ignore[arg-type]
    x = torch.rand(2, 3, 38, 45) * 255  # reflect-padded to 64 x 64 inside
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x, embed=False)
    assert a["np"].shape == (2, 2, 38, 45) and a["emb"].shape == (2, 16, 10, 12)
    assert "emb" not in b
    assert torch.equal(a["np"], b["np"])  # no dropout in eval mode (the released code had it)
    assert torch.allclose(a["emb"].norm(dim=1), torch.ones(2, 10, 12), atol=1e-5)


def test_densenet_weights_load_and_mismatch(tmp_path: Path) -> None:
    cfg = CDCLNetConfig(**NARROW)
    tv = DenseNet(growth_rate=8, block_config=(6, 12, 36, 24), num_init_features=16)
    state = tv.state_dict()
    # the ImageNet files' old key layout ("norm.1") is read too
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    torch.save(old, tmp_path / "densenet.pth")
    net = build_cdcl_net(CDCLNetConfig(**{**NARROW, "pretrained": str(tmp_path / "densenet.pth")}))
    report = net.pretrained_report
    assert report is not None and report.layout == "torchvision"
    assert report.unexpected == ["classifier.bias", "classifier.weight"]
    got = net.state_dict()
    for key in ("features.conv0.weight", "features.denseblock3.denselayer36.conv2.weight",
                "features.denseblock1.denselayer1.norm1.running_var"):
        assert torch.equal(got["encoder." + key], state[key])
    wide = DenseNet(growth_rate=12, block_config=(6, 12, 36, 24), num_init_features=16)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(IrcrError, match=r"wide.pth: tensor .* has shape"):
        load_densenet_weights(CDCLNet(cfg), tmp_path / "wide.pth")


# -- instances ----------------------------------------------------------------------------
def test_semantic_instances() -> None:
    prob = np.zeros((10, 12), np.float32)
    prob[1:4, 1:4] = 0.9  # 9 px
    prob[2, 2] = 0.1  # a hole, filled
    prob[6:9, 6:11] = 0.7  # 15 px
    prob[5, 5] = 0.8  # touches the second blob diagonally only: its own 1 px component
    prob[0, 11] = 0.6  # 1 px speckle
    inst = semantic_instances(prob, ComponentParams(min_area=2))
    assert inst.dtype == np.int32 and inst.max() == 2
    assert (inst == 1).sum() == 9 and (inst == 2).sum() == 15 and inst[5, 5] == 0
    inst8 = semantic_instances(prob, ComponentParams(min_area=2, connectivity=2))
    assert inst8.max() == 2 and (inst8 == 2).sum() == 16  # the diagonal pixel joins


# -- options ------------------------------------------------------------------------------
def _config(ds: Path, **method: object) -> dict[str, object]:
    return {
        "data": {"dataset": str(ds), "split": "ratio_1-2_seed0_val0.34", "patch_size": 64,
                 "context_margin": 16, "batch_size": 1, "batch_size_unlabelled": 2,
                 "workers": 0},
        "train": {"epochs": 1, "iterations_per_epoch": 2, "lr": 1e-3, "device": "cpu",
                  "amp": "off", "progress": False, "tensorboard": False, "val_every": 0,
                  "checkpoint_every": 1, "deterministic": True},
        "method": {"name": "cdcl", "model": {**NARROW, "block_config": [1, 1, 1, 1]},
                   "warmup_iterations": 1, "rampup_iterations": 1, "conf_threshold": 0.5,
                   "bank_size": 2000, **method},
        "eval": {"window": 64, "overlap": 16, "batch_size": 4},
    }


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match=r"cdcl.yaml: config key 'method.bdp_threshold' must be "
                                        r"< method.fdp_threshold"):
        experiment_from_dict(_config(tmp_path, bdp_threshold=0.8), "cdcl.yaml")
    with pytest.raises(IrcrError, match=r"unknown config key 'method.gamma1'"):
        experiment_from_dict(_config(tmp_path, gamma1=0.1), "cdcl.yaml")
    with pytest.raises(IrcrError, match=r"method.temperature' must be > 0"):
        experiment_from_dict(_config(tmp_path, temperature=0.0), "cdcl.yaml")
    with pytest.raises(IrcrError, match=r"model.block_config' must list 4"):
        experiment_from_dict(_config(tmp_path, model={"block_config": [6, 12]}), "cdcl.yaml")


# -- end to end on synthetic data -----------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cdcl_synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 3, "size": 128}, patch=64,
                    ratio="1/2", val_fraction=0.34)
    return out


def test_trains_resumes_writes_folder_evaluates_and_segments(synth: Path,
                                                              tmp_path: Path) -> None:
    from ircr import load_model
    from ircr.data.store import PreparedDataset
    from ircr.inference.evaluate import evaluate_folder
    from ircr.train.trainer import Trainer, TrainingInterrupted

    # no warm-up: the checkpoint after iteration 1 holds a filled memory bank
    cfg = experiment_from_dict(_config(synth, warmup_iterations=0), "cdcl.yaml")
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, run, stop_after=1).run()
    model_dir = Trainer(cfg, run, resume=True).run()
    row = list(csv.DictReader((run / "metrics.csv").open()))[-1]
    for key in ("sup", "cons", "ent", "contrast"):
        assert math.isfinite(float(row[f"train_{key}"]))
    assert float(row["train_ent"]) > 0 and float(row["train_anchor_patches"]) > 0
    assert "family: cdcl" in (model_dir / "model.yaml").read_text()
    res = evaluate_folder(model_dir, synth, split="val", progress=False, device="cpu")
    assert {"aji", "dice", "pq", "f1"} <= set(res.mean)
    assert all(math.isfinite(v) for v in res.mean.values())
    # the resumed run (teacher and memory bank restored) equals an uninterrupted one
    Trainer(cfg, tmp_path / "straight").run()
    a = torch.load(model_dir / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    tile = np.ascontiguousarray(PreparedDataset(synth).load_image(0))
    seg = load_model(model_dir, device="cpu").segment(tile, mpp=0.25)
    assert seg.inst.shape == tile.shape[:2] and seg.inst.dtype == np.int32


def test_ircr_pretrain_target_cdcl_loads_into_the_network(tmp_path: Path) -> None:
    from ircr.config import apply_overrides
    from ircr.data.synthetic import make_tile
    from ircr.models.pretrained import read_pretrain_file
    from ircr.train.pretrain import Pretrainer
    from ircr.train.pretrain_config import pretrain_config_from_dict

    over = ["target=cdcl", "densenet.growth_rate=8", "densenet.num_init_features=16",
            "densenet.block_config=[2,2,2,2]", "heads.hidden=32", "heads.dim=16",
            "heads.dense_hidden=16", "heads.dense_dim=8", "data.tile=64", "data.pool=4",
            "data.refresh=4", "data.batch_size=2", "views.size=64", "train.iterations=1",
            "train.warmup_iterations=0", "train.progress=false", "train.checkpoint_minutes=0",
            "train.device=cpu"]
    cfg = pretrain_config_from_dict(apply_overrides({}, over), "test")

    def tiles(k: int) -> np.ndarray:
        rng = np.random.default_rng(k)
        return np.stack([make_tile(rng, (64, 64))[0] for _ in range(4)])

    out = Pretrainer(cfg, tmp_path / "pt", tiles).run()
    _, meta, state = read_pretrain_file(out)
    assert meta["arch"]["family"] == "cdcl"
    net = build_cdcl_net(CDCLNetConfig(**{**NARROW, "block_config": [2, 2, 2, 2],
                                          "pretrained": str(out)}))
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)
    assert sum(k.startswith("encoder.") for k in own) == len(state)
    wrong = CDCLNetConfig(**{**NARROW, "block_config": [2, 2, 2, 3]})
    with pytest.raises(IrcrError, match=r"pretrained for cdcl .* block_config \[2, 2, 2, 2\]"):
        load_densenet_weights(CDCLNet(wrong), out)


def test_hovernet_pretrained_key_is_refused_and_pretrain_like(synth: Path, tmp_path: Path) -> None:
    from ircr.cli.pretrain import like_overrides
    from ircr.train.trainer import Trainer

    data = _config(synth)
    data["model"] = {"pretrained": str(tmp_path / "w.pth")}
    with pytest.raises(IrcrError, match=r"'model.pretrained' names HoVer-Net .* set "
                                        r"method.model.pretrained"):
        Trainer(experiment_from_dict(data, "cdcl.yaml"), tmp_path / "run")
    repo = Path(__file__).resolve().parents[1]
    assert like_overrides(repo / "configs/monuseg/cdcl/cpu/cdcl_r1-8_cpu.yaml") == [
        "target=cdcl", "densenet.growth_rate=8", "densenet.num_init_features=16"]
