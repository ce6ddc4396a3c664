"""Per-nucleus measurements of an instance map: the CSV table and QuPath GeoJSON features.

:func:`nucleus_table` gives the columns :data:`ircr.io.writers.TABLE_COLUMNS` (positions in the
output frame, morphology, prior score, mean NP probability); :func:`geojson_features` the exact
pixel-edge outlines with the same measurements. Slides call both per tile with an offset and
a scale into level-0 pixels, and clip to the slide (``bounds_xy``): the processing frame is
rounded to whole pixels, so its far edge can map a fraction of a pixel past the image.

Coordinate convention (CSV, GeoJSON and µm alike): x right, y down, origin at the top-left
*corner* of the top-left pixel, so pixel (row r, col c) covers ``[c, c + 1] x [r, r + 1]`` and
a one-pixel nucleus there has its centroid at ``(c + 0.5, r + 0.5)``; ``centroid_x_um`` is
``centroid_x_px`` times the pixel size, and the centroid is the centroid of the GeoJSON shape.
Boxes are end-exclusive pixel edges.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ircr.features import nucleus_features
from ircr.io.outlines import transform_outline
from ircr.io.writers import MEASUREMENTS, TABLE_COLUMNS, detection_feature, instance_outlines
from ircr.postproc.confidence import mean_prob


def nucleus_table(
    image: np.ndarray,
    labels: np.ndarray,
    prob: np.ndarray,
    um_per_px: float | None,
    prior: Any = None,
    coord_scale: float = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    prior_area_scale: float = 1.0,
    bounds_xy: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Per-nucleus table (:data:`TABLE_COLUMNS`) of an instance map.

    Args:
        image: (h, w, 3) uint8 RGB; labels: (h, w) int instance map; prob: (h, w) float32.
        um_per_px: microns per pixel of ``labels`` (None: µm columns are NaN).
        prior: a :class:`ircr.ssl.prior.MorphPrior` or None (prior_score NaN).
        coord_scale: output pixels per ``labels`` pixel (slides: level-0 px per processing px).
        offset_xy: position of ``labels``' top-left corner in ``labels`` pixels of the output
            frame (before ``coord_scale``).
        prior_area_scale: factor turning ``labels`` pixel areas into the prior's pixel areas.
        bounds_xy: (width, height) of the output frame; positions are clipped to it.
    """
    f = nucleus_features(image, labels)
    ids = f["id"]
    n = len(ids)
    s = float(coord_scale)
    ox, oy = offset_xy
    um = float(um_per_px) if um_per_px else math.nan
    bbox = np.asarray(f["bbox"], dtype=np.float64).reshape(n, 4)
    if prior is not None and n:
        pf = dict(f)
        pf["area"] = f["area"] * prior_area_scale
        prior_score = prior.score_features(pf)
    else:
        prior_score = np.full(n, math.nan)
    bw, bh = bounds_xy if bounds_xy is not None else (math.inf, math.inf)
    cx = np.clip((f["centroid_x"] + ox + 0.5) * s, 0.0, bw)  # corner-origin frame
    cy = np.clip((f["centroid_y"] + oy + 0.5) * s, 0.0, bh)
    upx = um / s  # µm per output pixel

    def edge(v: np.ndarray, rnd: Any, bound: float) -> np.ndarray:
        return np.clip(rnd(v * s), 0, bound if math.isfinite(bound) else None).astype(np.int64)

    return {
        "id": ids.astype(np.int64),
        "centroid_x_px": cx, "centroid_y_px": cy,
        "centroid_x_um": cx * upx, "centroid_y_um": cy * upx,
        "bbox_x0_px": edge(bbox[:, 1] + ox, np.floor, bw),
        "bbox_y0_px": edge(bbox[:, 0] + oy, np.floor, bh),
        "bbox_x1_px": edge(bbox[:, 3] + ox, np.ceil, bw),
        "bbox_y1_px": edge(bbox[:, 2] + oy, np.ceil, bh),
        "area_px": f["area"] * s * s if s != 1.0 else f["area"].astype(np.int64),
        "area_um2": f["area"] * um * um,
        "perimeter_px": f["perimeter"] * s, "perimeter_um": f["perimeter"] * um,
        "solidity": f["solidity"], "circularity": f["circularity"],
        "eccentricity": f["eccentricity"], "haematoxylin": f["haematoxylin"],
        "prior_score": np.asarray(prior_score, dtype=np.float64),
        "np_prob_mean": mean_prob(labels, prob)[ids],
    }


def empty_table() -> dict[str, np.ndarray]:
    """A table with zero rows."""
    return {c: np.zeros(0) for c in TABLE_COLUMNS}


def geojson_features(inst: np.ndarray, table: dict[str, np.ndarray],
                     offset_xy: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                     id_offset: int = 0,
                     bounds_xy: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """QuPath detection features of the instances in ``table`` (outlined from ``inst``).

    Shapes are exact pixel-edge outlines (``Polygon``, or ``MultiPolygon`` for a nucleus whose
    parts touch only at a corner; :mod:`ircr.io.outlines`); vertices are
    ``(x + offset_x) * scale`` in the output frame; the "Nucleus id"
    measurement is ``id + id_offset`` (the id in the label image and CSV); with ``bounds_xy``
    (width, height) vertices are clipped to the frame (only the far edge of a rounded
    processing frame can pass it, by less than ``scale``, so shapes stay valid).
    """
    ids = np.asarray(table["id"], dtype=np.int64)
    outlines = instance_outlines(inst, ids)
    cols = {name: np.asarray(table[col], dtype=np.float64) for col, name in MEASUREMENTS.items()}
    feats = []
    for i, k in enumerate(ids):
        shape = transform_outline(outlines[int(k)], offset_xy, scale)
        if bounds_xy is not None:
            shape = [[np.minimum(r, bounds_xy) for r in poly] for poly in shape]
        meas = {name: v[i] for name, v in cols.items()}
        meas["Nucleus id"] = float(k + id_offset)
        feats.append(detection_feature(shape, meas))
    return feats
