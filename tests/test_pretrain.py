"""ircr pretrain: objective on real MoNuSeg tiles, weights into HoVer-Net / BASS backbone,
mismatches refused, Ctrl-C/SIGTERM + resume exact, deterministic, views exact, CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ircr.cli.main import main
from ircr.config import apply_overrides
from ircr.engine.tile_source import open_tile_sources, sample_tiles
from ircr.errors import IrcrError
from ircr.models import ModelConfig, build_model
from ircr.models.pretrained import load_pretrained, read_pretrain_file
from ircr.ssl.views import ViewConfig, ViewParams, correspondence, hed_jitter, render_views
from ircr.train.pretrain import Pretrainer
from ircr.train.pretrain_config import PretrainConfig, pretrain_config_from_dict
from ircr.train.stop import TrainingStopped

TINY = ["model.width=0.125", "model.blocks=[1,1,1,1]", "heads.hidden=64", "heads.dim=32",
        "heads.dense_hidden=32", "heads.dense_dim=16", "data.tile=64", "data.pool=8",
        "data.refresh=4", "data.batch_size=4", "views.size=64", "train.warmup_iterations=2",
        "train.progress=false", "train.log_every=1", "train.checkpoint_minutes=0",
        "train.device=cpu"]


def tiny_cfg(*extra: str) -> PretrainConfig:
    return pretrain_config_from_dict(apply_overrides({}, [*TINY, *extra]), "test")


def synthetic_tiles(k: int, n: int = 8, size: int = 64) -> np.ndarray:
    from ircr.data.synthetic import make_tile

    rng = np.random.default_rng(1000 + k)
    return np.stack([make_tile(rng, (size, size))[0] for _ in range(n)])


def pretrain(out: Path, *extra: str, **kw: Any) -> Path:
    cfg = tiny_cfg(*extra)
    return Pretrainer(cfg, out, lambda k: synthetic_tiles(k, cfg.data.pool, cfg.data.tile),
                      **kw).run()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_pretrain_file(folder)[2]


# ------------------------------------------------------------------ objective, real data
def test_objective_decreases_on_real_monuseg_tiles(monuseg_root: Path, tmp_path: Path) -> None:
    files = sorted((monuseg_root / "images").glob("*.tif"))[:3]
    sources, _ = open_tile_sources(files, target_mpp=0.5, mpp_override=0.25)
    cfg = tiny_cfg("train.iterations=40", "train.lr=2e-3", "data.refresh=40", "data.pool=32")
    trainer = Pretrainer(cfg, tmp_path / "pt", lambda k: sample_tiles(sources, 32, 64, seed=k))
    losses: list[float] = []
    trainer.on_step = lambda t: losses.append(t.rows[-1]["loss"])
    trainer.run()
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert np.isfinite(losses).all() and last < first - 0.2, (first, last)
    card = json.loads((tmp_path / "pt" / "card.json").read_text())
    assert card["steps"] == 40 and card["tensors"] == len(weights(tmp_path / "pt"))


# ------------------------------------------------------------------ loading
@pytest.mark.parametrize("arch", [["model.encoder=preact"],
                                  ["model.encoder=resnet", "model.blocks=[1,2,1,1]"]])
def test_weights_load_into_the_hovernet_of_that_model(tmp_path: Path, arch: list[str]) -> None:
    out = pretrain(tmp_path / "pt", "train.iterations=2", *arch)
    cfg = tiny_cfg(*arch).model
    # the file is a plain weights_only torch file
    obj = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)
    assert obj["ircr_pretrain"]["arch"]["encoder"] == cfg.encoder
    cfg.pretrained = str(out)
    model = build_model(cfg)
    n_encoder = sum(1 for k in model.state_dict() if k.startswith("encoder."))
    report = model.pretrained_report
    assert report is not None and len(report.loaded) == n_encoder  # type: ignore[attr-defined]
    assert "pretrained 2 iterations at 0.25 µm/px" in report.summary()  # type: ignore[attr-defined]
    sd = model.state_dict()
    for k, v in weights(out).items():
        assert torch.equal(sd[k], v), k
    fresh = build_model(ModelConfig(**{**cfg.__dict__, "pretrained": None}))
    assert not torch.equal(fresh.state_dict()["encoder.d3.units.0.conv1.weight"]
                           if cfg.encoder == "preact" else
                           fresh.state_dict()["encoder.layer4.0.conv1.weight"],
                           sd["encoder.d3.units.0.conv1.weight"] if cfg.encoder == "preact"
                           else sd["encoder.layer4.0.conv1.weight"])


def test_mismatches_are_refused_with_one_line(tmp_path: Path) -> None:
    out = pretrain(tmp_path / "pt", "train.iterations=1")
    base = tiny_cfg().model
    cases = {"model.width 0.125 != 0.25": {"width": 0.25},
             "model.blocks [1, 1, 1, 1] != [1, 2, 1, 1]": {"blocks": [1, 2, 1, 1]},
             "model.encoder preact != resnet": {"encoder": "resnet"}}
    for expected, change in cases.items():
        model = build_model(ModelConfig(**{**base.__dict__, **change}), load_pretrained=False)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(IrcrError) as err:
            load_pretrained(model, out)
        msg = str(err.value)
        assert expected in msg and "\n" not in msg and str(out / "encoder.pt") in msg
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bad = tmp_path / "bad" / "encoder.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage")
    with pytest.raises(IrcrError, match="cannot read as a torch weights file"):
        load_pretrained(build_model(base, load_pretrained=False), bad.parent)
    torch.save({"state_dict": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(IrcrError, match="not an `ircr pretrain` weights file"):
        load_pretrained(build_model(base, load_pretrained=False), bad)


def test_weights_load_into_the_bass_backbone(tmp_path: Path) -> None:
    from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn

    out = pretrain(tmp_path / "pt", "target=maskrcnn", "backbone=tiny",
                   "tiny_channels=[8,8,16,16]", "train.iterations=2")
    cfg = MaskRCNNConfig(backbone="tiny", tiny_channels=[8, 8, 16, 16], backbone_weights=str(out),
                         fpn_channels=16, min_size=[64], max_size=64)
    model = build_maskrcnn(cfg)
    body = model.backbone.body
    w = weights(out)
    assert len(model.backbone.pretrained_report.loaded) == len(w) > 0
    sd = body.state_dict()
    for k, v in w.items():
        if k in sd:  # frozen BN keeps weight/bias/running stats (no num_batches_tracked)
            assert torch.equal(sd[k], v), k
    assert sum(k in sd for k in w) >= len(w) - sum(k.endswith("num_batches_tracked") for k in w)
    cfg.tiny_channels = [8, 8, 16, 32]
    with pytest.raises(IrcrError, match=r"tiny_channels \[8, 8, 16, 16\] != \[8, 8, 16, 32\]"):
        build_maskrcnn(cfg)
    hov = pretrain(tmp_path / "hov", "train.iterations=1")
    cfg.tiny_channels, cfg.backbone_weights = [8, 8, 16, 16], str(hov)
    with pytest.raises(IrcrError, match="pretrained for a hovernet encoder"):
        build_maskrcnn(cfg)


# ------------------------------------------------------------------ stop, resume, determinism
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = pretrain(tmp_path / "whole", "train.iterations=6")

    def kill_at_3(t: Pretrainer) -> None:
        if t.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingStopped, match="resume with"):
        pretrain(tmp_path / "cut", "train.iterations=6", on_step=kill_at_3)
    assert not (tmp_path / "cut" / "encoder.pt").exists()  # nothing that looks complete
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt",
                      weights_only=True)["iteration"] == 3  # checkpoint at the next boundary
    resumed = pretrain(tmp_path / "cut", "train.iterations=6", resume=True)
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(json.dumps(r)) for r in
            (Path(whole) / "metrics.csv").read_text().splitlines()]
    assert len(rows) == 7
    strip = [line.rsplit(",", 1)[0] for line in rows]  # it/s differs
    assert strip == [line.rsplit(",", 1)[0] for line in
                     (Path(resumed) / "metrics.csv").read_text().splitlines()]
    # a second fresh run with the same seed: the same bytes; another seed: different weights
    again = weights(pretrain(tmp_path / "again", "train.iterations=6"))
    assert all(torch.equal(a[k], again[k]) for k in a)
    other = weights(pretrain(tmp_path / "other", "train.iterations=6", "train.seed=1"))
    assert not all(torch.equal(a[k], other[k]) for k in a)
    with pytest.raises(IrcrError, match="already holds a pretraining run"):
        pretrain(tmp_path / "whole", "train.iterations=6")
    with pytest.raises(IrcrError, match="config differs"):
        pretrain(tmp_path / "cut", "train.iterations=7", resume=True)


# ------------------------------------------------------------------ views
def test_views_correspondence_is_exact_and_hed_identity() -> None:
    size = 32
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    tile = torch.stack([xx, yy, xx * 0]).unsqueeze(0).repeat(4, 1, 1, 1)
    from ircr.ssl.views import sample_views

    rng = np.random.default_rng(0)
    cfg = ViewConfig(size=size, scale=[0.5, 0.5], blur_p=0.0)
    pa, pb = sample_views(rng, 4, cfg), sample_views(rng, 4, cfg)
    grid = torch.nn.functional.affine_grid
    sample = torch.nn.functional.grid_sample

    def geometry_only(p: ViewParams) -> torch.Tensor:
        g = grid(torch.as_tensor(p.theta, dtype=torch.float32), [4, 3, size, size],
                 align_corners=False)
        return sample(tile, g, mode="bilinear", padding_mode="border", align_corners=False)

    va, vb = geometry_only(pa), geometry_only(pb)
    g, valid = correspondence(torch.as_tensor(pa.theta, dtype=torch.float32),
                              torch.as_tensor(pb.theta, dtype=torch.float32), size, size)
    vb_at_a = sample(vb, g, mode="bilinear", padding_mode="border", align_corners=False)
    inner = valid & (g.abs() < 1 - 2 / size).all(-1)  # away from B's border pixels
    assert inner.any()
    err = (vb_at_a - va).abs()[:, :2].amax(1)[inner]
    assert float(err.max()) < 1e-3  # the same tile coordinates in both views
    x = torch.rand(2, 3, 8, 8) * 255
    same = hed_jitter(x, torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.allclose(same, x, atol=1e-3)
    # more haematoxylin darkens red and green most (its stain vector is strongest there)
    darker = hed_jitter(torch.full((1, 3, 1, 1), 200.0), torch.tensor([[1.5, 1, 1]]),
                        torch.zeros(1, 3))
    assert (darker < 200).all()
    ident = ViewParams(pa.theta, np.ones((4, 3)), np.zeros((4, 3)), np.zeros(4), np.ones(4),
                       np.zeros(4))
    rendered = render_views(tile * 2, ident, size)
    assert rendered.shape == (4, 3, size, size) and rendered.min() >= 0


# ------------------------------------------------------------------ CLI
def test_cli_pretrain_writes_weights_and_card(monuseg_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((monuseg_root / "images").glob("*.tif"))[:2]:
        (imgs / f.name).symlink_to(f)
    (imgs / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    like = tmp_path / "experiment.yaml"  # an `ircr train` config: its architecture is taken
    like.write_text("model: {encoder: resnet, width: 0.125, blocks: [1, 2, 1, 1]}\n")
    tiny = [kv for kv in TINY if not kv.startswith("model.")]
    args = ["pretrain", "-o", str(out), str(imgs), "--mpp", "0.25", "--device", "cpu",
            "--no-progress", "--like", str(like), *[x for kv in tiny for x in ("--set", kv)],
            "--set", "train.iterations=3", "--set", "data.mpp=0.5"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped" in captured.err
    card = json.loads((out / "card.json").read_text())
    assert card["steps"] == 3 and len(card["sources"]) == 2 and len(card["skipped"]) == 1
    assert card["mpp"] == 0.5 and "torch" in card["versions"] and card["cpu_seconds"] >= 0
    assert card["arch"] == {"family": "hovernet", "encoder": "resnet", "width": 0.125,
                            "blocks": [1, 2, 1, 1]}
    assert main(args + ["--resume"]) == 0  # a finished run: nothing to do
    assert main(["pretrain", "-o", str(tmp_path / "x"), str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ircr: error:") and "no usable image" in err[-1]


def test_shipped_pretrain_configs_load() -> None:
    from ircr.train.pretrain_config import load_pretrain_config

    root = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    cfgs = {p.stem: load_pretrain_config(p) for p in sorted(root.glob("*.yaml"))}
    assert {"cpu_lite", "cpu_paper_narrow", "gpu_hovernet", "gpu_bass_r50"} <= set(cfgs)
    assert cfgs["gpu_hovernet"].model.width == 1.0 and cfgs["gpu_bass_r50"].backbone == "resnet50"
    assert all(c.train.max_minutes <= 10 for n, c in cfgs.items() if n.startswith("gpu"))


def test_max_minutes_writes_an_incomplete_card_and_resume_finishes(tmp_path: Path) -> None:
    out = pretrain(tmp_path / "pt", "train.iterations=3", "train.max_minutes=1e-9")
    card = json.loads((out / "card.json").read_text())
    assert card["complete"] is False and card["steps"] < 3
    out = pretrain(tmp_path / "pt", "train.iterations=3", resume=True)
    card = json.loads((out / "card.json").read_text())
    assert card["complete"] is True and card["steps"] == 3


def test_like_takes_the_architecture_of_experiment_configs() -> None:
    from ircr.cli.pretrain import like_overrides

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert like_overrides(configs / "monuseg" / "bass" / "bass_r1-8.yaml")[:2] == [
        "target=maskrcnn", "backbone=resnet50"]
    lite = like_overrides(configs / "default_model" / "lite_monuseg.yaml")
    assert lite == ["target=hovernet", "model.width=0.25", "model.blocks=[2, 2, 2, 2]"]
