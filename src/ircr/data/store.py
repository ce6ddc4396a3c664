"""Read a prepared dataset back (see :mod:`ircr.data.prepare` for the layout).

``PreparedDataset(path)`` gives the image list, the patch grid, any window of an image
(reflect-padded outside the image, for patches plus an augmentation margin) and the split
files. Decoded images and maps are cached in memory (LRU within a byte budget).
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ircr.data.splits import Patch, patch_grid, read_split_file
from ircr.errors import IrcrError
from ircr.io.wsi import check_mpp

__all__ = ["PreparedDataset", "Split", "mirrored_window", "reflect_index"]


@dataclass
class Split:
    """A split of a prepared dataset: image indices and patches (``Patch`` tuples)."""

    train_images: list[int]
    val_images: list[int]
    labelled_patches: list[Patch]
    unlabelled_patches: list[Patch]
    ratio: str
    seed: int
    name: str = ""
    path: Path | None = None
    val_fraction: float = 0.1
    test_images: list[int] = field(default_factory=list)  # held out by image (6:2:2 splits)
    test_fraction: float = 0.0


def reflect_index(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` mirrored into ``[0, size)`` (no edge repeat,
    like ``np.pad(mode="reflect")``, repeated as often as needed). (length,) int64."""
    idx = np.arange(start, start + length, dtype=np.int64)
    if size == 1:
        return np.zeros(length, np.int64)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def mirrored_window(inst: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """(h, w) window of a whole-image instance map, reflect-padded outside the image.

    Every mirrored copy of a nucleus gets its own id (``id + k * (max_id + 1)``, k numbering
    the mirrored copies), so a nucleus at the image border and its mirror image are separate
    instances. ``inst`` may be a memory map (pseudo-labels); returns a new (h, w) int32 array.
    The one mirrored-window rule of the package (prepared labels and pseudo-labels alike).
    """
    height, width = inst.shape
    if y0 >= 0 and x0 >= 0 and y0 + h <= height and x0 + w <= width:
        return np.array(inst[y0 : y0 + h, x0 : x0 + w], dtype=np.int32)
    ry, rx = reflect_index(y0, h, height), reflect_index(x0, w, width)
    lab = np.asarray(inst).take(ry, axis=0).take(rx, axis=1).astype(np.int64)
    ty, tx = _copy_index(y0, h, height), _copy_index(x0, w, width)
    nx = int(tx.max() - tx.min()) + 1
    code = (ty - ty.min())[:, None] * nx + (tx - tx.min())[None, :]
    home = int(-ty.min()) * nx + int(-tx.min())  # code of the image itself -> 0
    code = np.where(code == home, 0, np.where(code < home, code + 1, code))
    step = int(np.max(inst, initial=0)) + 1
    lab = np.where(lab > 0, lab + code * step, 0)
    if lab.max(initial=0) > np.iinfo(np.int32).max:
        raise IrcrError(f"read_window: window {h}x{w} has too many mirrored copies")
    return lab.astype(np.int32)


def _read_png(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise IrcrError(f"{path}: file of the prepared dataset is missing")
    arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), flags)
    if arr is None:
        raise IrcrError(f"{path}: cannot decode (corrupt PNG?)")
    return arr


class PreparedDataset:
    """A dataset written by ``ircr data prepare``.

    Attributes:
        path: the dataset folder.
        images: per image a dict with at least name, file, source, mpp, height, width,
            labelled, nuclei.
        patches: the patch grid as ``Patch(image, y0, x0, h, w)`` (h, w = valid size).
        patch_size, stride, source: as prepared.
    """

    def __init__(self, path: str | Path, cache_bytes: int = 4 << 30) -> None:
        self.path = Path(path)
        index_path = self.path / "dataset.json"
        if not self.path.is_dir():
            raise IrcrError(f"{self.path}: prepared dataset folder not found")
        if not index_path.is_file():
            raise IrcrError(
                f"{index_path}: not found (not a prepared dataset; run 'ircr data prepare')"
            )
        try:
            self.info: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IrcrError(f"{index_path}: corrupt JSON ({exc})") from None
        self._check_index(index_path)
        self.images: list[dict[str, Any]] = list(self.info["images"])
        self.names: list[str] = [str(m["name"]) for m in self.images]
        self.source: str = str(self.info.get("source", ""))
        self.patch_size: int = int(self.info["patch"])
        self.stride: int = int(self.info["stride"])
        self.patches: list[Patch] = self._read_patches()
        self._by_name = {n: i for i, n in enumerate(self.names)}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = int(cache_bytes)
        self._cached = 0

    # ---------------------------------------------------------------- index
    def _check_index(self, where: Path) -> None:
        info = self.info
        if not isinstance(info, dict) or info.get("format") != "ircr-prepared-dataset":
            raise IrcrError(f"{where}: not an ircr prepared dataset index")
        for key in ("patch", "stride", "images"):
            if key not in info:
                raise IrcrError(f"{where}: index lacks '{key}'")
        if not isinstance(info["images"], list) or not info["images"]:
            raise IrcrError(f"{where}: index lists no images")
        for k, m in enumerate(info["images"]):
            for key in ("name", "height", "width", "image", "labelled"):
                if not isinstance(m, dict) or key not in m:
                    raise IrcrError(f"{where}: image entry {k} lacks '{key}'")
            if m.get("mpp") is not None:  # datasets prepared before prepare checked it
                check_mpp(m["mpp"], key=f"{where}: image {m['name']!r} mpp")

    def _read_patches(self) -> list[Patch]:
        path = self.path / "patches.csv"
        expected = [
            p
            for i, m in enumerate(self.images)
            for p in patch_grid(i, int(m["height"]), int(m["width"]), self.patch_size, self.stride)
        ]
        if not path.is_file():
            raise IrcrError(f"{path}: file of the prepared dataset is missing")
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            got = [
                Patch(int(r["image"]), int(r["y0"]), int(r["x0"]), int(r["h"]), int(r["w"]))
                for r in rows
            ]
        except (KeyError, ValueError, TypeError):
            raise IrcrError(f"{path}: corrupt patch table") from None
        if got != expected:
            raise IrcrError(f"{path}: patch table does not match the images in dataset.json")
        return got

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({str(self.path)!r}: {len(self.images)} images, "
            f"{len(self.patches)} patches of {self.patch_size})"
        )

    def index_of(self, name: str) -> int:
        """Image index of ``name`` (IrcrError if unknown)."""
        if name not in self._by_name:
            raise IrcrError(f"{self.path}: no image named '{name}'")
        return self._by_name[name]

    @property
    def n_nuclei(self) -> int:
        """Total number of labelled nuclei."""
        return sum(int(m.get("nuclei", 0)) for m in self.images)

    # ---------------------------------------------------------------- pixels
    def _remember(self, key: tuple[str, int], arr: np.ndarray) -> None:
        self._cache[key] = arr
        self._cached += arr.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes

    def _image_entry(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < len(self.images):
            raise IrcrError(f"{self.path}: image index {i} out of range 0..{len(self.images) - 1}")
        return self.images[int(i)]

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8 RGB (cached; do not modify in place)."""
        key = ("image", int(i))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        m = self._image_entry(i)
        path = self.path / str(m["image"])
        bgr = _read_png(path, cv2.IMREAD_COLOR)
        if bgr.shape[:2] != (int(m["height"]), int(m["width"])):
            raise IrcrError(f"{path}: size {bgr.shape[:2]} differs from dataset.json")
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        rgb.setflags(write=False)
        self._remember(key, rgb)
        return rgb

    def load_inst(self, i: int) -> np.ndarray:
        """Instance map of image ``i`` as (H, W) int32 (cached; read-only)."""
        key = ("inst", int(i))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        m = self._image_entry(i)
        if not m.get("labelled") or not m.get("labels"):
            raise IrcrError(f"{self.path}: image '{m['name']}' has no instance labels")
        path = self.path / str(m["labels"])
        if path.suffix == ".npy":
            if not path.is_file():
                raise IrcrError(f"{path}: file of the prepared dataset is missing")
            try:
                arr = np.load(str(path), allow_pickle=False)
            except (ValueError, OSError, EOFError):
                raise IrcrError(f"{path}: cannot read (corrupt .npy?)") from None
        else:
            arr = _read_png(path, cv2.IMREAD_UNCHANGED)
        if arr.ndim != 2 or arr.shape != (int(m["height"]), int(m["width"])):
            raise IrcrError(f"{path}: label map shape {arr.shape} differs from dataset.json")
        inst = np.ascontiguousarray(arr.astype(np.int32))
        inst.setflags(write=False)
        self._remember(key, inst)
        return inst

    def read_window(
        self, i: int, y0: int, x0: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Any (h, w) window of image ``i``, reflect-padded where it leaves the image.

        Returns image (h, w, 3) uint8 and inst (h, w) int32 (None for unlabelled images),
        both new arrays. In the inst map every mirrored copy of a nucleus gets its own id
        (``id + k * (max_id + 1)``, k numbering the mirrored copies), so a nucleus at the
        image border and its mirror image are separate instances.
        """
        if h < 1 or w < 1:
            raise IrcrError(f"read_window: window size must be positive, got {h}x{w}")
        image = self.load_image(i)
        inst = self.load_inst(i) if self.images[int(i)].get("labelled") else None
        height, width = image.shape[:2]
        if y0 >= 0 and x0 >= 0 and y0 + h <= height and x0 + w <= width:
            win = image[y0 : y0 + h, x0 : x0 + w].copy()
            return win, None if inst is None else inst[y0 : y0 + h, x0 : x0 + w].copy()
        ry, rx = reflect_index(y0, h, height), reflect_index(x0, w, width)
        win = image.take(ry, axis=0).take(rx, axis=1)
        if inst is None:
            return win, None
        return win, mirrored_window(inst, y0, x0, h, w)

    def read_patch(self, patch: Patch, margin: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The patch's full ``patch_size`` window plus ``margin`` px of context each side."""
        size = self.patch_size + 2 * int(margin)
        return self.read_window(patch.image, patch.y0 - margin, patch.x0 - margin, size, size)

    # ---------------------------------------------------------------- splits
    def split_names(self) -> list[str]:
        """Names of the split files under ``splits/`` (sorted)."""
        folder = self.path / "splits"
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def load_split(self, name_or_path: str | Path) -> Split:
        """Load ``splits/<name>.yaml`` (or a path to a split file) as a :class:`Split`."""
        cand = Path(name_or_path)
        if cand.suffix in (".yaml", ".yml") and (cand.is_file() or cand.parent != Path(".")):
            path = cand
        else:
            path = self.path / "splits" / f"{name_or_path}.yaml"
            if not path.is_file():
                known = ", ".join(self.split_names()) or "none"
                raise IrcrError(f"{path}: split not found (available: {known})")
        doc = read_split_file(path)
        if int(doc["patch"]) != self.patch_size or int(doc["stride"]) != self.stride:
            raise IrcrError(f"{path}: split was made for another patch grid")
        lookup = {(self.names[p.image], p.y0, p.x0): p for p in self.patches}

        def images(key: str) -> list[int]:
            out = []
            for n in doc.get(key) or []:
                if str(n) not in self._by_name:
                    raise IrcrError(f"{path}: {key} names unknown image '{n}'")
                out.append(self._by_name[str(n)])
            return out

        def patches(key: str) -> list[Patch]:
            out = []
            for ref in doc[key] or []:
                try:
                    out.append(lookup[(str(ref[0]), int(ref[1]), int(ref[2]))])
                except (KeyError, IndexError, TypeError, ValueError):
                    raise IrcrError(f"{path}: {key} has unknown patch {ref!r}") from None
            return out

        return Split(
            train_images=images("train_images"),
            val_images=images("val_images"),
            labelled_patches=patches("labelled_patches"),
            unlabelled_patches=patches("unlabelled_patches"),
            ratio=str(doc["ratio"]),
            seed=int(doc["seed"]),
            name=path.stem,
            path=path,
            val_fraction=float(doc.get("val_fraction", 0.1)),
            test_images=images("test_images"),
            test_fraction=float(doc.get("test_fraction", 0.0)),
        )


def _copy_index(start: int, length: int, size: int) -> np.ndarray:
    """Mirrored-copy number of each coordinate: 0 inside ``[0, size)``, -1 just before,
    +1 just after, ...; (length,) int64."""
    idx = np.arange(start, start + length, dtype=np.int64)
    if size == 1:
        return idx
    # past each edge, every size-1 coordinates form the next mirrored copy
    out = np.zeros(length, np.int64)
    below, above = idx < 0, idx >= size
    out[below] = -((-idx[below] - 1) // (size - 1)) - 1
    out[above] = (idx[above] - size) // (size - 1) + 1
    return out


def summarise(ds: PreparedDataset, split: Split | None = None) -> dict[str, Any]:
    """Counts of a prepared dataset (and of ``split`` when given)."""
    out: dict[str, Any] = {
        "dataset": str(ds.path),
        "source": ds.source,
        "images": len(ds.images),
        "labelled_images": sum(bool(m.get("labelled")) for m in ds.images),
        "patches": len(ds.patches),
        "patch_size": ds.patch_size,
        "stride": ds.stride,
        "nuclei": ds.n_nuclei,
        "splits": ds.split_names(),
    }
    if split is not None:
        out.update(
            split=split.name,
            ratio=split.ratio,
            seed=split.seed,
            train_images=len(split.train_images),
            val_images=len(split.val_images),
            labelled_patches=len(split.labelled_patches),
            unlabelled_patches=len(split.unlabelled_patches),
            val_patches=sum(1 for p in ds.patches if p.image in set(split.val_images)),
        )
        if split.test_images:
            out.update(test_images=len(split.test_images),
                       test_patches=sum(1 for p in ds.patches
                                        if p.image in set(split.test_images)))
    return out


def show_dataset(
    path: str | Path, split: str | Path | None = None, overlay: str | Path | None = None,
    n: int = 4,
) -> str:
    """Text report of a prepared dataset; writes an overlay PNG of ``n`` patches if asked.

    With no ``split`` the only split file is used when there is exactly one. The overlay
    shows labelled patches of the split when there is one, else patches of the whole grid.
    """
    ds = PreparedDataset(path)
    names = ds.split_names()
    sp = ds.load_split(split) if split is not None else (
        ds.load_split(names[0]) if len(names) == 1 else None)
    info = summarise(ds, sp)
    lines = [f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in info.items()]
    if overlay is not None:
        Path(overlay).parent.mkdir(parents=True, exist_ok=True)
        dataset_figure(ds, sp, overlay, n)
        lines.append(f"overlay: {overlay}")
    return "\n".join(lines)


LABELLED_COLOR = (0, 200, 0)
VAL_COLOR = (40, 120, 255)


def _pick(items: list[Any], n: int) -> list[Any]:
    if not items or n < 1:
        return []
    n = min(int(n), len(items))
    return [items[int(k)] for k in np.linspace(0, len(items) - 1, n).round()]


def _patch_panel(ds: PreparedDataset, p: Patch, color: tuple[int, int, int] | None
                 ) -> np.ndarray:
    from ircr.io.figures import thick_overlay

    image, inst = ds.read_patch(p)
    tile = image if (inst is None or color is None) else thick_overlay(image, inst, color)
    tile = tile.copy()
    tile[p.h:, :] //= 2
    tile[:, p.w:] //= 2
    return tile


def dataset_figure(ds: PreparedDataset, split: Split | None, out: str | Path,
                   n: int = 4) -> Path:
    """Figure of ``n`` labelled, ``n`` unlabelled patches and up to 2 validation images.

    Without a split: ``n`` patches of the whole grid with their labels. Patch titles give the
    image name and position; dimmed margins are reflect padding.
    """
    from ircr.io.figures import panel_figure, thick_overlay

    panels: list[tuple[np.ndarray, str]] = []
    legend = [(LABELLED_COLOR, "nucleus outline (labelled patch)")]

    def title(kind: str, p: Patch) -> str:
        return f"{kind}: {ds.names[p.image][:18]} y{p.y0} x{p.x0}"

    if split is None:
        picks = _pick(ds.patches, n)
        if not picks:
            raise IrcrError(f"{ds.path}: no patches to show")
        panels += [(_patch_panel(ds, p, LABELLED_COLOR), title("patch", p)) for p in picks]
        what = f"{len(ds.patches)} patches (no split chosen)"
    else:
        panels += [(_patch_panel(ds, p, LABELLED_COLOR), title("labelled", p))
                   for p in _pick(split.labelled_patches, n)]
        panels += [(_patch_panel(ds, p, None), title("unlabelled", p))
                   for p in _pick(split.unlabelled_patches, n)]
        for i in split.val_images[:2]:
            inst = ds.load_inst(i) if ds.images[i].get("labelled") else None
            img = np.asarray(ds.load_image(i))
            panels.append((img if inst is None else thick_overlay(img, inst, VAL_COLOR),
                           f"validation image: {ds.names[i][:22]}"))
        legend.append((VAL_COLOR, "nucleus outline (validation image, whole)"))
        what = (f"split {split.name}: {len(split.labelled_patches)} labelled / "
                f"{len(split.unlabelled_patches)} unlabelled patches, "
                f"{len(split.val_images)} validation image(s)")
        if not panels:
            raise IrcrError(f"{ds.path}: no patches to show")
    mpps = {m.get("mpp") for m in ds.images if m.get("mpp")}
    res = f" at {mpps.pop():g} µm/px" if len(mpps) == 1 else ""
    return panel_figure(out, panels, f"{ds.path.name}: {what}", legend=legend,
                        note=f"{ds.patch_size} px patches{res}; unlabelled patches are shown "
                             "without outlines (their labels are never used); dimmed = "
                             "reflect padding", ncols=4)
