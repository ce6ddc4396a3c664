"""Training data: prepared dataset + split -> per-iteration batches (worker processes).

Every iteration ``i`` is one item of a map-style dataset: the labelled samples with stream
keys ``i*B .. i*B+B-1`` and the unlabelled samples with keys ``i*Bu .. i*Bu+Bu-1``. A key
``k`` of a stream picks its patch from a seeded permutation of the stream's patch pool
(cycle ``k // n``; the labelled pool cycles while the unlabelled one is passed once per
epoch) and seeds its own augmentation RNG with ``(seed, stream, k)``. So the data of an
iteration depends only on (seed, i): a resumed run sees exactly the batches an uninterrupted
run would, for any number of DataLoader workers.

Per labelled sample: read the patch plus ``context_margin`` px of context (reflect-padded
outside the image), apply one sampled geometry (HoVer-Net ranges) to image, instance map and
the in-image mask together, compute NP/HV targets on the warped context and crop them to the
patch, then photometric augmentation. Per unlabelled sample: the same read and one shared
geometry, then the weak (teacher) and strong (student) photometric views; ``src_index`` maps
each view pixel back to the un-augmented patch (see :mod:`ircr.train.methods.base`).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ircr.data.augment import apply_geometry, photometric, sample_geometry, strong_view, weak_view
from ircr.data.store import PreparedDataset, Split, mirrored_window
from ircr.data.targets import hover_targets
from ircr.errors import IrcrError

if TYPE_CHECKING:  # pragma: no cover
    from ircr.train.config import ExperimentConfig

LABELLED, UNLABELLED = 1, 2  # RNG stream ids


@dataclass
class ExtraLabelled:
    """Pseudo-labelled patches added to the labelled training set (self-training).

    Attributes:
        patch_ids: patch ids of ``trainer.dataset`` to train on as labelled patches.
        inst_maps: image name -> path of a ``.npy`` file holding the (H, W) int32 instance map
            of that whole image (same frame as the prepared image). The loader reads the
            patch's context window from it exactly as it reads ground truth, so the targets
            are computed after the geometric augmentation as for real labels.
    """

    patch_ids: list[int]
    inst_maps: dict[str, Path] = field(default_factory=dict)



@dataclass
class TrainSplit:
    """A split resolved to patch ids (indices into ``dataset.patches``) and image names."""

    name: str
    path: Path | None
    labelled: list[int]
    unlabelled: list[int]
    train_images: list[str]
    val_images: list[str]
    raw: Split | None = field(default=None, repr=False)


def open_prepared(path: Path | str | None, where: str = "config") -> PreparedDataset:
    """Open the prepared dataset of ``data.dataset`` with a one-line error naming the key."""
    if path is None:
        raise IrcrError(f"{where}: missing required config key 'data.dataset'")
    p = Path(path)
    if not p.is_dir():
        raise IrcrError(f"{where}: data.dataset: prepared dataset folder not found: {p} "
                        "(create it with 'ircr data prepare')")
    return PreparedDataset(p)


def resolve_split(ds: PreparedDataset, split: str, where: str = "config") -> TrainSplit:
    """Load split ``split`` (name under ``splits/`` or a file) as patch ids and image names."""
    try:
        raw = ds.load_split(split)
    except IrcrError as exc:
        raise IrcrError(f"{where}: data.split: {exc}") from None
    ids = {p: i for i, p in enumerate(ds.patches)}
    return TrainSplit(
        name=raw.name, path=raw.path,
        labelled=[ids[p] for p in raw.labelled_patches],
        unlabelled=[ids[p] for p in raw.unlabelled_patches],
        train_images=[ds.names[i] for i in raw.train_images],
        val_images=[ds.names[i] for i in raw.val_images], raw=raw)


def write_split_copy(split: TrainSplit, dest_dir: Path) -> Path | None:
    """Copy the split file into the run folder as ``split.yaml`` (the run's data record)."""
    if split.path is None:
        return None
    dest = Path(dest_dir) / "split.yaml"
    if split.path.resolve() != dest.resolve():
        shutil.copyfile(split.path, dest)
    return dest


def _permutation(seed: int, stream: int, cycle: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, 7, cycle]).permutation(n)


class IterationSet(Dataset[dict[str, Any]]):
    """Map-style dataset: item ``i`` = the whole batch of iteration ``i`` (CPU tensors)."""

    def __init__(self, ds: PreparedDataset, split: TrainSplit, cfg: ExperimentConfig,
                 extra: ExtraLabelled | None, uses_unlabelled: bool,
                 instances: bool = False, rank: int = 0, world: int = 1) -> None:
        self.ds = ds
        self.rank, self.world = int(rank), int(world)  # torchrun: this rank's share
        self.instances = instances  # labelled samples also carry "inst" (methods/base.py)
        self.cfg = cfg
        self.seed = int(cfg.train.seed)
        self.size = int(cfg.data.patch_size)
        self.margin = int(cfg.data.context_margin)
        self.extra_maps = {str(k): Path(v) for k, v in (extra.inst_maps if extra else {}).items()}
        extra_ids = [int(i) for i in (extra.patch_ids if extra else [])]
        self.pseudo = set(extra_ids)
        self.lab_pool = [int(i) for i in split.labelled] + extra_ids
        self.unl_pool = [int(i) for i in split.unlabelled] if uses_unlabelled else []
        self.uses_unlabelled = uses_unlabelled
        self._perm: dict[tuple[int, int], np.ndarray] = {}
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:  # items are addressed by iteration number; no natural length
        return 2**62

    def __getstate__(self) -> dict[str, Any]:
        """Pickle for worker processes: the dataset by path (no image cache), no caches."""
        state = dict(self.__dict__)
        state.update(ds=str(self.ds.path), _perm={}, _maps={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["ds"] = PreparedDataset(state["ds"])
        self.__dict__.update(state)

    def _pick(self, stream: int, pool: list[int], key: int) -> int:
        cycle, pos = divmod(key, len(pool))
        perm = self._perm.get((stream, cycle))
        if perm is None:
            if len(self._perm) > 8:
                self._perm.clear()
            perm = self._perm[(stream, cycle)] = _permutation(self.seed, stream, cycle, len(pool))
        return pool[int(perm[pos])]

    def _read(self, pid: int, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None,
                                                          np.ndarray]:
        """Patch + margin: image (S, S, 3) uint8, inst (S, S) int64 or None, in-image mask."""
        p = self.ds.patches[pid]
        m, s = self.margin, self.size + 2 * self.margin
        y0, x0 = p.y0 - m, p.x0 - m
        image, inst = self.ds.read_window(p.image, y0, x0, s, s)
        name = self.ds.names[p.image]
        if need_labels and pid in self.pseudo:
            if name not in self._maps:
                self._maps[name] = np.load(self.extra_maps[name], mmap_mode="r")
            inst = mirrored_window(self._maps[name], y0, x0, s, s)
        if need_labels and inst is None:
            raise IrcrError(f"{self.ds.path}: labelled patch {pid} of image '{name}' has no labels")
        h, w = int(self.ds.images[p.image]["height"]), int(self.ds.images[p.image]["width"])
        ys, xs = np.arange(y0, y0 + s), np.arange(x0, x0 + s)
        valid = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
        return image, None if inst is None else inst.astype(np.int64), valid

    def labelled_sample(self, key: int) -> dict[str, np.ndarray | int]:
        """One augmented labelled sample with NP/HV targets (arrays, see base.py)."""
        pid = self._pick(LABELLED, self.lab_pool, key)
        rng = np.random.default_rng([self.seed, LABELLED, key])
        aug = self.cfg.data.augment
        image, inst, valid = self._read(pid, True)
        assert inst is not None
        s, m, size = image.shape[0], self.margin, self.size
        geom = sample_geometry(rng, aug)
        img_w, code = apply_geometry(image, inst * 2 + valid, geom, (s, s), aug.image_interp)
        assert img_w is not None and code is not None
        np_t, hv_t = hover_targets(code // 2, crop=(m, m, size, size))
        crop = (slice(m, m + size), slice(m, m + size))
        img = photometric(np.ascontiguousarray(img_w[crop]), rng, aug)
        out: dict[str, np.ndarray | int] = {"image": img, "np": np_t, "hv": hv_t,
                                            "valid": (code[crop] % 2) == 1, "index": pid}
        if self.instances:
            out["inst"] = np.ascontiguousarray(code[crop] // 2)
        return out

    def unlabelled_sample(self, key: int) -> dict[str, np.ndarray | int]:
        """Weak/strong views of one unlabelled patch after one shared geometry."""
        pid = self._pick(UNLABELLED, self.unl_pool, key)
        rng = np.random.default_rng([self.seed, UNLABELLED, key])
        aug = self.cfg.data.augment
        image, _, valid = self._read(pid, False)
        s, m, size = image.shape[0], self.margin, self.size
        src = np.full((s, s), -1, np.int64)
        src[m:m + size, m:m + size] = np.arange(size * size, dtype=np.int64).reshape(size, size)
        geom = sample_geometry(rng, aug)
        img_w, code = apply_geometry(image, (src + 1) * 2 + valid, geom, (size, size),
                                     aug.image_interp)
        assert img_w is not None and code is not None
        weak = weak_view(img_w, rng, self.cfg.method.weak_noise_std)
        strong = strong_view(img_w, rng, aug)
        return {"weak": weak, "strong": strong, "src_index": code // 2 - 1,
                "valid": (code % 2) == 1, "index": pid}

    def __getitem__(self, it: int) -> dict[str, Any]:
        """This rank's share of iteration ``it``: stream keys ``(it * world + rank) * B + j``.

        With N ranks of batch B the global batch of ``it`` is exactly the batch of one process
        with batch N x B (keys ``it * N * B ..``): a pure function of (seed, it, rank).
        """
        b, bu = self.cfg.data.batch_size, self.cfg.data.batch_size_unlabelled
        slot = it * self.world + self.rank
        out = {"labelled": _collate([self.labelled_sample(slot * b + j) for j in range(b)])
               if b else empty_labelled(self.size, self.instances)}
        if self.uses_unlabelled:
            out["unlabelled"] = _collate([self.unlabelled_sample(slot * bu + j)
                                          for j in range(bu)])
        return out


def empty_labelled(size: int, instances: bool = False) -> dict[str, torch.Tensor]:
    """The labelled batch of ``data.batch_size: 0``: every key of base.py with N = 0."""
    out = {"image": torch.zeros(0, 3, size, size), "np": torch.zeros(0, size, size,
                                                                     dtype=torch.int64),
           "hv": torch.zeros(0, 2, size, size), "valid": torch.zeros(0, size, size,
                                                                     dtype=torch.bool),
           "index": torch.zeros(0, dtype=torch.int64)}
    if instances:
        out["inst"] = torch.zeros(0, size, size, dtype=torch.int64)
    return out


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples: images (H, W, 3) uint8 -> (N, 3, H, W) float32; np -> int64."""
    out: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key in ("image", "weak", "strong"):
            arr = np.stack(vals).transpose(0, 3, 1, 2).astype(np.float32)
            out[key] = torch.from_numpy(np.ascontiguousarray(arr))
        elif key == "index":
            out[key] = torch.tensor(vals, dtype=torch.int64)
        elif key == "np":
            out[key] = torch.from_numpy(np.stack(vals).astype(np.int64))
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(np.stack(vals)))
    return out


def _worker_init(worker_id: int) -> None:
    """Keep each worker single-threaded (the workers themselves are the parallelism)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a (nested) batch dict of tensors to ``device``."""
    nb = device.type == "cuda"
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=nb)
            for k, v in batch.items()}


class IterationData:
    """The training data of one run: pools, epoch length and per-range loaders."""

    def __init__(self, ds: PreparedDataset, split: TrainSplit, cfg: ExperimentConfig,
                 extra: ExtraLabelled | None, uses_unlabelled: bool, where: str,
                 instances: bool = False, rank: int = 0, world: int = 1) -> None:
        self.cfg = cfg
        self.set = IterationSet(ds, split, cfg, extra, uses_unlabelled, instances, rank, world)
        if cfg.data.batch_size == 0 and not uses_unlabelled:
            raise IrcrError(f"{where}: data.batch_size 0 (no labelled batch) needs a method "
                            f"with unlabelled data, not '{cfg.method.name}'")
        if cfg.data.batch_size and not self.set.lab_pool:
            raise IrcrError(f"{where}: data.split '{split.name}' has no labelled patches")
        if uses_unlabelled and not self.set.unl_pool:
            raise IrcrError(f"{where}: method '{cfg.method.name}' needs unlabelled patches but "
                            f"data.split '{split.name}' has none (ratio 1?)")
        if ds.patch_size != cfg.data.patch_size:
            raise IrcrError(f"{where}: data.patch_size {cfg.data.patch_size} differs from the "
                            f"prepared dataset's patch size {ds.patch_size}")

    def default_iterations(self) -> int:
        """One pass over the unlabelled pool (SSL methods) or the labelled pool (others),
        with the global batch (all ranks' batches together)."""
        n = self.set.world
        if self.set.uses_unlabelled:
            return max(1, len(self.set.unl_pool) // (self.cfg.data.batch_size_unlabelled * n))
        return max(1, len(self.set.lab_pool) // (self.cfg.data.batch_size * n))

    def loader(self, start: int, stop: int, device: torch.device) -> Iterator[dict[str, Any]]:
        """Batches of iterations ``start .. stop-1`` on ``device`` (one loader for the run).

        Workers are started with the ``forkserver`` method (``spawn`` where unavailable): a
        plain ``fork`` of a process that already ran OpenMP/OpenCV thread pools can deadlock.
        """
        workers = int(self.cfg.data.workers)
        ctx = None
        if workers:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            if "forkserver" in methods:
                ctx.set_forkserver_preload(["ircr.train.loaders"])
        # its own generator: the loader's start draws a base seed, which must not advance
        # the global torch RNG that methods draw from (a resumed run starts its loader after
        # the checkpoint's RNG state is restored; the data itself is keyed by (seed, i))
        dl: DataLoader[dict[str, Any]] = DataLoader(
            self.set, batch_size=None, sampler=range(start, stop), num_workers=workers,
            pin_memory=device.type == "cuda", worker_init_fn=_worker_init if workers else None,
            prefetch_factor=4 if workers else None, multiprocessing_context=ctx,
            # its own generator: starting the iteration draws a seed from it, not from torch's
            # global RNG (that draw after a resume shifted the methods' dropout: not exact)
            generator=torch.Generator().manual_seed(int(self.cfg.train.seed)))
        for batch in dl:
            yield to_device(batch, device)
