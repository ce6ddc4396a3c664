"""Unit tests of the semi-supervised method plug-ins (no data on disk, tiny network).

The trainer is replaced by a small stand-in exposing the attributes the Method interface
documents (model, cfg, device, supervised_loss, wbis_params, run_dir, epoch), so each test
checks one property of a method with hand-derived expectations.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams
from ircr.train.config import MethodConfig
from ircr.train.methods import get_method
from ircr.train.methods.base import map_to_view
from ircr.train.methods.ircr import pack, to_patch_frame, unpack
from ircr.train.methods.mean_teacher import feature_maps, masked_mse

torch.set_num_threads(1)
P = 32


def _sup_loss(out: dict[str, torch.Tensor], lab: dict[str, torch.Tensor]):
    ce = torch.nn.functional.cross_entropy(out["np"], lab["np"])
    mse = (out["hv"] - lab["hv"]).pow(2).mean()
    return ce + mse, {"ce": float(ce.detach()), "mse": float(mse.detach())}


def _trainer(tmp_path: Path) -> SimpleNamespace:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))
    return SimpleNamespace(
        model=model, device=torch.device("cpu"), supervised_loss=_sup_loss,
        wbis_params=WBISParams(), run_dir=tmp_path, epoch=0, iteration=0,
        cfg=SimpleNamespace(data=SimpleNamespace(patch_size=P)),
    )


def _discs(n: int, seed: int) -> np.ndarray:
    """(P, P) int32 map with n non-touching discs of radius 4."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:P, :P]
    inst = np.zeros((P, P), np.int32)
    for k in range(n):
        cy, cx = 6 + 10 * (k // 3), 6 + 10 * (k % 3)
        cy, cx = cy + rng.integers(0, 2), cx + rng.integers(0, 2)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = k + 1
    return inst


def _batches(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, P, P, generator=g) * 255
    fg = np.stack([_discs(4, i) > 0 for i in range(n)])
    lab = {"image": img, "np": torch.from_numpy(fg).long(),
           "hv": torch.zeros(n, 2, P, P), "valid": torch.ones(n, P, P, dtype=torch.bool),
           "index": torch.arange(n)}
    weak = torch.rand(n, 3, P, P, generator=g) * 255
    src = torch.arange(P * P).view(1, P, P).repeat(n, 1, 1)
    unl = {"weak": weak, "strong": (weak + 10).clamp(0, 255), "index": torch.arange(100, 100 + n),
           "src_index": src, "valid": torch.ones(n, P, P, dtype=torch.bool)}
    return lab, unl


def _method(name: str, tmp_path: Path, **opts):
    tr = _trainer(tmp_path)
    m = get_method(name)(MethodConfig(name=name, **opts), tr)  # type: ignore[arg-type]
    m.setup()
    return m, tr


def test_mt_teacher_gets_no_gradient_and_ema_includes_bn(tmp_path: Path) -> None:
    m, tr = _method("mean_teacher", tmp_path)
    opt = torch.optim.Adam(tr.model.parameters(), lr=1e-2)
    lab, unl = _batches()
    teacher_before = copy.deepcopy(m.teacher.state_dict())
    loss, logs = m.train_step(lab, unl)
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert any(p.grad is not None for p in tr.model.parameters())
    # teacher forward ran in eval mode: its BN running stats did not move
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    opt.step()
    m.after_optimizer_step()
    a = 0.95
    student = tr.model.state_dict()
    for k, v in m.teacher.state_dict().items():
        if v.dtype.is_floating_point:
            want = a * teacher_before[k] + (1 - a) * student[k]
            assert torch.allclose(v, want, atol=1e-6), k
    bn = [k for k in student if k.endswith("running_mean")]
    assert bn and any(not torch.equal(m.teacher.state_dict()[k], teacher_before[k]) for k in bn)
    assert set(logs) == {"sup", "mse"}


def test_mt_consistency_is_gamma1_times_mse(tmp_path: Path) -> None:
    m, tr = _method("mean_teacher", tmp_path, gamma1=0.7)
    lab, unl = _batches()
    loss, logs = m.train_step(lab, unl)
    with torch.no_grad():
        m.teacher.eval()
        ft, _ = feature_maps(m.teacher(unl["weak"]))
        out = tr.model(torch.cat([lab["image"], unl["strong"]]))
    assert ft.shape == (2, 3, P, P)
    fs, _ = feature_maps({k: v[2:] for k, v in out.items()})
    assert logs["mse"] == pytest.approx(float(masked_mse(fs, ft)), rel=1e-4)
    assert float(loss) == pytest.approx(logs["sup"] + 0.7 * logs["mse"], rel=1e-5)


def test_masked_mse_by_hand() -> None:
    fs = torch.zeros(2, 3, 2, 2)
    ft = torch.zeros(2, 3, 2, 2)
    fs[0, :, 0, 0] = 2.0  # image 0: 3 squared errors of 4 over 12 values = 1.0
    w = torch.ones(2, 2, 2)
    assert float(masked_mse(fs, ft, w)) == pytest.approx((1.0 + 0.0) / 2)
    w[0, 0, 0] = 2.0  # U = w = 2 doubles the difference -> 16 each -> 4.0
    assert float(masked_mse(fs, ft, w)) == pytest.approx(4.0 / 2)


def test_pack_roundtrip_and_patch_frame_inverse_of_map_to_view() -> None:
    inst = _discs(6, 3)
    assert np.array_equal(unpack(pack(inst), P), inst)
    # a horizontal flip: view pixel (y, x) comes from patch pixel (y, P-1-x)
    yy, xx = np.mgrid[:P, :P]
    src = (yy * P + (P - 1 - xx)).astype(np.int64)
    view = map_to_view(torch.from_numpy(inst)[None], torch.from_numpy(src)[None])[0].numpy()
    assert np.array_equal(view, inst[:, ::-1])
    assert np.array_equal(to_patch_frame(view, src, P), inst)
    # pixels coming from outside the patch are background; missing patch pixels stay 0
    src2 = src.copy()
    src2[:, :8] = -1
    back = to_patch_frame(view, src2, P)
    assert np.array_equal(back[:, : P - 8], inst[:, : P - 8])
    assert not back[:, P - 6 :].any()


def test_ircr_with_both_terms_off_equals_mean_teacher(tmp_path: Path) -> None:
    lab, unl = _batches()
    mt, _ = _method("mean_teacher", tmp_path)
    ir, _ = _method("ircr", tmp_path, piac=False, miac=False)
    l1, g1 = mt.train_step(lab, unl)
    l2, g2 = ir.train_step(lab, unl)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    assert g2["miac"] == 0.0 and g1["mse"] == pytest.approx(g2["mse"], rel=1e-6)
