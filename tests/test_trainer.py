"""The trainer on a tiny synthetic dataset: run folder, loaders, NaN stop, AMP, data errors."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from ircr.config import read_yaml
from ircr.data.augment import AugmentConfig
from ircr.data.prepare import prepare_dataset
from ircr.data.store import PreparedDataset
from ircr.data.targets import hover_targets
from ircr.errors import IrcrError
from ircr.inference.model_folder import load_model_folder
from ircr.train import loaders
from ircr.train.checkpoint import load_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.methods import Method, map_to_view, register_method
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic 150 px images (not a multiple of the 64 px patch: border padding), 1 val."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 5, "size": 150}, patch=64,
                    ratio="1/4", val_fraction=0.2)
    return out


def tiny(ds: Path, **train: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-4_seed0_val0.2")
    data["train"].update({"progress": False, "epochs": 2, "iterations_per_epoch": 2, **train})
    return data


def trainer(data: dict[str, Any], out: Path, **kw: Any) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(experiment_from_dict(data, "test.yaml"), out, config_source="test.yaml", **kw)


def test_run_folder_is_self_describing(synth: Path, tmp_path: Path) -> None:
    tr = trainer(tiny(synth), tmp_path / "run")
    model_dir = tr.run()
    run = tmp_path / "run"
    cfg = read_yaml(run / "config.yaml")
    assert cfg["data"]["dataset"] == str(synth) and cfg["model"]["width"] == 0.125
    assert read_yaml(run / "split.yaml")["format"] == "ircr-split"
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for key in ("train_loss", "train_np_ce", "train_np_dice", "train_hv_mse", "train_hv_msge",
                "lr", "iter_per_s", "wall_s", "val_student_aji", "val_student_dice",
                "val_student_pq", "val_student_f1", "val_student_aji_plus"):
        assert rows[-1][key] != "", key
    parts = sum(float(rows[0][k]) for k in ("train_np_ce", "train_np_dice", "train_hv_mse",
                                            "train_hv_msge"))
    assert float(rows[0]["train_loss"]) == pytest.approx(parts, rel=1e-4)  # weights all 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 4
    loaded = load_model_folder(model_dir)
    assert loaded.patch_size == 64 and loaded.mpp == 0.25
    assert loaded.meta["method"] == "supervised"
    assert loaded.metrics is not None and "val_student_aji" in loaded.metrics
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k])


def test_tensorboard_events_hold_the_epoch_scalars(synth: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # in the dev extra, so CI always runs this test
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer(tiny(synth, tensorboard=True), tmp_path / "run").run()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any("train_loss" in t for t in tags) and any("val_student_aji" in t for t in tags)
    loss_tag = next(t for t in tags if t.endswith("train_loss"))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    logged = [e.value for e in events.Scalars(loss_tag)]
    assert logged == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-5)


def test_lr_schedule_and_default_epoch_length(synth: Path, tmp_path: Path) -> None:
    data = tiny(synth, epochs=3, iterations_per_epoch=None, lr=1e-3, lr_steps=[1, 2],
                val_every=0)
    tr = trainer(data, tmp_path / "run")
    tr.run()
    n_lab = len(tr.split.labelled)
    assert tr.ipe == max(1, n_lab // 4)  # one pass over the labelled patches
    with open(tmp_path / "run" / "metrics.csv") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-5])


def test_bf16_autocast_trains(synth: Path, tmp_path: Path) -> None:
    tr = trainer(tiny(synth, epochs=1, amp="bf16", val_every=0), tmp_path / "run")
    assert tr.amp == torch.bfloat16
    tr.run()
    assert np.isfinite(float(tr.last_row["train_loss"]))


@register_method("test_nan_at_3")
class _NanAt3(Method):
    """Supervised loss, but NaN at the third iteration."""

    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        loss, parts = self.trainer.supervised_loss(self.trainer.model(labelled["image"]),
                                                   labelled)
        if self.trainer.iteration == 2:
            loss = loss * float("nan")
        return loss, parts


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth: Path, tmp_path: Path) -> None:
    data = tiny(synth, checkpoint_every=1)
    data["method"]["name"] = "test_nan_at_3"
    tr = trainer(data, tmp_path / "run")
    with pytest.raises(IrcrError, match=r"loss became nan at iteration 3 ") as err:
        tr.run()
    assert "\n" not in str(err.value)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_data_errors(synth: Path, tmp_path: Path) -> None:
    data = tiny(synth)
    data["data"]["dataset"] = str(tmp_path / "nowhere")
    with pytest.raises(IrcrError, match=r"test.yaml: data.dataset: prepared dataset folder not"):
        trainer(data, tmp_path / "a")
    data = tiny(synth)
    data["data"]["split"] = "ratio_1-3_seed9"
    with pytest.raises(IrcrError, match=r"test.yaml: data.split: .*split not found"):
        trainer(data, tmp_path / "b")
    data = tiny(synth)
    data["data"]["patch_size"] = 32
    with pytest.raises(IrcrError, match=r"data.patch_size 32 differs"):
        trainer(data, tmp_path / "c").run()


def test_ssl_method_needs_unlabelled_patches(tmp_path: Path) -> None:
    out = tmp_path / "full"
    prepare_dataset("synthetic", None, out, options={"n_images": 2, "size": 64}, patch=64,
                    ratio="1", val_fraction=0.0)
    data = tiny(out)
    data["data"]["split"] = "ratio_1_seed0_val0"
    data["method"]["name"] = "mean_teacher"
    with pytest.raises(IrcrError, match=r"needs unlabelled patches"):
        trainer(data, tmp_path / "run").run()


# ---------------------------------------------------------------------------- loaders


def _set(synth: Path, **aug: Any) -> tuple[loaders.IterationSet, PreparedDataset]:
    data = tiny(synth)
    data["data"]["augment"] = aug
    data["method"]["weak_noise_std"] = 0.0
    cfg = experiment_from_dict(data, "test.yaml")
    ds = PreparedDataset(synth)
    split = loaders.resolve_split(ds, cfg.data.split)
    return loaders.IterationSet(ds, split, cfg, None, uses_unlabelled=True), ds


def test_labelled_sample_without_augmentation_is_the_patch(synth: Path) -> None:
    its, ds = _set(synth, geometric=False, photometric=False)
    for key in range(len(its.lab_pool)):
        s = its.labelled_sample(key)
        p = ds.patches[int(s["index"])]
        img, inst = ds.read_window(p.image, p.y0 - 24, p.x0 - 24, 112, 112)
        assert inst is not None
        np.testing.assert_array_equal(s["image"], img[24:88, 24:88])
        np_t, hv_t = hover_targets(inst, crop=(24, 24, 64, 64))
        np.testing.assert_array_equal(s["np"], np_t)
        np.testing.assert_allclose(s["hv"], hv_t)
        valid = np.zeros((64, 64), bool)
        valid[: p.h, : p.w] = True  # reflect padding past the image border is not valid
        np.testing.assert_array_equal(s["valid"], valid)


def test_border_patch_has_padding_excluded(synth: Path) -> None:
    its, ds = _set(synth)
    border = [i for i in its.lab_pool if ds.patches[i].h < 64 or ds.patches[i].w < 64]
    assert border, "150 px images on a 64 px grid must have border patches"
    keys = [k for k in range(200) if its._pick(loaders.LABELLED, its.lab_pool, k) in border]
    s = its.labelled_sample(keys[0])
    assert not bool(np.asarray(s["valid"]).all())


def test_unlabelled_views_are_aligned_and_src_index_maps_back(synth: Path) -> None:
    its, ds = _set(synth, photometric=False, hue=0.0, saturation=0.0, brightness=0.0,
                   contrast=[1.0, 1.0], blur=False, noise=False)
    batch = its[3]
    u = batch["unlabelled"]
    assert u["weak"].shape == (4, 3, 64, 64) and u["weak"].dtype == torch.float32
    assert torch.equal(u["weak"], u["strong"])  # no photometric change: identical views
    originals = []
    for pid in u["index"].tolist():
        p = ds.patches[pid]
        img, _ = ds.read_window(p.image, p.y0, p.x0, 64, 64)
        originals.append(torch.from_numpy(img).permute(2, 0, 1).float())
    mapped = map_to_view(torch.stack(originals), u["src_index"])
    inside = (u["src_index"] >= 0).unsqueeze(1).expand_as(mapped)
    assert inside.float().mean() > 0.3
    assert torch.equal(mapped[inside], u["weak"][inside])
    lab = batch["labelled"]
    assert lab["image"].shape == (4, 3, 64, 64) and lab["np"].dtype == torch.int64
    assert lab["hv"].shape == (4, 2, 64, 64) and lab["valid"].dtype == torch.bool


def test_batches_depend_only_on_seed_and_iteration(synth: Path) -> None:
    a, _ = _set(synth)
    b, _ = _set(synth)
    x, y = a[5], b[5]
    for part in ("labelled", "unlabelled"):
        for k in x[part]:
            assert torch.equal(x[part][k], y[part][k])
    assert not torch.equal(a[6]["labelled"]["image"], x["labelled"]["image"])


def test_one_epoch_visits_every_unlabelled_patch_once(synth: Path) -> None:
    its, _ = _set(synth)
    n = len(its.unl_pool)
    seen = [its._pick(loaders.UNLABELLED, its.unl_pool, k) for k in range(n)]
    assert sorted(seen) == sorted(its.unl_pool)
    assert AugmentConfig().rotate == 179.0
