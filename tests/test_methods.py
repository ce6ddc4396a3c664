"""Unit tests of the semi-supervised method plug-ins (tiny network, hand-made batches).

Each method runs inside a real :class:`~ircr.train.trainer.Trainer` on a tiny synthetic
prepared dataset (the trainer builds the model, the method and its setup as in a run); the
batches are made by hand so each test checks one property of a method with hand-derived
expectations.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ircr.data.prepare import prepare_dataset
from ircr.train.config import experiment_from_dict
from ircr.train.methods import register_method
from ircr.train.methods.base import map_to_view
from ircr.train.methods.ircr import IRCR, pack, to_patch_frame, unpack
from ircr.train.methods.mean_teacher import feature_maps, masked_mse

torch.set_num_threads(1)
P = 32
# the paper's schedule (full weight from the first iteration, raw teacher HV): these tests check
# the loss terms themselves; the from-scratch defaults are tested in test_ssl_stability.py
PAPER = {"warmup_iterations": 0, "rampup_iterations": 0, "clamp_teacher_hv": False}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic 64 px images cut into 32 px patches (the trainer needs a dataset)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 3, "size": 64}, patch=P,
                    ratio="1/2", val_fraction=0.34)
    return out


_DATA: list[Path] = []


@pytest.fixture(autouse=True)
def _dataset(synth: Path) -> None:
    _DATA[:] = [synth]


def _trainer(tmp_path: Path, name: str = "supervised", patch: int = P, **opts):
    """A real Trainer (tiny HoVer-Net, CPU, seed 0) with method ``name`` and its options."""
    from ircr.train.trainer import Trainer

    torch.set_num_threads(1)
    data = {"data": {"dataset": str(_DATA[0]), "split": "ratio_1-2_seed0_val0.34",
                     "patch_size": patch, "workers": 0},
            "model": {"width": 0.125, "blocks": [1, 1, 1, 1], "decoder_units": [1, 1]},
            "train": {"seed": 0, "device": "cpu", "amp": "off", "progress": False,
                      "tensorboard": False},
            "method": {"name": name, **opts}}
    run = tmp_path / f"run_{name}_{len(list(tmp_path.glob('run_*')))}"
    return Trainer(experiment_from_dict(data, "test"), run, config_source="test")


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
    tr = _trainer(tmp_path, name, **{**PAPER, **opts})
    return tr.method, tr


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
    assert set(logs) == {"sup", "mse", "unsup_weight"} and logs["unsup_weight"] == 1.0


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
    assert float(loss.detach()) == pytest.approx(logs["sup"] + 0.7 * logs["mse"], rel=1e-5)


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
    assert float(l1.detach()) == pytest.approx(float(l2.detach()), rel=1e-6)
    assert g2["miac"] == 0.0 and g1["mse"] == pytest.approx(g2["mse"], rel=1e-6)


class _DarkIsNucleus(torch.nn.Module):
    """A deterministic 'network': NP logits from darkness, HV from horizontal/vertical ramps."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from scipy import ndimage as ndi

        from ircr.data.targets import hover_targets

        gray = x.mean(dim=1, keepdim=True)
        dark = (115.0 - gray) / 5.0 * self.w
        hv = []
        for g in gray[:, 0].detach().numpy():
            comp, _ = ndi.label(ndi.binary_opening(g < 115.0, iterations=2))
            hv.append(hover_targets(comp.astype(np.int32))[1])
        hv_t = torch.from_numpy(np.stack(hv)) * self.w
        return {"np": torch.cat([-dark, dark], dim=1), "hv": hv_t}


@register_method("test_dark_ircr")
class _DarkIRCR(IRCR):
    """IRCR-Net with its own model (a method may build any network: methods/base.py)."""

    def build_model(self) -> torch.nn.Module:
        return _DarkIsNucleus()


def _fake_ircr(tmp_path: Path, shift: int = 0, **opts):
    from ircr.data.synthetic import make_tile

    tr = _trainer(tmp_path, "test_dark_ircr", patch=64, **{**PAPER, **opts})
    m = tr.method
    assert isinstance(tr.model, _DarkIsNucleus) and isinstance(m, _DarkIRCR)
    rng = np.random.default_rng(0)
    imgs = np.stack([make_tile(rng, 64, touching=0.0)[0] for _ in range(2)])
    weak = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    lab, unl = _batches()
    src = torch.arange(64 * 64).view(1, 64, 64).repeat(2, 1, 1)
    lab = {k: (v[:, :, :64, :64] if k == "image" else v) for k, v in lab.items()}
    lab["image"] = torch.nn.functional.pad(lab["image"], (0, 32, 0, 32))
    lab["np"] = torch.nn.functional.pad(lab["np"], (0, 32, 0, 32))
    lab["hv"] = torch.zeros(2, 2, 64, 64)
    lab["valid"] = torch.ones(2, 64, 64, dtype=torch.bool)
    unl = {"weak": weak, "strong": torch.roll(weak, shift, dims=3), "index": unl["index"],
           "src_index": src, "valid": torch.ones(2, 64, 64, dtype=torch.bool)}
    return m, lab, unl


def test_ircr_identical_views_match_every_instance_at_distance_zero(tmp_path: Path) -> None:
    m, lab, unl = _fake_ircr(tmp_path)
    _, logs = m.train_step(lab, unl)
    diag = m.epoch_end()
    assert diag["pairs_per_image"] >= 2  # the tiles have nuclei, all matched
    assert diag["match_dist_mean"] == pytest.approx(0.0, abs=1e-9)
    assert logs["piac"] == pytest.approx(0.0, abs=1e-10)
    assert logs["miac"] == pytest.approx(0.0, abs=1e-10)
    assert 0.0 <= diag["prior_reject_frac"] <= 1.0


def test_ircr_match_radius_filters_shifted_instances(tmp_path: Path) -> None:
    # student view shifted by 1 px: matched centroids 1 px apart -> kept at r = 1.5
    m, lab, unl = _fake_ircr(tmp_path, shift=1)
    _, logs = m.train_step(lab, unl)
    d = m.epoch_end()
    assert d["pairs_per_image"] >= 2
    assert d["match_dist_mean"] == pytest.approx(1.0, abs=0.1)
    assert logs["miac"] > 0.0
    # ... and all dropped at r = 0.5 (Table 4's small radii keep fewer pairs)
    m, lab, unl = _fake_ircr(tmp_path, shift=1, match_radius=0.5)
    _, logs = m.train_step(lab, unl)
    d = m.epoch_end()
    assert d["pairs_per_image"] == 0 and logs["miac"] == 0.0


def test_ircr_loss_is_sup_plus_weighted_terms(tmp_path: Path) -> None:
    m, lab, unl = _fake_ircr(tmp_path, shift=1, gamma1=0.3, gamma2=7.0)
    loss, logs = m.train_step(lab, unl)
    want = logs["sup"] + 0.3 * logs["piac"] + 7.0 * logs["miac"]
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert m.trainer.model.w.grad is not None


def test_ircr_previous_mask_source_is_zero_until_cached(tmp_path: Path) -> None:
    m, lab, unl = _fake_ircr(tmp_path, mask_source="previous")
    loss1, logs1 = m.train_step(lab, unl)
    assert logs1["piac"] == 0.0 and logs1["miac"] == 0.0  # no cache entry yet
    m.epoch_end()  # collects the masks computed during the first visit
    assert set(m.cache) == {100, 101}
    state = m.state_dict()
    m2, _, _ = _fake_ircr(tmp_path, mask_source="previous")
    m2.load_state_dict(state)
    assert set(m2.cache) == {100, 101}
    # second visit, student view shifted by 1 px: cached masks make both terms non-zero
    unl["strong"] = torch.roll(unl["weak"], 1, dims=3)
    _, logs2 = m2.train_step(lab, unl)
    assert logs2["piac"] > 0.0 and logs2["miac"] > 0.0
    assert m2.epoch_end()["pairs_per_image"] >= 2
