"""Readable figures: titled panels with a legend (matplotlib) and captioned overlays (OpenCV).

* :func:`panel_figure`: a grid of image panels, each with a title, a figure title, an optional
  note line and a colour legend (its entries wrap onto more rows when they are wider than
  the figure); written at a fixed, predictable size (:func:`figure_size_px`), never cropped.
* :func:`thick_overlay`: instance outlines ``width`` px wide (1-px outlines vanish when a
  figure is scaled down).
* :func:`caption_image`: a full-resolution overlay with a white header band holding a title
  and colour swatches (keeps every pixel of the image for close inspection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ircr.errors import file_error
from ircr.io.writers import outline_mask

Color = tuple[int, int, int]
PANEL_INCHES = 3.2
HEADER_INCHES = 0.75
LEGEND_INCHES = 0.45
LEGEND_ROW_INCHES = 0.22  # each further legend row (entries wrap to fit the figure width)
DPI = 100


def thick_overlay(image: np.ndarray, inst: np.ndarray, color: Color,
                  width: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``image`` with instance outlines ``width`` px wide.

    ``width`` None: 1 px per 160 px of image side (at least 1), so outlines stay visible when
    the image is shown at a figure panel's size.
    """
    if width is None:
        width = max(1, round(max(np.shape(inst)[:2]) / 160))
    edge = outline_mask(inst)
    if width > 1:
        k = np.ones((width, width), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), k).astype(bool) & (np.asarray(inst) > 0) | edge
    out = np.array(image, dtype=np.uint8, copy=True)
    out[edge] = color
    return out


def figure_size_px(n_panels: int, ncols: int | None = None,
                   legend: bool = True, legend_rows: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a :func:`panel_figure` with ``n_panels`` panels and a
    legend of ``legend_rows`` rows."""
    cols = ncols or min(n_panels, 4)
    rows = math.ceil(n_panels / cols)
    w = cols * PANEL_INCHES
    band = LEGEND_INCHES + LEGEND_ROW_INCHES * (max(1, legend_rows) - 1) if legend else 0.0
    h = rows * PANEL_INCHES + HEADER_INCHES + band
    return round(w * DPI), round(h * DPI)


def _legend_columns(fig: Any, handles: Sequence[Any], labels: list[str],
                    width_px: float) -> int:
    """Most legend columns whose rendered width fits ``width_px`` (at least 1): a legend
    wider than the figure would be cut at both sides."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(labels), 1, -1):
        leg = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8,
                         frameon=False)
        fits = leg.get_window_extent(renderer).width <= 0.98 * width_px
        leg.remove()
        if fits:
            return ncol
    return 1


def panel_figure(path: str | Path, panels: Sequence[tuple[np.ndarray, str]], title: str,
                 legend: Sequence[tuple[Color, str]] = (), ncols: int | None = None,
                 note: str | None = None) -> Path:
    """Write a grid of titled image panels with a figure title and a colour legend.

    Args:
        path: PNG to write.
        panels: (RGB uint8 image, panel title) pairs.
        title: figure title (what the figure shows).
        legend: (RGB colour, label) entries drawn as lines under the panels.
        ncols: panels per row (default up to 4).
        note: an extra line under the title (units, scale, caveats).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(panels)
    cols = ncols or min(n, 4)
    rows = math.ceil(n / cols)
    wpx, hpx = figure_size_px(n, cols, bool(legend))
    fig = plt.figure(figsize=(wpx / DPI, hpx / DPI), dpi=DPI)
    handles = [Line2D([0], [0], color=(c[0] / 255, c[1] / 255, c[2] / 255), lw=3)
               for c, _ in legend]
    labels = [lab for _, lab in legend]
    lcols = _legend_columns(fig, handles, labels, wpx) if legend else 1
    lrows = math.ceil(len(labels) / lcols) if legend else 1
    wpx, hpx = figure_size_px(n, cols, bool(legend), lrows)
    fig.set_size_inches(wpx / DPI, hpx / DPI)
    top = 1 - HEADER_INCHES * DPI / hpx
    bottom = ((LEGEND_INCHES + LEGEND_ROW_INCHES * (lrows - 1)) * DPI / hpx) if legend else 0.0
    grid = fig.add_gridspec(rows, cols, left=0.01, right=0.99, top=top, bottom=bottom,
                            wspace=0.04, hspace=0.18)
    for k, (img, label) in enumerate(panels):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11, y=1 - 0.08 * DPI / hpx, va="top")
    if note:
        fig.text(0.5, 1 - 0.34 * DPI / hpx, note, ha="center", va="top", fontsize=8,
                 color="#444444")
    if legend:
        fig.legend(handles, labels, loc="lower center", ncol=lcols, fontsize=8,
                   frameon=False)
    out = Path(path)
    try:
        fig.savefig(out, dpi=DPI)
    except OSError as exc:
        raise file_error(out, f"cannot write figure ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return out


def caption_image(image: np.ndarray, title: str,
                  legend: Sequence[tuple[Color, str]] = ()) -> np.ndarray:
    """``image`` (RGB uint8) below a white header band with ``title`` and colour swatches.

    Legend entries that do not fit the image width continue on the next line (a 128 px
    diagnostic patch gets one or two entries per line), so none is cut at the edge.
    """
    h, w = image.shape[:2]
    scale = max(0.45, min(1.0, w / 1400))
    line = int(30 * scale) + 8
    font = cv2.FONT_HERSHEY_SIMPLEX
    rows = _legend_rows(legend, w, scale, font)
    band = np.full((line * (1 + len(rows)) + 6, w, 3), 255, np.uint8)
    cv2.putText(band, title, (8, line - 8), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    sw = int(28 * scale)
    for r, entries in enumerate(rows):
        y, x = (r + 2) * line - 8, 8
        for color, label in entries:
            cv2.rectangle(band, (x, y - int(14 * scale)), (x + sw, y), color, -1)
            x += sw + 6
            cv2.putText(band, label, (x, y), font, scale * 0.9, (0, 0, 0), 1, cv2.LINE_AA)
            x += cv2.getTextSize(label, font, scale * 0.9, 1)[0][0] + 20
    return np.concatenate([band, np.asarray(image, np.uint8)], axis=0)


def _legend_rows(legend: Sequence[tuple[Color, str]], width: int, scale: float,
                 font: int) -> list[list[tuple[Color, str]]]:
    """Legend entries split into lines that fit ``width`` px (at least one entry a line)."""
    rows: list[list[tuple[Color, str]]] = []
    x = 8
    for color, label in legend:
        need = int(28 * scale) + 6 + cv2.getTextSize(label, font, scale * 0.9, 1)[0][0]
        if not rows or (x + need > width - 4 and rows[-1]):
            rows.append([])
            x = 8
        rows[-1].append((color, label))
        x += need + 20
    return rows
