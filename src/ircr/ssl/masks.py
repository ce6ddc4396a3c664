"""IRCR's instance machinery off the critical path: per-image mask jobs in a worker pool.

One IRCR iteration needs, per unlabelled image, the teacher's instances (WBIS on the weak
view's maps) and the prior's verdict on them (PIAC), and the student's instances matched to
the teacher's with their pair and band maps (MIAC). All of it is CPU work on maps the network
produced. :class:`MaskPipeline` takes it off the GPU's critical path without changing a single
value (the per-image functions below are the synchronous path, run elsewhere):

* the network maps leave the device with one asynchronous copy into pinned host memory per
  batch and a CUDA event; the host thread goes on queueing GPU work (the student forward)
  while the copy runs, and only the worker threads wait for the event;
* every image is its own job (teacher: WBIS + prior; student: WBIS, then matching and pair
  maps once that image's teacher job is done), so B images run on up to B workers at once;
  WBIS (OpenCV, SciPy, skimage) and the features release the GIL for most of their work;
* the pool is sized to the machine (one core left to the thread feeding the GPU).

Teacher jobs are queued before the student jobs that wait for them, and the executor is FIFO,
so a waiting student job never holds the worker its teacher job needs (no deadlock).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ircr.postproc.watershed import WBISParams, wbis
from ircr.ssl import matching
from ircr.ssl.piac import rejected_ids
from ircr.ssl.prior import MorphPrior


@dataclass
class TeacherMasks:
    """Teacher instance maps of a batch and the prior's verdict on them."""

    inst: list[np.ndarray]  # (H, W) int32 per image
    rejected: list[np.ndarray]  # rejected teacher ids per image (int64)
    scored: list[int]  # instances scored (not touching the border) per image


@dataclass
class StudentMasks:
    """Student instance maps, the kept pairs and their stacked maps for the MIAC loss."""

    inst: list[np.ndarray]
    pairs: list[np.ndarray]  # (P_b, 2) (teacher id, student id) per image
    dists: list[np.ndarray]  # (P_b,) centroid distances
    maps: matching.PairMaps | None


@dataclass
class MaskSettings:
    """What the masks depend on besides the maps (from the method's configuration)."""

    wbis: WBISParams
    prior: MorphPrior | None  # None: no PIAC (nothing rejected)
    tau: float
    match_radius: float
    miac: bool
    host_bands: bool = True  # False: MIAC band counts left 0, computed on the device instead


# -- the synchronous path, one image at a time ------------------------------------------------
def teacher_image(prob: np.ndarray, hv: np.ndarray, image: np.ndarray, s: MaskSettings
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(teacher instance map, rejected ids, scored count) of one image."""
    inst = np.asarray(wbis(prob, hv, s.wbis), dtype=np.int32)
    if s.prior is None:
        return inst, np.zeros(0, np.int64), 0
    ids, _, n = rejected_ids(image, inst, s.prior, s.tau)
    return inst, np.asarray(ids, dtype=np.int64), n


def match_image(t_inst: np.ndarray, s_inst: np.ndarray, active: bool, s: MaskSettings
                ) -> tuple[np.ndarray, np.ndarray, matching.PairMaps | None]:
    """(pairs, distances, pair maps or None without MIAC) of one image."""
    if s.miac and active:
        pairs, dists = matching.match_instances(t_inst, s_inst, radius=s.match_radius)
    else:
        pairs, dists = np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    maps = matching.pair_index_maps(t_inst, s_inst, pairs, s.host_bands) if s.miac else None
    return pairs, dists, maps


def stack_pair_maps(maps: list[matching.PairMaps | None]) -> matching.PairMaps | None:
    """Per-image pair maps -> one PairMaps of (B, H, W) arrays (None without MIAC)."""
    real = [m for m in maps if m is not None]
    if not real:
        return None
    keys = ("lt", "ls", "band_t", "band_s", "band_ts")
    arrays = {k: np.stack([getattr(m, k) for m in real]) for k in keys}
    return matching.PairMaps(n_pairs=sum(m.n_pairs for m in real), **arrays)


def student_masks(teacher: list[np.ndarray], student: list[np.ndarray], active: list[bool],
                  s: MaskSettings) -> StudentMasks:
    """Match every image of a batch (synchronously) -> :class:`StudentMasks`."""
    done = [match_image(t, si, a, s) for t, si, a in zip(teacher, student, active)]
    return StudentMasks(student, [d[0] for d in done], [d[1] for d in done],
                        stack_pair_maps([d[2] for d in done]))


# -- device -> host without stalling the thread that feeds the GPU ----------------------------
class HostCopy:
    """Tensors copied to host memory, asynchronously from CUDA (pinned memory + event)."""

    def __init__(self, *tensors: Tensor) -> None:
        self.event: torch.cuda.Event | None = None
        if tensors and tensors[0].device.type == "cuda":
            self.host = []
            for t in tensors:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t.detach(), non_blocking=True)
                self.host.append(buf)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = [t.detach().cpu() for t in tensors]

    def arrays(self) -> list[np.ndarray]:
        """Numpy views of the host copies (waits for the copy when it is asynchronous)."""
        if self.event is not None:
            self.event.synchronize()
        return [t.numpy() for t in self.host]


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Host array -> tensor on ``device``; to CUDA through pinned memory, without blocking."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def u_weights(t: TeacherMasks, weight: float) -> np.ndarray:
    """PIAC's U of a batch (B, H, W) float32: 0 inside rejected teacher instances, else w."""
    u = np.full((len(t.inst), *t.inst[0].shape), weight, np.float32)
    for k, (inst, rej) in enumerate(zip(t.inst, t.rejected)):
        if rej.size:
            u[k][np.isin(inst, rej)] = 0.0
    return u


def default_workers() -> int:
    """Worker threads for the mask jobs: the usable cores minus one (at least 1, at most 16)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    return max(1, min(16, n - 1))


class MaskJob:
    """The mask jobs of one batch; :meth:`teacher` and :meth:`student` wait for their results."""

    def __init__(self, teacher: list[Future[tuple[np.ndarray, np.ndarray, int]]]) -> None:
        self._teacher = teacher
        self._student: list[Future[tuple[np.ndarray, np.ndarray, np.ndarray,
                                         matching.PairMaps | None]]] = []

    def teacher(self) -> TeacherMasks:
        """Teacher maps, rejected ids and scored counts of every image."""
        done = [f.result() for f in self._teacher]
        return TeacherMasks([d[0] for d in done], [d[1] for d in done], [d[2] for d in done])

    def student(self) -> StudentMasks:
        """Student maps, pairs, distances and the stacked pair maps of every image."""
        done = [f.result() for f in self._student]
        return StudentMasks([d[0] for d in done], [d[1] for d in done], [d[2] for d in done],
                            stack_pair_maps([d[3] for d in done]))


class MaskPipeline:
    """Runs the per-image mask jobs of IRCR in a persistent thread pool.

    Usage per iteration::

        job = pipe.submit_teacher(prob_t, hv_t, images_u8)   # right after the teacher forward
        ... student forward ...
        pipe.submit_student(job, prob_s, hv_s)               # right after the student forward
        t = job.teacher(); s = job.student()                 # when the losses need them
    """

    def __init__(self, settings: MaskSettings, workers: int | None = None) -> None:
        self.settings = settings
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ircr-mask")

    def submit_teacher(self, prob: Tensor, hv: Tensor, images: Tensor) -> MaskJob:
        """Queue WBIS + prior of each image: prob (B, H, W), hv (B, 2, H, W), images (B, H, W, 3)
        uint8 (device tensors are copied to the host asynchronously)."""
        copy = HostCopy(prob.float(), hv.float(), images)
        s = self.settings

        def run(k: int) -> tuple[np.ndarray, np.ndarray, int]:
            p, h, im = copy.arrays()
            return teacher_image(p[k], h[k], im[k], s)

        return MaskJob([self._pool.submit(run, k) for k in range(int(prob.shape[0]))])

    def submit_student(self, job: MaskJob, prob: Tensor | None, hv: Tensor | None) -> None:
        """Queue student WBIS (skipped without MIAC: empty maps) and matching of each image."""
        copy = HostCopy(prob.float(), hv.float()) if prob is not None and hv is not None else None
        s = self.settings

        def run(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, matching.PairMaps | None]:
            t_inst = job._teacher[k].result()[0]
            if copy is not None and s.miac:
                p, h = copy.arrays()
                s_inst = np.asarray(wbis(p[k], h[k], s.wbis), dtype=np.int32)
            else:
                s_inst = np.zeros_like(t_inst)
            pairs, dists, maps = match_image(t_inst, s_inst, True, s)
            return s_inst, pairs, dists, maps

        job._student = [self._pool.submit(run, k) for k in range(len(job._teacher))]

    def close(self) -> None:
        """Stop the pool (waits for running jobs)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
