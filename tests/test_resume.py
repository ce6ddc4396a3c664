"""Exact resume: interrupted + resumed training equals an uninterrupted run (CPU, tiny net)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.train.checkpoint import load_checkpoint, save_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.trainer import Trainer, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared synthetic dataset: 4 images of 128 px, 64 px patches, 1/4 labelled."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.0)
    return out


def tiny_cfg(ds: Path, **train: object):
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-4_seed0_val0")
    data["train"].update({"progress": False, "epochs": 3, "iterations_per_epoch": 2, **train})
    return data


def run(data: dict, out: Path, **kw: object) -> Trainer:
    torch.set_num_threads(1)
    tr = Trainer(experiment_from_dict(data, "test"), out, **kw)  # type: ignore[arg-type]
    tr.run()
    return tr


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def loss_rows(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    cols = lines[0].split(",")
    keep = [i for i, c in enumerate(cols) if c.startswith("train_") or c in ("epoch", "lr")]
    return [",".join(line.split(",")[i] for i in keep) for line in lines]


def test_interrupted_and_resumed_equals_uninterrupted(synth: Path, tmp_path: Path) -> None:
    data = tiny_cfg(synth, checkpoint_every=1)
    full = run(data, tmp_path / "full")
    assert full.iteration == 6
    with pytest.raises(TrainingInterrupted):
        run(data, tmp_path / "cut", stop_after=3)  # mid-epoch 1 (iterations 2, 3 | 4, 5)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["iteration"] == 3
    resumed = run(data, tmp_path / "cut", resume=True)
    assert resumed.iteration == 6
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    assert loss_rows(tmp_path / "full") == loss_rows(tmp_path / "cut")
    assert (tmp_path / "cut" / "model" / "weights.pt").is_file()
    assert (tmp_path / "cut" / "split.yaml").is_file()


def test_resume_from_older_checkpoint_replays_iterations(synth: Path, tmp_path: Path) -> None:
    """Killed between checkpoints: resume replays from the last one and still ends equal."""
    data = tiny_cfg(synth, checkpoint_every=0)  # only epoch-end checkpoints (after 2, 4)
    full = run(data, tmp_path / "full")
    with pytest.raises(TrainingInterrupted):
        run(data, tmp_path / "cut", stop_after=3)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["iteration"] == 2
    run(data, tmp_path / "cut", resume=True)
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    assert full.iteration == 6


def test_worker_processes_give_the_same_batches(synth: Path, tmp_path: Path) -> None:
    """Batches depend only on (seed, iteration): 2 workers train exactly like 0 workers."""
    data = tiny_cfg(synth, epochs=1)
    run(data, tmp_path / "w0")
    data["data"]["workers"] = 2
    run(data, tmp_path / "w2")
    assert_same(weights(tmp_path / "w0"), weights(tmp_path / "w2"))


def test_different_seed_differs(synth: Path, tmp_path: Path) -> None:
    data = tiny_cfg(synth, epochs=1)
    run(data, tmp_path / "a")
    data["train"]["seed"] = 11
    run(data, tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_errors(synth: Path, tmp_path: Path) -> None:
    data = tiny_cfg(synth, epochs=1)
    cfg = experiment_from_dict(data, "test")
    with pytest.raises(IrcrError, match="no checkpoint to resume from"):
        Trainer(cfg, tmp_path / "none", resume=True)
    run(data, tmp_path / "done")
    with pytest.raises(IrcrError, match="already holds a checkpoint"):
        Trainer(cfg, tmp_path / "done")
    other = tiny_cfg(synth, epochs=1)
    other["model"]["width"] = 0.25
    with pytest.raises(IrcrError, match="section 'model' differs"):
        Trainer(experiment_from_dict(other, "test"), tmp_path / "done", resume=True)


def test_checkpoint_is_atomic_and_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "c" / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(2)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    assert load_checkpoint(path)["iteration"] == 1
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "evil.pt")  # needs unpickling
    with pytest.raises(IrcrError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IrcrError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"iteration": 3}, tmp_path / "foreign.pt")
    with pytest.raises(IrcrError, match="not an ircr training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
