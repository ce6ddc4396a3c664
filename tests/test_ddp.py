"""DDP training under torchrun (issue 24 point 4): 2 gloo processes on CPU, tiny network.

One module-scoped spawn of 2 ranks (tests/ddp_helpers.py) trains Mean Teacher, IRCR, a
supervised run with frozen BatchNorm, and an uninterrupted vs a SIGTERM-stopped + resumed
Mean Teacher run; the tests compare what the ranks saved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp

from ddp_helpers import REPO, cfg_dict, free_port, train, worker
from ircr.config import read_yaml
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.train import distributed
from ircr.train.checkpoint import load_checkpoint
from ircr.train.config import experiment_from_dict
from ircr.train.trainer import Trainer

TORCHRUN_ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0",
                "LOCAL_RANK": "0", "WORLD_SIZE": "2"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic images of 128 px, 64 px patches (all inside the images), 1/4 labelled."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 128}, patch=64,
                    ratio="1/4", val_fraction=0.0)
    return out


@pytest.fixture(scope="module")
def ranks(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run every scenario on 2 gloo ranks; the folder holding their results."""
    out = tmp_path_factory.mktemp("ddp")
    tmp.spawn(worker, args=(2, free_port(), str(synth), str(out)), nprocs=2, join=True)
    return out


def _load(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(path, weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["mean_teacher", "ircr"])
def test_student_and_teacher_parameters_and_buffers_equal_on_both_ranks(
        ranks: Path, method: str) -> None:
    r0, r1 = _load(ranks / f"{method}_rank0.pt"), _load(ranks / f"{method}_rank1.pt")
    _same(r0["model"], r1["model"])
    _same(r0["teacher"], r1["teacher"])  # parameters and BN running mean/var
    bn = [k for k in r0["teacher"] if k.endswith("running_var")]
    assert bn and not torch.equal(r0["teacher"][bn[0]], torch.ones_like(r0["teacher"][bn[0]]))
    ckpt = load_checkpoint(ranks / method / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["world"] == 2 and len(ckpt["rank_rng"]) == 2
    _same(ckpt["method"]["teacher"], r0["teacher"])  # rank 0's checkpoint = every rank


def test_self_training_rounds_under_two_ranks(ranks: Path) -> None:
    """The supervised round-0 sub-run, rank 0's pseudo-labels, then the student: same on both."""
    _same(_load(ranks / "self_training_rank0.pt")["model"],
          _load(ranks / "self_training_rank1.pt")["model"])
    run = ranks / "self_training"
    assert (run / "pseudo_round0" / "pseudo.json").is_file()
    assert load_checkpoint(run / "st_round0" / "checkpoints" / "last.pt")["world"] == 2
    assert (run / "model" / "weights.pt").is_file()


def test_two_ranks_of_batch_2_equal_one_process_of_batch_4(ranks: Path, synth: Path,
                                                             tmp_path: Path) -> None:
    """BN frozen: the global batch of 2 x 2 is the batch of 1 x 4 (same samples, same loss)."""
    torch.set_num_threads(1)
    single = train(cfg_dict(synth, "test_frozen_bn", 4, epochs=1), tmp_path / "one")
    two = _load(ranks / "frozen_rank0.pt")["model"]
    one = single.model.state_dict()
    assert one.keys() == two.keys()
    start = Trainer(experiment_from_dict(cfg_dict(synth, "test_frozen_bn", 4), "t"),
                    tmp_path / "start").model.state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one
                if torch.is_floating_point(one[k]))
    assert moved > 1e-4  # training changed the weights: the comparison means something
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_sigterm_on_one_rank_then_resume_equals_uninterrupted(ranks: Path) -> None:
    stopped = [_load(ranks / f"stopped_rank{r}.pt")["iteration"] for r in (0, 1)]
    assert stopped == [3, 3]  # both ranks stopped at the same iteration
    for r in (0, 1):
        full, resumed = _load(ranks / f"full_rank{r}.pt"), _load(ranks / f"resumed_rank{r}.pt")
        _same(full["model"], resumed["model"])
        _same(full["teacher"], resumed["teacher"])
    rows = [(ranks / d / "metrics.csv").read_text().splitlines() for d in ("full", "cut")]
    assert len(rows[0]) == 4
    keep = [i for i, c in enumerate(rows[0][0].split(",")) if c.startswith("train_")]
    assert [[r.split(",")[i] for i in keep] for r in rows[0]] == \
        [[r.split(",")[i] for i in keep] for r in rows[1]]


def test_rank_1_writes_nothing(ranks: Path) -> None:
    """Only rank 0's files: one config, one metrics.csv, one model folder per run."""
    run = ranks / "full"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml",
                                                     "metrics.csv", "model", "split.yaml"]
    assert not list(run.rglob("*.tmp*"))


def test_resume_with_another_process_count_is_refused(ranks: Path) -> None:
    data = read_yaml(ranks / "full" / "config.yaml")
    with pytest.raises(IrcrError, match=r"written by 2 process\(es\) but this run has 1"):
        Trainer(experiment_from_dict(data, "t"), ranks / "full", resume=True)


def test_bass_and_previous_masks_refused_under_torchrun(synth: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    data = cfg_dict(synth, "bass", 2)
    with pytest.raises(IrcrError, match="method 'bass' is not supported under torchrun"):
        Trainer(experiment_from_dict(data, "t"), tmp_path / "b")
    data = cfg_dict(synth, "ircr", 2)
    data["method"]["mask_source"] = "previous"
    with pytest.raises(IrcrError, match="mask_source 'previous' is not supported"):
        Trainer(experiment_from_dict(data, "t"), tmp_path / "i")


def test_torchrun_environment() -> None:
    assert distributed.context_from_env({}) == distributed.SINGLE
    assert distributed.context_from_env({"WORLD_SIZE": "1"}) == distributed.SINGLE
    ctx = distributed.context_from_env(TORCHRUN_ENV)
    assert (ctx.rank, ctx.world, ctx.active, ctx.main) == (0, 2, True, True)
    with pytest.raises(IrcrError, match="MASTER_PORT: environment variable"):
        distributed.context_from_env({**TORCHRUN_ENV, "MASTER_PORT": ""})
    with pytest.raises(IrcrError, match="train.sync_bn: SyncBatchNorm needs CUDA"):
        distributed.sync_batchnorm(torch.nn.BatchNorm2d(2), torch.device("cpu"))


def test_nproc_launcher_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cmd = distributed.torchrun_command(3, ["train", "c.yaml", "--out", "r"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                       "-m", "ircr", "train", "c.yaml", "--out", "r"]
    with pytest.raises(IrcrError, match="--nproc: must be >= 1"):
        distributed.torchrun_command(0, [])
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(IrcrError, match="--nproc: already running under torchrun"):
        distributed.torchrun_command(2, [])


@pytest.mark.slow
def test_torchrun_cli(synth: Path, tmp_path: Path) -> None:
    """``ircr train --nproc 2`` (torchrun --standalone underneath) end to end."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ircr", "train", "--nproc", "2",
           str(REPO / "configs" / "tiny_synthetic.yaml"), "--out", str(out),
           "--set", f"data.dataset={synth}", "--set", "data.split=ratio_1-4_seed0_val0",
           "--set", "train.epochs=1", "--set", "train.iterations_per_epoch=2",
           "--set", "method.name=mean_teacher", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("model folder:") == 1  # rank 0 alone prints
    assert "per process x 2 processes" in res.stderr
    assert (out / "model" / "weights.pt").is_file()
