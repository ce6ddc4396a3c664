"""Five-feature morphological prior of nuclei (PIAC, spec §3).

Built once, offline, from labelled data: per nucleus (border-touching nuclei left out) the
features area, solidity, circularity, haematoxylin intensity and extent
(:func:`ircr.features.nucleus_features`); one 1-D Gaussian KDE per feature (Scott bandwidth
unless configured) evaluated on a fixed grid (512 points spanning the observed range ±20%)
and divided by its maximum, so every density lies in [0, 1]. Scoring reads the stored grid by
linear interpolation (0 outside the grid); no KDE is evaluated during training.

Score of a nucleus with features z: ``mean_k p_k(z_k)`` (``combine="mean"``, the paper, τ =
0.35) or ``exp(mean_k log max(p_k(z_k), 1e-6))`` (``combine="geometric"``, τ ≈ 0.2).

File format (``.npz``, read with ``allow_pickle=False``; format version 1): ``grids`` and
``densities`` (5, G) float64, ``bandwidths`` (5,) float64 (kernel std in feature units),
``feature_names``/``feature_definitions`` (5,) str, ``sources`` (S,) str, ``n_nuclei`` int,
``mpp`` (M,) float64 (distinct pixel sizes of the source images, µm/px; NaN = unknown),
``ircr_version`` str, ``format_version`` int, ``meta_json`` str (everything else: per-mpp
nucleus counts, bandwidth rule, grid size, notes).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ircr._version import __version__
from ircr.data.sample import Sample
from ircr.errors import IrcrError, file_error
from ircr.features import nucleus_features

FORMAT_VERSION = 1
PRIOR_FEATURES = ("area", "solidity", "circularity", "haematoxylin", "extent")
FEATURE_DEFINITIONS = (
    "area: number of pixels of the nucleus (native pixels of the source image)",
    "solidity: area / convex-hull area (skimage area_convex)",
    "circularity: 4*pi*area / perimeter^2 (skimage 4-connected perimeter)",
    "haematoxylin: mean of skimage.color.rgb2hed channel 0 inside the nucleus",
    "extent: area / bounding-box area",
)
DEFAULT_TAU: dict[str, float] = {"mean": 0.35, "geometric": 0.2}
GEOMETRIC_FLOOR = 1e-6
Combine = Literal["mean", "geometric"]
_REQUIRED = ("grids", "densities", "bandwidths", "feature_names", "format_version")


def prior_keeps(scores: np.ndarray, touches_border: np.ndarray, tau: float) -> np.ndarray:
    """The one keep/reject rule of the prior (PIAC's U mask, ``ircr prior score``).

    A nucleus is kept when its score is >= ``tau`` or when it touches the image border (its
    shape is cut, so it is never judged; its score may be NaN). (n,) bool.
    """
    return (np.asarray(scores, dtype=np.float64) >= tau) | np.asarray(touches_border, bool)


def default_prior_path() -> Path:
    """Path of the prior shipped in the package (built from all 15 CPM-15 tiles)."""
    return Path(str(resources.files("ircr").joinpath("resources/prior_cpm15.npz")))


def _check_combine(combine: str) -> str:
    if combine not in DEFAULT_TAU:
        raise IrcrError(f"prior.combine: must be 'mean' or 'geometric', got {combine!r}")
    return combine


def feature_matrix(feats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stack the five prior features of a :func:`nucleus_features` dict into (n, 5) float64."""
    missing = [k for k in PRIOR_FEATURES if k not in feats]
    if missing:
        raise IrcrError(f"prior: feature dict lacks {', '.join(missing)}")
    return np.stack([np.asarray(feats[k], dtype=np.float64) for k in PRIOR_FEATURES], axis=1)


def _kde_on_grid(x: np.ndarray, name: str, bandwidth: float | str | None,
                 grid: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(grid (G,), density/max (G,), kernel std h) of a 1-D Gaussian KDE of samples x."""
    from scipy.stats import gaussian_kde

    if x.size < 2 or not np.ptp(x) > 0:
        raise IrcrError(f"prior: need at least 2 nuclei with differing {name} to build a KDE "
                        f"(got {x.size})")
    bw = "scott" if bandwidth is None else bandwidth
    try:
        kde = gaussian_kde(x, bw_method=bw)
    except (ValueError, TypeError, np.linalg.LinAlgError) as exc:
        raise IrcrError(f"prior: bandwidth {bandwidth!r} is invalid for {name} ({exc})") from None
    lo, hi = float(x.min()), float(x.max())
    pad = 0.2 * (hi - lo)
    g = np.linspace(lo - pad, hi + pad, grid)
    d = kde(g)
    return g, d / d.max(), float(np.sqrt(kde.covariance[0, 0]))


@dataclass
class MorphPrior:
    """Max-normalised per-feature densities on fixed grids (see module docstring).

    Attributes:
        grids: (5, G) float64 increasing grid of each feature.
        densities: (5, G) float64 in [0, 1], max 1 per row.
        bandwidths: (5,) float64 Gaussian kernel std of each feature (feature units).
        meta: provenance (sources, n_nuclei, mpp, ...), stored with the prior.
        combine: default rule for :meth:`score_features` ("mean" or "geometric").
    """

    grids: np.ndarray
    densities: np.ndarray
    bandwidths: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    combine: str = "mean"

    # ---- building -----------------------------------------------------------------------
    @classmethod
    def from_features(cls, feats: Mapping[str, np.ndarray], bandwidth: float | str | None = None,
                      grid: int = 512, meta: Mapping[str, Any] | None = None) -> MorphPrior:
        """Build from pooled :func:`nucleus_features` arrays (border nuclei must already be out).

        Non-finite rows (e.g. no image, so no haematoxylin) are dropped.
        """
        if int(grid) < 16:
            raise IrcrError(f"prior: grid must have at least 16 points, got {grid}")
        x = feature_matrix(feats)
        x = x[np.all(np.isfinite(x), axis=1)]
        grids, dens, bws = [], [], []
        for k, name in enumerate(PRIOR_FEATURES):
            g, d, h = _kde_on_grid(x[:, k], name, bandwidth, int(grid))
            grids.append(g)
            dens.append(d)
            bws.append(h)
        info = dict(meta or {})
        info.update(n_nuclei=int(x.shape[0]), grid=int(grid),
                    bandwidth_rule="scott" if bandwidth is None else str(bandwidth),
                    border_nuclei="excluded", ircr_version=__version__)
        return cls(np.array(grids), np.array(dens), np.array(bws), info)

    @classmethod
    def build(cls, samples: Iterable[Sample], bandwidth: float | str | None = None,
              grid: int = 512, meta: Mapping[str, Any] | None = None) -> MorphPrior:
        """Build from labelled samples: features of every nucleus not touching the border.

        ``meta`` is merged into the stored metadata; ``sources`` (dataset names), the
        distinct ``mpp`` values and per-mpp nucleus counts are recorded from the samples.
        """
        cols: dict[str, list[np.ndarray]] = {k: [] for k in PRIOR_FEATURES}
        sources: list[str] = []
        per_mpp: dict[str, int] = {}
        n_images = 0
        for s in samples:
            if s.inst is None:
                raise IrcrError(f"{s.meta.get('path', s.name)}: prior needs labelled samples")
            f = nucleus_features(s.image, s.inst)
            keep = ~f["touches_border"]
            for k in PRIOR_FEATURES:
                cols[k].append(f[k][keep])
            src = str(s.meta.get("source", "unknown"))
            if src not in sources:
                sources.append(src)
            mpp = s.meta.get("mpp")
            key = "unknown" if mpp is None else f"{float(mpp):g}"
            per_mpp[key] = per_mpp.get(key, 0) + int(keep.sum())
            n_images += 1
        if n_images == 0:
            raise IrcrError("prior: no samples to build from")
        feats = {k: np.concatenate(v) for k, v in cols.items()}
        info: dict[str, Any] = {"sources": sources, "n_images": n_images,
                                "nuclei_per_mpp": per_mpp}
        info.update(meta or {})
        return cls.from_features(feats, bandwidth=bandwidth, grid=grid, meta=info)

    # ---- file I/O -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the prior as a small versioned ``.npz`` (see module docstring)."""
        p = Path(path)
        meta = dict(self.meta)
        sources = [str(s) for s in meta.get("sources", [])]
        mpps = [float(k) for k in meta.get("nuclei_per_mpp", {}) if k != "unknown"]
        if "unknown" in meta.get("nuclei_per_mpp", {}):
            mpps.append(float("nan"))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as fh:
                np.savez_compressed(
                    fh, grids=self.grids, densities=self.densities, bandwidths=self.bandwidths,
                    feature_names=np.array(PRIOR_FEATURES),
                    feature_definitions=np.array(FEATURE_DEFINITIONS),
                    sources=np.array(sources, dtype=str),
                    n_nuclei=np.int64(meta.get("n_nuclei", 0)),
                    mpp=np.array(sorted(mpps), dtype=np.float64),
                    ircr_version=np.array(str(meta.get("ircr_version", __version__))),
                    format_version=np.int64(FORMAT_VERSION),
                    meta_json=np.array(json.dumps(meta, sort_keys=True)),
                )
        except OSError as exc:
            raise file_error(p, f"cannot write prior ({exc.strerror or exc})") from None
        return p

    @classmethod
    def load(cls, path: str | Path, combine: str = "mean") -> MorphPrior:
        """Read a prior written by :meth:`save`; any problem is a one-line IrcrError."""
        p = Path(path)
        _check_combine(combine)
        if not p.is_file():
            raise file_error(p, "prior file not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise file_error(p, f"not a valid prior .npz file ({type(exc).__name__})") from None
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise file_error(p, f"prior file lacks {', '.join(missing)}")
        version = int(data["format_version"])
        if version > FORMAT_VERSION:
            raise file_error(p, f"prior format version {version} is newer than supported "
                                f"({FORMAT_VERSION}); upgrade ircr")
        names = tuple(str(s) for s in data["feature_names"])
        grids, dens = np.asarray(data["grids"], float), np.asarray(data["densities"], float)
        if names != PRIOR_FEATURES:
            raise file_error(p, f"prior features {names} differ from {PRIOR_FEATURES}")
        if grids.ndim != 2 or grids.shape != dens.shape or grids.shape[0] != len(PRIOR_FEATURES):
            raise file_error(p, f"prior grids {grids.shape} / densities {dens.shape} are not "
                                f"({len(PRIOR_FEATURES)}, G)")
        if not (np.all(np.isfinite(grids)) and np.all(np.diff(grids, axis=1) > 0)):
            raise file_error(p, "prior grids must be finite and increasing")
        meta = json.loads(str(data["meta_json"])) if "meta_json" in data else {}
        return cls(grids, dens, np.asarray(data["bandwidths"], float), meta, combine)

    # ---- scoring ------------------------------------------------------------------------
    def densities_at(self, x: np.ndarray) -> np.ndarray:
        """Per-feature normalised densities (n, 5) of feature rows x (n, 5); NaN -> 0."""
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros(x.shape, dtype=np.float64)
        for k in range(len(PRIOR_FEATURES)):
            out[:, k] = np.interp(x[:, k], self.grids[k], self.densities[k], left=0.0, right=0.0)
        out[~np.isfinite(x)] = 0.0
        return out

    def score_features(self, feats: Mapping[str, np.ndarray],
                       combine: str | None = None) -> np.ndarray:
        """Plausibility score (n,) float64 in [0, 1] of a :func:`nucleus_features` dict."""
        rule = _check_combine(combine or self.combine)
        p = self.densities_at(feature_matrix(feats))
        if p.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if rule == "mean":
            return np.asarray(p.mean(axis=1))
        return np.asarray(np.exp(np.log(np.maximum(p, GEOMETRIC_FLOOR)).mean(axis=1)))

    def score(self, image: np.ndarray, inst: np.ndarray,
              combine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score every instance of ``inst`` (H, W) on ``image`` (H, W, 3) uint8.

        Returns (ids (n,) int64 ascending, scores (n,) float64).
        """
        if image is None:
            raise IrcrError("prior.score: an image is needed (haematoxylin intensity)")
        f = nucleus_features(image, inst)
        return f["id"], self.score_features(f, combine)

    @property
    def default_tau(self) -> float:
        """The natural threshold of this prior's combine rule (0.35 mean, 0.2 geometric)."""
        return DEFAULT_TAU[self.combine]


def load_prior(path: str | Path | None = None, combine: str = "mean") -> MorphPrior:
    """Load ``path``, or the packaged default prior when ``path`` is None."""
    return MorphPrior.load(default_prior_path() if path is None else path, combine=combine)


def plot_prior(prior: MorphPrior, out: str | Path, tau: float | None = None) -> Path:
    """Write a PNG with the five normalised densities and the τ line of the combine rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau = prior.default_tau if tau is None else float(tau)
    raw = prior.meta.get("mpp") or list(prior.meta.get("nuclei_per_mpp", {}))
    mpps = [float(m) for m in np.atleast_1d(np.asarray(raw, dtype=np.float64)) if np.isfinite(m)]
    at = f" at {mpps[0]:g} µm/px" if len(mpps) == 1 else (
        f", native px of {' and '.join(f'{m:g}' for m in sorted(mpps))} µm/px images"
        if mpps else "")
    units = {"area": f"area (px²{at})", "solidity": "solidity (area / convex hull area)",
             "circularity": "circularity (4π·area / perimeter²)",
             "haematoxylin": "haematoxylin (mean optical density)",
             "extent": "extent (area / bounding box area)"}
    fig, axes = plt.subplots(1, len(PRIOR_FEATURES), figsize=(3.4 * len(PRIOR_FEATURES), 3.4),
                             dpi=100)
    for k, (ax, name) in enumerate(zip(axes, PRIOR_FEATURES)):
        ax.plot(prior.grids[k], prior.densities[k], color="tab:purple", label="KDE density")
        ax.axhline(tau, color="tab:red", ls="--", lw=1, label=f"τ = {tau:g} ({prior.combine})")
        ax.set_title(f"{name} (bandwidth {prior.bandwidths[k]:.3g})", fontsize=9)
        ax.set_ylim(0, 1.05)
        # every feature is >= 0 (solidity and extent <= 1): the KDE tails past those bounds
        # are smoothing, not data, so the axes stop there
        hi = 1.0 if name in ("solidity", "extent") else None
        ax.set_xlim(max(0.0, float(prior.grids[k][0])),
                    hi if hi is not None else float(prior.grids[k][-1]))
        ax.set_xlabel(units.get(name, name), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density / its maximum")
    axes[0].legend(loc="upper right", fontsize=7)
    src = ", ".join(map(str, prior.meta.get("sources", []))) or "?"
    fig.suptitle(f"morphological prior: {src}, {prior.meta.get('n_nuclei', '?')} nuclei")
    fig.tight_layout()
    p = Path(out)
    try:
        fig.savefig(p, dpi=100)
    except OSError as exc:
        raise file_error(p, f"cannot write PNG ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return p
