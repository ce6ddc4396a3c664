"""Activation checkpointing: same outputs, gradients and BN statistics, less saved memory."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from ircr.losses import hovernet_loss
from ircr.models import HoVerNet, ModelConfig, build_model

torch.set_num_threads(1)

# paper depth (blocks [3, 4, 6, 3], decoder units [8, 4]), narrow width
PAPER_DEPTH = {"width": 0.125, "blocks": [3, 4, 6, 3], "decoder_units": [8, 4]}


def saved_bytes(fn: object) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn()`` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # type: ignore[operator]
    return total


def step(model: HoVerNet, x: torch.Tensor, np_t: torch.Tensor, hv_t: torch.Tensor
         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    out = model(x)
    loss, _ = hovernet_loss(out, np_t, hv_t, tp_target=np_t * 2)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize("encoder", ["preact", "resnet"])
def test_checkpointing_changes_nothing_but_memory(encoder: str) -> None:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(encoder=encoder, nr_types=3, **PAPER_DEPTH))  # type: ignore[arg-type]
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    assert not plain.activation_checkpointing
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 48, 48, generator=g) * 255
    np_t = (torch.rand(2, 48, 48, generator=g) > 0.6).long()
    hv_t = torch.rand(2, 2, 48, 48, generator=g) * 2 - 1
    plain.train()
    ckpt.train()
    out_a, grad_a = step(plain, x, np_t, hv_t)
    out_b, grad_b = step(ckpt, x, np_t, hv_t)
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=0, atol=1e-6)
    assert grad_a.keys() == grad_b.keys() and len(grad_a) == len(list(plain.parameters()))
    for n in grad_a:
        torch.testing.assert_close(grad_b[n], grad_a[n], rtol=1e-5, atol=1e-6, msg=n)
    # BN running statistics updated exactly once per forward, as without checkpointing
    buf_a, buf_b = dict(plain.named_buffers()), dict(ckpt.named_buffers())
    for n in buf_a:
        torch.testing.assert_close(buf_b[n], buf_a[n], rtol=0, atol=1e-7, msg=n)
    assert int(buf_b[next(n for n in buf_b if "num_batches" in n)]) == 1
    # memory: the checkpointed net keeps well under half the activations
    plain.zero_grad()
    ckpt.zero_grad()
    mem_plain = saved_bytes(lambda: plain(x))
    mem_ckpt = saved_bytes(lambda: ckpt(x))
    assert mem_ckpt < 0.5 * mem_plain, (mem_ckpt, mem_plain)


def test_checkpointing_from_config_eval_and_frozen_encoder() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(activation_checkpointing=True, width=0.125, blocks=[1, 1, 1, 1],
                      decoder_units=[2, 1])
    model = build_model(cfg)
    assert model.activation_checkpointing
    x = torch.rand(1, 3, 32, 32) * 255
    model.eval()  # eval / no-grad: nothing is checkpointed, nothing is saved
    assert saved_bytes(lambda: model(x)) > 0  # grad on, eval mode: plain autograd
    with torch.no_grad():
        assert saved_bytes(lambda: model(x)) == 0
    model.train()
    model.freeze_encoder = True
    out = model(x)
    sum(v.sum() for v in out.values()).backward()  # type: ignore[union-attr]
    enc: Any = model.encoder
    dec: Any = model.decoder["np"]
    assert all(p.grad is None for p in enc.d1.parameters())
    assert dec.u0.conv.weight.grad is not None
