"""The one device + autocast policy (inference/device.py), used by train, evaluate, segment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ircr.cli.main import main
from ircr.errors import IrcrError
from ircr.inference.device import amp_dtype, autocast, select_device

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CUDA devices as far as the policy can tell (no tensor is ever put on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_devices_accepted_everywhere(fake_cuda: None) -> None:
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device(" CUDA ") == CUDA and select_device("auto") == CUDA
    assert select_device(torch.device("cpu")) == CPU
    with pytest.raises(IrcrError, match=r"^train\.device: 'cuda:2' requested but only 2 CUDA"):
        select_device("cuda:2", key="train.device")
    with pytest.raises(IrcrError, match=r"^--device: unknown device 'gpu0'"):
        select_device("gpu0")


def test_amp_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    bf16 = {"ok": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16["ok"])
    for mode in (None, False, "off"):
        assert amp_dtype(mode, CUDA) is None
    assert amp_dtype("auto", CUDA) == torch.bfloat16
    assert amp_dtype("auto", CPU) is None and amp_dtype("auto", MPS) is None
    assert amp_dtype(True, CPU) == torch.bfloat16 == amp_dtype("on", CUDA)
    assert amp_dtype("fp16", CPU) == torch.float16
    assert amp_dtype(torch.float16, CUDA) == torch.float16
    bf16["ok"] = False  # e.g. a V100: explicit requests fall back to fp16, auto stays off
    assert amp_dtype(True, CUDA) == torch.float16 and amp_dtype("auto", CUDA) is None
    assert amp_dtype("bf16", CUDA) == torch.bfloat16
    with pytest.raises(IrcrError, match="amp: unknown setting 'half'"):
        amp_dtype("half", CPU)


def test_autocast_context() -> None:
    lin = torch.nn.Linear(4, 4)
    x = torch.ones(2, 4)
    with autocast(CPU, None):
        assert lin(x).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["evaluate", "segment"])
def test_evaluate_and_segment_take_cuda_n_alike(command: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cuda:1`` is a valid device for both: the error is about CUDA, not syntax."""
    from ircr.engine.packaged import resolve_model

    image = tmp_path / "x.png"
    args = {"evaluate": ["evaluate", str(resolve_model(None)), str(tmp_path), "--out",
                         str(tmp_path / "ev")],
            "segment": ["segment", str(image), "-o", str(tmp_path / "seg")]}[command]
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    assert main([*args, "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "--device: 'cuda:1' requested but CUDA is not available" in err, err
