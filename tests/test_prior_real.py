"""The packaged prior on real data: reproducible from CPM-15, keeps real nuclei (spec §3)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ircr.data.datasets import open_dataset
from ircr.features import nucleus_features
from ircr.ssl.prior import DEFAULT_TAU, MorphPrior, load_prior

REPO = Path(__file__).resolve().parents[1]
CPM15_PUBLISHED_NUCLEI = 2905  # HoVer-Net paper / SOURCES.md
# spec §3 table (prior from all 15 CPM-15 tiles, scored on MoNuSeg train nuclei off the border)
SPEC_MONUSEG = {"n": 16741, "mean": 0.978, "geometric": 0.975}


def _monuseg_scores(root: Path) -> dict[str, np.ndarray]:
    import tifffile

    prior = load_prior()
    out: dict[str, list[np.ndarray]] = {"mean": [], "geometric": []}
    for img_path in sorted((root / "images").glob("*.tif")):
        img = np.ascontiguousarray(tifffile.imread(img_path)[..., :3])
        lab = np.array(Image.open(root / "labels_inst" / f"{img_path.stem}.png")).astype(np.int32)
        f = nucleus_features(img, lab)
        keep = ~f["touches_border"]
        sub = {k: v[keep] for k, v in f.items()}
        for rule in out:
            out[rule].append(prior.score_features(sub, rule))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_default_prior_is_reproducible_from_cpm15(cpm15_root: Path, tmp_path: Path) -> None:
    script = REPO / "scripts" / "build_default_prior.py"
    spec = importlib.util.spec_from_file_location("bdp", script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "prior.npz"
    assert mod.main([str(cpm15_root), "--out", str(out)]) == 0
    rebuilt, shipped = MorphPrior.load(out), load_prior()
    np.testing.assert_allclose(rebuilt.grids, shipped.grids, rtol=1e-12)
    np.testing.assert_allclose(rebuilt.densities, shipped.densities, rtol=1e-9, atol=1e-12)
    assert rebuilt.meta["n_nuclei"] == shipped.meta["n_nuclei"]
    # all 15 tiles with the image04/05 swap fixed; border-touching nuclei left out
    total = border = 0
    for s in open_dataset("cpm15", cpm15_root, fix_known_swaps=True):
        f = nucleus_features(None, s.inst)
        total += f["id"].size
        border += int(f["touches_border"].sum())
    assert total == CPM15_PUBLISHED_NUCLEI
    assert shipped.meta["n_images"] == 15
    assert shipped.meta["n_nuclei"] == total - border
    assert sum(shipped.meta["nuclei_per_mpp"].values()) == total - border


def test_default_prior_keeps_cpm15_nuclei(cpm15_root: Path) -> None:
    prior = load_prior()
    feats = []
    for s in open_dataset("cpm15", cpm15_root, fix_known_swaps=True):
        f = nucleus_features(s.image, s.inst)
        keep = ~f["touches_border"]
        feats.append({k: v[keep] for k, v in f.items()})
    pooled = {k: np.concatenate([f[k] for f in feats]) for k in feats[0]}
    for rule, tau in DEFAULT_TAU.items():
        kept = (prior.score_features(pooled, rule) >= tau).mean()
        assert kept >= 0.90, (rule, kept)


def test_default_prior_keeps_monuseg_nuclei(monuseg_root: Path) -> None:
    scores = _monuseg_scores(monuseg_root)
    n = scores["mean"].size
    assert abs(n - SPEC_MONUSEG["n"]) <= 20  # 16,958 nuclei minus those on the border
    for rule, tau in DEFAULT_TAU.items():
        kept = float((scores[rule] >= tau).mean())
        assert kept >= 0.90, (rule, kept)
        assert kept == pytest.approx(SPEC_MONUSEG[rule], abs=0.01), (rule, kept)
