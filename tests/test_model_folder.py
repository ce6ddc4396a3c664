"""Self-describing model folder: round trip and one-line errors for every broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder, save_model_folder
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams

torch.set_num_threads(1)

POSTPROC = {"threshold": 0.5, "min_size": 10, "ksize": 21, "marker_threshold": 0.4,
            "marker_min_size": 10, "open_ksize": 5, "scale": 1.0}


def make_folder(tmp_path: Path, **kw: object) -> tuple[Path, torch.nn.Module, ModelConfig]:
    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1], nr_types=3,
                      pretrained="/does/not/exist.pth")
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained=False)
    with torch.no_grad():  # make BN statistics non-trivial so that they must round-trip
        model.train()(torch.rand(2, 3, 32, 32) * 255)
    args: dict = {"mpp": 0.25, "patch_size": 256, "postproc": POSTPROC}
    args.update(kw)
    folder = save_model_folder(tmp_path / "model", model, cfg, **args)  # type: ignore[arg-type]
    return folder, model, cfg


def test_round_trip(tmp_path: Path) -> None:
    prior = tmp_path / "my_prior.npz"
    np.savez(prior, bandwidth=np.array([0.5]))
    folder, model, cfg = make_folder(
        tmp_path,
        metrics={"aji": 0.61, "pq": 0.55},
        prior_file=prior,
        extra={"method": "ircr", "train": {"epochs": 3, "dataset": "monuseg"}},
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["metrics.json", "model.yaml", "postproc.yaml", "prior.npz", "weights.pt"]
    loaded = load_model_folder(folder)
    assert not loaded.model.training
    assert loaded.model_cfg == cfg
    assert loaded.postproc == WBISParams(**POSTPROC)  # parsed once, at load
    assert loaded.mpp == 0.25 and loaded.patch_size == 256
    assert loaded.meta["method"] == "ircr" and loaded.meta["train"]["epochs"] == 3
    assert loaded.meta["ircr_version"]
    assert loaded.metrics == {"aji": 0.61, "pq": 0.55}
    assert loaded.prior_file is not None and loaded.prior_file.read_bytes() == prior.read_bytes()
    assert loaded.folder == folder
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        a, b = model.eval()(x), loaded.model(x)
    for key in ("np", "hv", "tp"):
        assert torch.equal(a[key], b[key])


def test_weights_are_a_plain_state_dict_and_no_temp_files(tmp_path: Path) -> None:
    folder, model, _ = make_folder(tmp_path)
    make_folder(tmp_path)  # overwrite in place
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    assert sorted(p.name for p in folder.iterdir()) == ["model.yaml", "postproc.yaml", "weights.pt"]
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert meta["model"]["width"] == 0.125 and meta["mpp"] == 0.25 and meta["patch_size"] == 256
    loaded = load_model_folder(folder)
    assert loaded.metrics is None and loaded.prior_file is None


def test_mpp_may_be_unknown(tmp_path: Path) -> None:
    folder, _, _ = make_folder(tmp_path, mpp=None)
    assert load_model_folder(folder).mpp is None


def test_reserved_extra_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        make_folder(tmp_path, extra={"model": 1})
    with pytest.raises(IrcrError, match="nope.npz: prior file not found"):
        make_folder(tmp_path, prior_file=tmp_path / "nope.npz")


@pytest.mark.parametrize("name", ["model.yaml", "postproc.yaml", "weights.pt"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    folder, _, _ = make_folder(tmp_path)
    (folder / name).unlink()
    with pytest.raises(IrcrError, match=f"{name}: missing from the model folder"):
        load_model_folder(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="nowhere: model folder not found"):
        load_model_folder(tmp_path / "nowhere")


def test_corrupt_files(tmp_path: Path) -> None:
    folder, _, _ = make_folder(tmp_path)
    weights = folder / "weights.pt"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(IrcrError, match="weights.pt: corrupt or unreadable") as err:
        load_model_folder(folder)
    assert "\n" not in str(err.value)
    weights.write_bytes(good)
    (folder / "postproc.yaml").write_text("threshold: [0.5\n")
    with pytest.raises(IrcrError, match=r"postproc.yaml: invalid YAML \(line 2\)"):
        load_model_folder(folder)
    (folder / "postproc.yaml").write_text(yaml.safe_dump(POSTPROC))
    (folder / "metrics.json").write_text("{")
    with pytest.raises(IrcrError, match="metrics.json: corrupt JSON"):
        load_model_folder(folder)
    (folder / "metrics.json").write_text(json.dumps({"aji": 0.5}))
    assert load_model_folder(folder).metrics == {"aji": 0.5}


def test_model_yaml_problems(tmp_path: Path) -> None:
    folder, _, _ = make_folder(tmp_path)
    yml = folder / "model.yaml"
    meta = yaml.safe_load(yml.read_text())
    bad = dict(meta, model=dict(meta["model"], depth=4))
    yml.write_text(yaml.safe_dump(bad))
    with pytest.raises(IrcrError, match="model.yaml: unknown config key 'model.depth'"):
        load_model_folder(folder)
    yml.write_text(yaml.safe_dump(dict(meta, patch_size=-3)))
    with pytest.raises(IrcrError, match="model.yaml: 'patch_size'"):
        load_model_folder(folder)
    # weights that do not fit the architecture described in model.yaml
    yml.write_text(yaml.safe_dump(dict(meta, model=dict(meta["model"], width=0.25))))
    with pytest.raises(IrcrError, match=r"weights.pt: tensor 'encoder.conv0.conv.weight' has"):
        load_model_folder(folder)
    yml.write_text(yaml.safe_dump(dict(meta, model=dict(meta["model"], nr_types=None))))
    with pytest.raises(IrcrError, match="weights.pt: unexpected tensor 'decoder.tp"):
        load_model_folder(folder)
