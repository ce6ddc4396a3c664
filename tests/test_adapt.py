"""``ircr adapt`` (issue 22): from the packaged model to real CPM-15 tiles without their labels.

CPU, small: 4 tiles of 128 px at the default model's 0.25 µm/px (CPM-15's 40x images),
a handful of iterations. Covered: end to end through the CLI to an ordinary model folder
that segments, the card, WBIS kept; bad targets (corrupt file, no tissue, no mpp) one line
each while the run goes on; target labels never opened; Ctrl-C then --resume equals an
uninterrupted run; a diverging run stops with one line and writes no model folder; labelled
source data; the trainer hooks (``train.init_weights``, ``data.batch_size: 0``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ircr.cli.main import main
from ircr.data.prepare import prepare_dataset
from ircr.engine.adapt import AdaptRequest, run_adapt
from ircr.engine.adapt_data import labelled_choice
from ircr.engine.packaged import resolve_model
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder
from ircr.models import build_model
from ircr.models.config import ModelConfig
from ircr.train.checkpoint import load_checkpoint
from ircr.train.init_weights import load_init_weights
from ircr.train.stop import TrainingStopped
from ircr.train.trainer import Trainer

DPI_025 = 25400 / 0.25  # PNG dpi of 0.25 µm/px (the default model's pixel size)
FAST = ["--tiles", "4", "--tile-size", "128", "--no-progress", "--device", "cpu",
        "--threads", "1", "--set", "data.workers=0", "--set", "data.batch_size_unlabelled=2"]


@pytest.fixture(scope="module")
def lab(cpm15_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two 40x CPM-15 images with their pixel size (dpi) and, beside them, their labels;
    plus three bad targets: a corrupt file, a glass-only image, an image without mpp."""
    from ircr.data.datasets.cpm15 import read_cpm15_mask
    from ircr.io.image import read_image

    base = tmp_path_factory.mktemp("lab")
    root = base / "dataset_root"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    wanted = {"image08", "image11"}  # 40x (0.25 µm/px)
    for name in wanted:
        image = read_image(cpm15_root / "images" / f"{name}.png")
        Image.fromarray(image).save(root / "images" / f"{name}.png", dpi=(DPI_025,) * 2)
        inst = read_cpm15_mask(cpm15_root / "labels_txt" / f"{name}_mask.txt.gz")
        Image.fromarray(inst.astype(np.uint16)).save(root / "labels" / f"{name}.png")
    bad = base / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.full((300, 300, 3), 245, np.uint8)).save(bad / "glass.png",
                                                                dpi=(DPI_025,) * 2)
    Image.open(root / "images" / "image08.png").save(bad / "no_mpp.png")  # no dpi
    return {"root": root, "good": [root / "images" / f"{n}.png" for n in sorted(wanted)],
            "bad": [bad / "corrupt.png", bad / "glass.png", bad / "no_mpp.png"],
            "labels": [root / "labels", cpm15_root / "labels_txt"]}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**state["model"], **{f"teacher.{k}": v for k, v in
                                 state["method"]["teacher"].items()}}


def test_adapt_end_to_end_from_the_packaged_model_never_opens_target_labels(
        lab: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    opened: list[str] = []
    active = [True]  # audit hooks cannot be removed: this one goes quiet after the run

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event == "open" and args and isinstance(args[0], (str, bytes,
                                                                            os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    def no_labels(*a: Any, **k: Any) -> Any:
        raise AssertionError("a label reader was called")

    monkeypatch.setattr("ircr.io.image.read_label_map", no_labels)
    monkeypatch.setattr("ircr.data.store.PreparedDataset.load_inst", no_labels)
    sys.addaudithook(audit)
    out = tmp_path / "adapted"
    targets = [str(lab["root"]), *map(str, lab["bad"])]  # the root holds labels/ too
    try:
        rc = main(["adapt", "default", *targets, "-o", str(out), "--iterations", "4", *FAST])
    finally:
        active[0] = False
    trace = list(opened)
    assert any(str(lab["root"] / "images") in p for p in trace)  # the hook saw the reads
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not [p for p in trace for d in lab["labels"] if str(d) in p], "a label file was opened"
    # bad targets: one line each while the run goes on, and listed again at the end
    for bad in lab["bad"]:
        lines = [ln for ln in err.splitlines() if str(bad) in ln]
        assert len(lines) == 2, (bad, lines)  # when skipped + in the closing list
    assert "3 target(s) skipped" in err
    assert "2 file(s) under label/mask folders left out" in err
    assert "labelled data: none" in err
    # an ordinary model folder: the default's WBIS thresholds and pixel size, a card
    folder = out / "model"
    src = load_model_folder(resolve_model("default"))
    got = load_model_folder(folder)
    assert got.postproc == src.postproc and got.mpp == 0.25
    assert got.inference == src.inference
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert meta["adapt"]["source_model"] == "default"
    assert len(meta["adapt"]["skipped_targets"]) == 3
    assert meta["adapt"]["iterations"] == 4 and meta["adapt"]["labelled"] is None
    assert "adapted" in meta["card"]["description"]
    # on CPU the adaptation trains in NHWC, as the default model did (oneDNN's faster path)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["channels_last"] is True
    changed = [k for k, v in got.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, src.model.state_dict()[k])]
    assert changed, "adaptation did not change the weights"
    from ircr import load_model

    image = np.asarray(Image.open(lab["good"][0]).convert("RGB"))[:256, :256]
    res = load_model(str(folder), device="cpu").segment(image, mpp=0.25)
    assert res.inst.shape == (256, 256) and res.inst.max() > 0
    request = json.loads((out / "adapt.json").read_text())
    assert request["request"]["targets"][0] == str(lab["root"].resolve())
    assert sorted(meta["adapt"]["targets"]) == sorted(map(str, lab["good"]))


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(
        lab: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def req(out: Path) -> AdaptRequest:
        return AdaptRequest(model="default", targets=[str(p) for p in lab["good"]],
                            out=str(out), tiles=4, tile_size=128, iterations=4, seed=3,
                            device="cpu", threads=1, progress=False,
                            overrides=["data.workers=0", "data.batch_size_unlabelled=2",
                                       "train.checkpoint_every=1"])

    run_adapt(req(tmp_path / "full"))
    real = Trainer._step

    def step(self: Trainer, batch: Any, bar: Any) -> None:
        real(self, batch, bar)
        if self.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "_step", step)
    with pytest.raises(TrainingStopped, match="ircr adapt command and --resume"):
        run_adapt(req(tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "_step", real)
    assert not (tmp_path / "cut" / "model" / "model.yaml").exists()
    run_adapt(req(tmp_path / "cut"), resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(IrcrError, match="another seed"):
        changed = req(tmp_path / "cut")
        changed.seed = 4
        run_adapt(changed, resume=True)


def test_diverging_adaptation_stops_with_one_line_and_writes_no_model(
        lab: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from ircr.train.methods.mean_teacher import MeanTeacher

    real = MeanTeacher.train_step

    def blow_up(self: MeanTeacher, labelled: Any, unlabelled: Any) -> Any:
        loss, logs = real(self, labelled, unlabelled)
        return (loss * float("nan") if self.trainer.iteration >= 1 else loss), logs

    monkeypatch.setattr(MeanTeacher, "train_step", blow_up)
    out = tmp_path / "nan"
    rc = main(["adapt", "default", *map(str, lab["good"]), "-o", str(out), "--method",
               "mean_teacher", "--iterations", "3", *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("ircr: error:")]
    assert len(errors) == 1 and "loss became nan at iteration 2" in errors[0]
    assert "Traceback" not in err
    assert not (out / "model" / "model.yaml").exists()


def test_labelled_source_keeps_a_supervised_term(
        lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "synth"
    prepare_dataset("synthetic", None, src, options={"n_images": 2, "size": 128}, patch=64,
                    ratio="1/2", val_fraction=0.0)
    # default: the model's own training data when model.yaml names a prepared dataset
    meta = {"train": {"dataset": str(src), "split": "ratio_1-2_seed0_val0"}}
    chosen = labelled_choice(meta, None, None)
    assert chosen is not None and chosen.split == "ratio_1-2_seed0_val0"
    assert "own training data" in chosen.reason
    assert labelled_choice(meta, "none", None) is None
    assert labelled_choice({"train": {"dataset": "MoNuSeg 2018 train"}}, None, None) is None
    out = tmp_path / "with_labels"
    rc = main(["adapt", "default", *map(str, lab["good"]), "-o", str(out), "--method",
               "mean_teacher", "--iterations", "2", "--labelled", str(src), *FAST])
    err = capsys.readouterr().err
    assert rc == 0, err
    n_lab = len(yaml.safe_load((src / "splits" / "ratio_1-2_seed0_val0.yaml").read_text())
                ["labelled_patches"])
    assert f"{n_lab} labelled patches (--labelled)" in err
    split = yaml.safe_load((out / "split.yaml").read_text())
    assert len(split["labelled_patches"]) == n_lab and split["val_images"] == []
    meta_out = yaml.safe_load((out / "model" / "model.yaml").read_text())
    assert meta_out["adapt"]["labelled"]["dataset"] == str(src)
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert float(rows[-1].split(",")[header.index("train_sup")]) > 0


def test_init_weights_loads_every_tensor_and_refuses_another_architecture(
        tmp_path: Path) -> None:
    folder = resolve_model("default")
    loaded = load_model_folder(folder)
    model = build_model(loaded.model_cfg)
    assert load_init_weights(model, folder) == len(model.state_dict())
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    wider = build_model(ModelConfig(width=0.5, blocks=[2, 2, 2, 2], decoder_units=[4, 2]))
    with pytest.raises(IrcrError, match="has shape .* the model expects"):
        load_init_weights(wider, folder)
    with pytest.raises(IrcrError, match="weights file not found"):
        load_init_weights(model, tmp_path)


def test_no_usable_target_is_one_error_line(lab: dict[str, Any], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["adapt", "default", *map(str, lab["bad"]), "-o", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("ircr: error:")]
    assert errors == ["ircr: error: TARGET: no usable target among 3 given (3 skipped: see "
                      "above)"]
    assert not (tmp_path / "o" / "model").exists()


def test_no_labelled_batch_needs_a_method_with_unlabelled_data(tmp_path: Path) -> None:
    from ircr.config import read_yaml
    from ircr.train.config import experiment_from_dict

    ds = tmp_path / "synth"
    prepare_dataset("synthetic", None, ds, options={"n_images": 2, "size": 64}, patch=64,
                    ratio="1/2", val_fraction=0.0)
    data = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-2_seed0_val0", batch_size=0)
    data["train"].update(progress=False, max_iterations=1)
    trainer = Trainer(experiment_from_dict(data, "t.yaml"), tmp_path / "run")
    with pytest.raises(IrcrError, match="data.batch_size 0 .* not 'supervised'"):
        trainer.run()
