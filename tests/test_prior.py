"""Morphological prior: KDE grid, normalisation, interpolated scoring, file format and errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from ircr.data.sample import Sample
from ircr.errors import IrcrError
from ircr.ssl.prior import (
    PRIOR_FEATURES,
    MorphPrior,
    default_prior_path,
    load_prior,
)


def _disks_sample(radii: list[float], shape: tuple[int, int] = (200, 260)) -> Sample:
    """Digital disks of the given radii on a grey image, away from the border, plus one big
    square touching the border (must be excluded from the prior)."""
    inst = np.zeros(shape, np.int32)
    img = np.full((*shape, 3), 200, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x = 3
    for k, r in enumerate(radii, start=1):
        c = x + int(np.ceil(r))
        disk = (yy - 30) ** 2 + (xx - c) ** 2 <= r * r
        inst[disk] = k
        img[disk] = (90 + 5 * k, 60, 140)
        x = c + int(np.ceil(r)) + 3
    inst[150:, 200:] = 999  # touches the bottom/right edge
    return Sample(img, inst, {"name": "disks", "source": "toy", "mpp": 0.25})


def _flat_prior(area_hi: float) -> MorphPrior:
    """Hand-made prior: area density 1 on [0, area_hi], 0 above; other features always 1."""
    g = np.stack([np.linspace(-1e3, 1e3, 64) for _ in PRIOR_FEATURES])
    d = np.ones_like(g)
    g[0] = np.linspace(0, 2 * area_hi, 64)
    d[0] = (g[0] <= area_hi).astype(float)
    return MorphPrior(g, d, np.ones(5), {"sources": ["hand"]})


def test_build_grid_density_and_border_exclusion() -> None:
    radii = [2.5, 3.2, 4.0, 5.1, 6.3, 7.0, 8.4, 10.2]
    sample = _disks_sample(radii)
    prior = MorphPrior.build([sample], grid=128)
    areas = np.bincount(sample.inst.ravel())[1:len(radii) + 1].astype(float)  # pixel counts
    assert prior.meta["n_nuclei"] == len(radii)  # the border square is excluded
    lo, hi = areas.min(), areas.max()
    g = prior.grids[0]
    assert g.size == 128
    assert g[0] == pytest.approx(lo - 0.2 * (hi - lo))
    assert g[-1] == pytest.approx(hi + 0.2 * (hi - lo))
    ref = gaussian_kde(areas)(g)  # scipy directly, Scott bandwidth
    np.testing.assert_allclose(prior.densities[0], ref / ref.max(), rtol=1e-10)
    assert prior.densities.max(axis=1) == pytest.approx(np.ones(5))
    assert prior.bandwidths[0] == pytest.approx(np.std(areas, ddof=1) * len(areas) ** (-1 / 5))
    assert prior.meta["nuclei_per_mpp"] == {"0.25": len(radii)}


def test_constant_feature_is_an_error() -> None:
    inst = np.zeros((50, 50), np.int32)
    inst[5:10, 5:10] = 1
    inst[20:25, 20:25] = 2  # identical squares: every feature constant
    s = Sample(np.full((50, 50, 3), 120, np.uint8), inst, {"name": "x"})
    with pytest.raises(IrcrError, match="differing"):
        MorphPrior.build([s])
    with pytest.raises(IrcrError, match="no samples"):
        MorphPrior.build([])
    with pytest.raises(IrcrError, match="labelled"):
        MorphPrior.build([Sample(s.image, None, {"name": "u"})])


def test_scoring_interpolates_and_is_zero_outside() -> None:
    prior = _flat_prior(100.0)
    feats = {k: np.array([50.0, 50.0, 50.0, 50.0]) for k in PRIOR_FEATURES}
    feats["area"] = np.array([50.0, 150.0, 50.0, np.nan])
    feats["solidity"] = np.array([0.9, 0.9, 5e3, 0.9])  # third row: solidity off the grid
    p = prior.densities_at(np.stack([feats[k] for k in PRIOR_FEATURES], 1))
    assert p[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]  # NaN -> 0
    assert p[2, 1] == 0.0
    mean = prior.score_features(feats, "mean")
    np.testing.assert_allclose(mean, [1.0, 0.8, 0.8, 0.8])
    geo = prior.score_features(feats, "geometric")
    np.testing.assert_allclose(geo, [1.0, 1e-6 ** 0.2, 1e-6 ** 0.2, 1e-6 ** 0.2])
    # linear interpolation between grid points
    g = np.stack([np.array([0.0, 1.0, 2.0])] * 5)
    d = np.stack([np.array([0.0, 1.0, 0.5])] * 5)
    lin = MorphPrior(g, d, np.ones(5))
    f = {k: np.array([0.25, 1.5]) for k in PRIOR_FEATURES}
    np.testing.assert_allclose(lin.score_features(f), [0.25, 0.75])
    with pytest.raises(IrcrError, match="combine"):
        lin.score_features(f, "median")


def test_score_image_and_save_load_roundtrip(tmp_path: Path) -> None:
    prior = MorphPrior.build([_disks_sample([2.5, 3.2, 4.0, 5.1, 6.3, 7.0, 8.4, 10.2])],
                             meta={"note": "toy"})
    path = prior.save(tmp_path / "sub" / "p.npz")
    back = MorphPrior.load(path, combine="geometric")
    np.testing.assert_array_equal(back.grids, prior.grids)
    np.testing.assert_array_equal(back.densities, prior.densities)
    np.testing.assert_array_equal(back.bandwidths, prior.bandwidths)
    assert back.meta["note"] == "toy" and back.combine == "geometric"
    with np.load(path, allow_pickle=False) as z:
        assert z["format_version"] == 1
        assert tuple(z["feature_names"]) == PRIOR_FEATURES
        assert list(z["sources"]) == ["toy"] and int(z["n_nuclei"]) == 8
        assert z["mpp"].tolist() == [0.25] and str(z["ircr_version"])
        assert len(z["feature_definitions"]) == 5
    s = _disks_sample([2.5, 3.2, 4.0, 5.1, 6.3, 7.0, 8.4, 10.2])
    ids, sc = back.score(s.image, s.inst)
    assert ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 999] and sc.shape == (9,)
    with pytest.raises(IrcrError, match="image is needed"):
        back.score(None, s.inst)  # type: ignore[arg-type]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="not found"):
        MorphPrior.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(IrcrError, match="not a valid prior"):
        MorphPrior.load(junk)
    part = tmp_path / "part.npz"
    np.savez(part, grids=np.zeros((5, 4)))
    with pytest.raises(IrcrError, match="lacks densities"):
        MorphPrior.load(part)
    obj = tmp_path / "obj.npz"
    np.savez(obj, grids=np.array([{"a": 1}], dtype=object), densities=np.zeros(1),
             bandwidths=np.zeros(1), feature_names=np.array(PRIOR_FEATURES), format_version=1)
    with pytest.raises(IrcrError, match="not a valid prior"):
        MorphPrior.load(obj)  # pickled object arrays are refused (allow_pickle=False)
    good = _flat_prior(10.0).save(tmp_path / "good.npz")
    with np.load(good) as z:
        data = dict(z)
    np.savez(tmp_path / "new.npz", **{**data, "format_version": np.int64(99)})
    with pytest.raises(IrcrError, match="newer"):
        MorphPrior.load(tmp_path / "new.npz")
    np.savez(tmp_path / "shape.npz", **{**data, "densities": np.zeros((5, 3))})
    with pytest.raises(IrcrError, match="not"):
        MorphPrior.load(tmp_path / "shape.npz")
    with pytest.raises(IrcrError, match="combine"):
        MorphPrior.load(good, combine="max")
    assert zipfile.is_zipfile(good)


def test_packaged_default_prior_loads() -> None:
    path = default_prior_path()
    assert path.is_file() and path.name == "prior_cpm15.npz"
    assert path.stat().st_size < 100_000
    prior = load_prior()
    assert prior.meta["sources"] == ["cpm15"] and prior.meta["n_images"] == 15
    assert prior.meta["bandwidth_rule"] == "scott" and prior.grids.shape == (5, 512)
    assert set(prior.meta["nuclei_per_mpp"]) == {"0.5", "0.25"}  # 20x and 40x tiles pooled
    assert prior.default_tau == 0.35 and load_prior(combine="geometric").default_tau == 0.2
