"""ssl/masks.py: the pooled, asynchronous mask jobs give exactly the synchronous masks/losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ircr.data.targets import hover_targets
from ircr.io.image import read_image
from ircr.postproc.watershed import WBISParams, wbis
from ircr.ssl import matching
from ircr.ssl.masks import MaskPipeline, MaskSettings, default_workers
from ircr.ssl.piac import piac_loss, rejected_ids
from ircr.ssl.prior import load_prior

torch.set_num_threads(1)
NAMES = ("TCGA-18-5592-01Z-00-DX1", "TCGA-KB-A93J-01A-01-TS1")


@pytest.fixture(scope="module")
def batch(monuseg_root: Path) -> dict[str, np.ndarray]:
    """Four real 256 px MoNuSeg patches; teacher maps = GT targets, student = a perturbed GT."""
    rng = np.random.default_rng(0)
    imgs, pt, hvt, ps, hvs = [], [], [], [], []
    for name in NAMES:
        img = read_image(monuseg_root / "images" / f"{name}.tif")
        lab = np.array(Image.open(monuseg_root / "labels_inst" / f"{name}.png")).astype(np.int32)
        for y0, x0 in ((100, 200), (600, 500)):
            crop = lab[y0:y0 + 256, x0:x0 + 256]
            imgs.append(img[y0:y0 + 256, x0:x0 + 256])
            npt, hv = hover_targets(crop)
            noise = rng.normal(0, 0.05, npt.shape).astype(np.float32)
            pt.append(np.clip(npt * 0.9 + 0.05 + noise, 0, 1).astype(np.float32))
            hvt.append(hv)
            # student: GT shifted by 1 px with ~15% of the nuclei dropped
            drop = np.isin(crop, rng.choice(np.unique(crop)[1:], max(1, crop.max() // 7)))
            moved = np.roll(np.where(drop, 0, crop), 1, axis=1)
            nps, hv_s = hover_targets(moved)
            ps.append(nps.astype(np.float32))
            hvs.append(hv_s)
    return {"image": np.stack(imgs), "pt": np.stack(pt), "hvt": np.stack(hvt),
            "ps": np.stack(ps), "hvs": np.stack(hvs)}


def by_hand(b: dict[str, np.ndarray], s: MaskSettings) -> tuple[list, list, list, list]:
    """The synchronous path from the primitives: WBIS, prior, Hungarian matching, maps."""
    t_inst = [wbis(p, h, s.wbis) for p, h in zip(b["pt"], b["hvt"])]
    rej = [rejected_ids(im, t, s.prior, s.tau)[0] if s.prior else np.zeros(0, np.int64)
           for im, t in zip(b["image"], t_inst)]
    s_inst = ([wbis(p, h, s.wbis) for p, h in zip(b["ps"], b["hvs"])] if s.miac
              else [np.zeros_like(t) for t in t_inst])
    pairs = [matching.match_instances(t, si, radius=s.match_radius)[0] if s.miac
             else np.zeros((0, 2), np.int64) for t, si in zip(t_inst, s_inst)]
    return t_inst, rej, s_inst, pairs


def losses(b: dict[str, np.ndarray], t_inst: list, rej: list, s_inst: list, pairs: list
           ) -> tuple[float, float]:
    """PIAC (U from the rejected ids) and MIAC losses on fixed random feature maps."""
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.rand(4, 3, 256, 256, generator=g), torch.rand(4, 3, 256, 256, generator=g)
    u = np.full((4, 256, 256), 2.0, np.float32)
    for k, (t, r) in enumerate(zip(t_inst, rej)):
        u[k][np.isin(t, r)] = 0.0
    maps = [matching.pair_index_maps(t, si, p) for t, si, p in zip(t_inst, s_inst, pairs)]
    st = {k: np.stack([getattr(m, k) for m in maps]) for k in ("lt", "ls", "band_t", "band_s",
                                                                 "band_ts")}
    miac, _ = matching.miac_loss(fs, ft, fs[:, :1], ft[:, :1], st["lt"], st["ls"], st["band_t"],
                                 st["band_s"], st["band_ts"], n_pairs=sum(m.n_pairs for m in maps))
    return float(piac_loss(fs, ft, torch.from_numpy(u))), float(miac)


@pytest.mark.parametrize("workers,miac,use_prior", [(3, True, True), (1, False, True),
                                                    (8, True, False)])
def test_pooled_masks_equal_the_synchronous_path(batch, workers: int, miac: bool,
                                                 use_prior: bool) -> None:
    s = MaskSettings(WBISParams(), load_prior() if use_prior else None, 0.35, 1.5, miac)
    pipe = MaskPipeline(s, workers=workers)
    images = torch.from_numpy(batch["image"])
    job = pipe.submit_teacher(torch.from_numpy(batch["pt"]), torch.from_numpy(batch["hvt"]),
                              images)
    pipe.submit_student(job, torch.from_numpy(batch["ps"]), torch.from_numpy(batch["hvs"]))
    t, st = job.teacher(), job.student()
    pipe.close()
    t_inst, rej, s_inst, pairs = by_hand(batch, s)
    n_nuclei = sum(int(x.max()) for x in t_inst)
    assert n_nuclei > 100  # real patches: many teacher nuclei
    for k in range(4):
        assert np.array_equal(t.inst[k], t_inst[k]) and t.inst[k].dtype == np.int32
        assert np.array_equal(t.rejected[k], rej[k])
        assert np.array_equal(st.inst[k], s_inst[k])
        assert np.array_equal(st.pairs[k], pairs[k])
    if use_prior:
        assert sum(r.size for r in rej) > 0 and sum(t.scored) > 0
    if miac:
        assert st.maps is not None and st.maps.n_pairs == sum(len(p) for p in pairs) > 50
        assert st.maps.lt.shape == (4, 256, 256)
        assert losses(batch, t.inst, t.rejected, st.inst, st.pairs) == \
            losses(batch, t_inst, rej, s_inst, pairs)
    else:
        assert st.maps is None and all(p.size == 0 for p in st.pairs)


def test_default_workers_sized_to_machine() -> None:
    assert 1 <= default_workers() <= 16


def test_band_counts_with_torch_equal_scipy(batch) -> None:
    from ircr.ssl.band_maps import batch_band_counts

    s = MaskSettings(WBISParams(), None, 0.35, 1.5, True)
    t_inst, _, s_inst, pairs = by_hand(batch, s)
    maps = [matching.pair_index_maps(t, si, p) for t, si, p in zip(t_inst, s_inst, pairs)]
    lt = torch.from_numpy(np.stack([m.lt for m in maps]))
    ls = torch.from_numpy(np.stack([m.ls for m in maps]))
    bt, bs, bts = batch_band_counts(lt, ls, [m.n_pairs for m in maps], chunk=17)
    assert sum(m.n_pairs for m in maps) > 50 and int(bt.max()) >= 2  # overlapping bands
    assert np.array_equal(bt.numpy(), np.stack([m.band_t for m in maps]))
    assert np.array_equal(bs.numpy(), np.stack([m.band_s for m in maps]))
    assert np.array_equal(bts.numpy(), np.stack([m.band_ts for m in maps]))


def test_pipeline_without_host_bands_then_device_bands(batch) -> None:
    from ircr.ssl.band_maps import batch_band_counts

    full = MaskSettings(WBISParams(), None, 0.35, 1.5, True)
    lean = MaskSettings(WBISParams(), None, 0.35, 1.5, True, host_bands=False)
    res = []
    for s in (full, lean):
        pipe = MaskPipeline(s, workers=2)
        job = pipe.submit_teacher(torch.from_numpy(batch["pt"]), torch.from_numpy(batch["hvt"]),
                                  torch.from_numpy(batch["image"]))
        pipe.submit_student(job, torch.from_numpy(batch["ps"]), torch.from_numpy(batch["hvs"]))
        res.append(job.student().maps)
        pipe.close()
    a, b = res
    assert a is not None and b is not None and a.n_pairs == b.n_pairs > 50
    assert np.array_equal(a.lt, b.lt) and np.array_equal(a.ls, b.ls) and b.band_t.max() == 0
    per_image = [int(m.max()) for m in b.lt]
    bt, bs, bts = batch_band_counts(torch.from_numpy(b.lt), torch.from_numpy(b.ls), per_image)
    assert np.array_equal(bt.numpy(), a.band_t) and np.array_equal(bs.numpy(), a.band_s)
    assert np.array_equal(bts.numpy(), a.band_ts)
