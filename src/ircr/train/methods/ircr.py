"""IRCR-Net: L_sup + γ1·L_PIAC + γ2·L_MIAC on a Mean-Teacher skeleton (spec §1–§4).

Per iteration (``mask_source: current``, the default):

1. teacher forward on the weak view (no grad, eval BN); its WBIS (and the prior's scoring of
   the teacher instances on the weak-view image) is launched at once in a background thread,
   so it runs while the student forward and the supervised loss run;
2. one student forward of labelled + strong views, L_sup; student WBIS launched;
3. U mask (prior), Hungarian matching with the radius filter, pair-index and band maps,
   then the vectorised PIAC and MIAC losses on the device. No gradient flows through WBIS,
   matching or the prior (all masks are built from detached outputs).

``mask_source: previous`` uses per-sample masks cached at the previous visit of the same
unlabelled patch. The cache holds the teacher map T, the student map S and the rejected
teacher ids in the un-augmented patch frame (scattered back through ``src_index``), and is
mapped into the current view with :func:`~ircr.train.methods.base.map_to_view`. A sample
without a cache entry contributes 0 to both consistency terms. The WBIS of the current
iteration is then off the critical path (its futures are collected at the next iteration).

``mask_source: previous_iteration`` is the paper's timing taken literally per sample (masks
of iteration k, loss at k + 1, on the same images): the unlabelled batch of iteration k is
held, and iteration k + 1 forwards it again (the same weak and strong views, so the masks
need no mapping) together with its own new batch; the loss is computed on the held batch with
the masks WBIS built from iteration k's detached outputs, and the new batch's outputs build
the masks of iteration k + 2. One student forward of labelled + 2 unlabelled batches per
iteration (about 1.5x the compute); the first iteration (and the first after a resume) has no
masks yet and contributes 0 to both consistency terms.

The teacher's HV clamp (``clamp_teacher_hv``) bounds the consistency target only; the
teacher's WBIS gets the raw HV unless ``clamp_teacher_hv_masks`` (measured in docs/method.md).

Switches (config only): ``piac: false`` = plain MSE consistency (U ≡ 1), ``miac: false`` = no
MIAC term, ``miac_boundary_beta: 0`` = MIAC "w/o B", ``match_radius`` = r (Table 4).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ircr.config import bounded
from ircr.postproc.batch import wbis_batch
from ircr.ssl import matching
from ircr.ssl.band_maps import batch_band_counts
from ircr.ssl.diagnostics import save_overlays
from ircr.ssl.mask_cache import pack, to_patch_frame, unpack
from ircr.ssl.masks import (
    MaskPipeline,
    MaskSettings,
    StudentMasks,
    TeacherMasks,
    to_device,
    u_weights,
)
from ircr.ssl.piac import piac_loss, rejected_ids
from ircr.ssl.prior import MorphPrior, default_prior_path
from ircr.train.methods import register_method
from ircr.train.methods.base import map_to_view
from ircr.train.methods.mean_teacher import (
    MeanTeacher,
    MeanTeacherOptions,
    feature_maps,
    masked_mse,
)


@dataclass
class IrcrOptions(MeanTeacherOptions):
    """Options of ``ircr``: Mean Teacher's plus PIAC / MIAC (ircr-method.md defaults).

    Attributes:
        gamma2: weight of L_MIAC. miac_boundary_beta: weight of the boundary band term
            (0 = MIAC "w/o B"). match_radius: Hungarian matching radius r in px (Table 4).
        prior_tau: prior score below which a teacher instance is rejected (U = 0).
        piac_weight: U on kept pixels (w). prior: a prior .npz (None = the packaged one).
        prior_combine: how the five feature densities combine (mean | geometric).
        mask_source: masks of this iteration (current), of the previous visit of the patch
            (previous) or of the previous iteration on the same held batch
            (previous_iteration, the paper's k -> k + 1).
        clamp_teacher_hv_masks: also clamp the HV that feeds the teacher's WBIS (its
            instances for MIAC / PIAC) when ``clamp_teacher_hv`` is on; false = only the
            consistency target is clamped (docs/method.md: no measurable difference).
        piac / miac: switch PIAC (false = plain MSE, U = 1) / MIAC (false = no term) off.
        wbis_workers: WBIS worker processes for the masks (0 = in the mask thread).
        mask_pipeline: run the masks as per-image jobs in a worker pool with asynchronous
            device copies and, on CUDA, the MIAC bands on the device (ssl/masks.py; same
            values): auto = on with CUDA, off on CPU (no gain measured on 2 cores); on; off.
        mask_workers: threads of that pool (0 = the machine's cores - 1, at most 16).
        diagnostic_overlays: overlay PNGs of this many unlabelled patches per epoch.
    """

    gamma2: float = 100.0
    miac_boundary_beta: float = 0.5
    match_radius: float = 1.5
    prior_tau: float = 0.35
    piac_weight: float = 2.0
    prior: Path | None = None
    prior_combine: Literal["mean", "geometric"] = "mean"
    mask_source: Literal["current", "previous", "previous_iteration"] = "current"
    clamp_teacher_hv_masks: bool = False
    piac: bool = True
    miac: bool = True
    wbis_workers: int = bounded(0, hi=256)  # processes: a typo must not fork thousands
    diagnostic_overlays: int = bounded(0, hi=10_000)
    mask_pipeline: Literal["auto", "on", "off"] = "auto"
    mask_workers: int = bounded(0, hi=256)

    def checks(self) -> list[tuple[bool, str, str]]:
        """Mean Teacher's checks plus the PIAC / MIAC ranges."""
        return [*super().checks(),
                (self.gamma2 >= 0, "gamma2", "must be >= 0"),
                (self.miac_boundary_beta >= 0, "miac_boundary_beta", "must be >= 0"),
                (self.match_radius >= 0, "match_radius", "must be >= 0"),
                (0 <= self.prior_tau <= 1, "prior_tau", "must be in [0, 1]"),
                (self.piac_weight >= 0, "piac_weight", "must be >= 0"),
                (self.wbis_workers >= 0, "wbis_workers", "must be >= 0"),
                (self.mask_workers >= 0, "mask_workers", "must be >= 0 (0 = cores - 1)"),
                (self.diagnostic_overlays >= 0, "diagnostic_overlays", "must be >= 0")]


TeacherSide = TeacherMasks  # teacher maps, rejected ids, scored counts (ssl/masks.py)
StudentSide = StudentMasks  # student maps, pairs, distances, stacked pair maps


@dataclass
class HeldBatch:
    """``mask_source: previous_iteration``: an unlabelled batch kept for the next iteration.

    ``views``: its "weak", "strong", "valid", "index" tensors; ``masks``: the future of
    (teacher side, student instance maps) WBIS builds from this iteration's outputs on it.
    """

    views: dict[str, Tensor]
    masks: Future[tuple[TeacherSide, list[np.ndarray]]]


def to_uint8_images(x: Tensor) -> np.ndarray:
    """(N, 3, H, W) float 0..255 tensor -> (N, H, W, 3) uint8 RGB numpy."""
    return x.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@register_method("ircr")
class IRCR(MeanTeacher):
    """IRCR-Net consistency: prior-weighted PIAC + matched-instance MIAC."""

    options_type = IrcrOptions
    options: IrcrOptions

    def setup(self) -> None:
        """EMA teacher, morphological prior, thread pool and the per-sample mask cache."""
        super().setup()
        self.prior: MorphPrior | None = None
        if self.options.piac:
            path = self.options.prior if self.options.prior else default_prior_path()
            self.prior = MorphPrior.load(path, combine=self.options.prior_combine)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ircr-wbis")
        self.cache: dict[int, dict[str, Tensor]] = {}
        self.pending: list[tuple[Future[tuple[TeacherSide, list[np.ndarray]]], np.ndarray,
                                 np.ndarray]] = []
        self.overlay_items: list[dict[str, object]] = []
        self.masks = self._mask_pipeline()
        self.held: HeldBatch | None = None  # mask_source: previous_iteration

    def _mask_pipeline(self) -> MaskPipeline | None:
        """The pooled mask jobs (``mask_pipeline``; ``current`` masks only), or None."""
        mode = self.options.mask_pipeline
        on_cuda = torch.device(self.trainer.device).type == "cuda"
        if self.options.mask_source != "current" or mode == "off" or (mode == "auto"
                                                                       and not on_cuda):
            return None
        settings = MaskSettings(self.trainer.wbis_params, self.prior, self.options.prior_tau,
                                self.options.match_radius, self.options.miac,
                                host_bands=not on_cuda)
        return MaskPipeline(settings, self.options.mask_workers or None)

    # -- masks (run in the thread pool; numpy only, no autograd) ------------------------------
    def _wbis(self, probs: np.ndarray, hvs: np.ndarray) -> list[np.ndarray]:
        maps = wbis_batch(probs, hvs, self.trainer.wbis_params, workers=self.options.wbis_workers)
        return [np.asarray(m, dtype=np.int32) for m in maps]

    def _rejected(self, images: np.ndarray, teacher: list[np.ndarray]
                  ) -> tuple[list[np.ndarray], list[int]]:
        """Teacher ids the prior rejects (score < τ; border instances kept) and scored counts."""
        if self.prior is None:
            return [np.zeros(0, np.int64) for _ in teacher], [0 for _ in teacher]
        rej, scored = [], []
        for img, t in zip(images, teacher):
            ids, _, n = rejected_ids(img, t, self.prior, self.options.prior_tau)
            rej.append(np.asarray(ids, dtype=np.int64))
            scored.append(n)
        return rej, scored

    def _teacher_side(self, probs: np.ndarray, hvs: np.ndarray, images: np.ndarray
                      ) -> TeacherSide:
        t = self._wbis(probs, hvs)
        rej, scored = self._rejected(images, t)
        return TeacherSide(t, rej, scored)

    def _match(self, teacher: list[np.ndarray], student: list[np.ndarray],
               active: list[bool]) -> StudentSide:
        """Hungarian matching within ``match_radius`` and the pair/band maps of the batch."""
        pairs, dists, maps = [], [], []
        for t, s, a in zip(teacher, student, active):
            if self.options.miac and a:
                pr, d = matching.match_instances(t, s, radius=self.options.match_radius)
            else:
                pr, d = np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
            pairs.append(pr)
            dists.append(d)
            if self.options.miac:
                maps.append(matching.pair_index_maps(t, s, pr))
        stacked = None
        if maps:
            keys = ("lt", "ls", "band_t", "band_s", "band_ts")
            arrays = {k: np.stack([getattr(m, k) for m in maps]) for k in keys}
            stacked = matching.PairMaps(n_pairs=sum(m.n_pairs for m in maps), **arrays)
        return StudentSide(student, pairs, dists, stacked)

    def _student_side(self, probs: np.ndarray, hvs: np.ndarray,
                      teacher: Future[TeacherSide]) -> StudentSide:
        s = self._wbis(probs, hvs)
        return self._match(teacher.result().inst, s, [True] * len(s))

    def _all_masks(self, pt: np.ndarray, hvt: np.ndarray, images: np.ndarray,
                   ps: np.ndarray, hvs: np.ndarray) -> tuple[TeacherSide, list[np.ndarray]]:
        t = self._teacher_side(pt, hvt, images)
        s = self._wbis(ps, hvs) if self.options.miac else [np.zeros_like(x) for x in t.inst]
        return t, s

    # -- losses ------------------------------------------------------------------------------
    def _cons_term(self, fs: Tensor, ft: Tensor, valid: Tensor, t: TeacherSide,
                   active: list[bool]) -> Tensor:
        """γ1's term: L_PIAC with U from the prior, or plain MSE (``piac: false``)."""
        act = torch.tensor(active, dtype=fs.dtype, device=fs.device).view(-1, 1, 1)
        weight = valid.to(fs.dtype) * act
        self.stats.add_prior(sum(n for n, a in zip(t.scored, active) if a),
                             sum(len(r) for r, a in zip(t.rejected, active) if a))
        if not self.options.piac:
            return masked_mse(fs, ft, weight)
        u = to_device(u_weights(t, self.options.piac_weight), fs.device).to(fs.dtype)
        return piac_loss(fs, ft, u * weight)

    def _miac_term(self, fs: Tensor, ft: Tensor, bs: Tensor, bt: Tensor,
                   s: StudentSide, n_active: int) -> Tensor:
        self.stats.add_matching(n_active, np.concatenate([np.zeros(0), *s.dists]).tolist())
        if s.maps is None:
            return fs.new_zeros(())
        m, dev = s.maps, fs.device
        lt, ls = to_device(m.lt, dev), to_device(m.ls, dev)
        if self.masks is not None and not self.masks.settings.host_bands:
            bands = batch_band_counts(lt, ls, [int(x.max()) for x in m.lt])
        else:
            bands = (to_device(m.band_t, dev), to_device(m.band_s, dev),
                     to_device(m.band_ts, dev))
        loss, _ = matching.miac_loss(fs, ft, bs, bt, lt, ls, *bands,
                                     beta=self.options.miac_boundary_beta, n_pairs=m.n_pairs)
        return loss

    def _pipelined_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor],
                        ft: Tensor, bt: Tensor, hv_masks: Tensor, w: float, name: str
                        ) -> tuple[Tensor, dict[str, float]]:
        """``current`` masks through the pooled jobs: same values, no stall while they run."""
        assert self.masks is not None
        weak = unlabelled["weak"].detach()
        weak_u8 = weak.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        job = self.masks.submit_teacher(bt[:, 0], hv_masks, weak_u8)
        out_l, out_u = self.student_forward(labelled, unlabelled["strong"])
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        fs, bs = feature_maps(out_u)
        if self.options.miac:
            self.masks.submit_student(job, bs[:, 0].detach(), fs[:, 1:].detach())
        else:
            self.masks.submit_student(job, None, None)
        t_side = job.teacher()
        active = [True] * len(t_side.inst)
        cons = self._cons_term(fs, ft, unlabelled["valid"], t_side, active)
        s_side = job.student()
        miac = self._miac_term(fs, ft, bs, bt, s_side, len(active))
        if len(self.overlay_items) < int(self.options.diagnostic_overlays):
            self._keep_overlays(to_uint8_images(weak), t_side, s_side, unlabelled["index"])
        w_cons, w_miac = self.options.gamma1 * w * cons, self.options.gamma2 * w * miac
        self.check_balance(sup, {name: w_cons, "miac": w_miac})
        return sup + w_cons + w_miac, {"sup": float(sup.detach()), name: float(cons.detach()),
                                       "miac": float(miac.detach()), "unsup_weight": w}

    # -- iteration ---------------------------------------------------------------------------
    def train_step(
        self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """L_sup + γ1·(L_PIAC | MSE) + γ2·L_MIAC."""
        if unlabelled is None:
            raise RuntimeError("ircr needs an unlabelled batch")
        self._collect(block=False)
        w = self.unsup_weight()
        name = "piac" if self.options.piac else "mse"
        if w == 0.0:  # supervised warm-up: no teacher forward, no WBIS
            self.held = None
            return self.warmup_step(labelled, unlabelled["strong"], (name, "miac"))
        if self.options.mask_source == "previous_iteration" and (self.options.piac
                                                                 or self.options.miac):
            return self._held_batch_step(labelled, unlabelled, w, name)
        self.held = None  # (warm-up / Scheme.1 iterations hold nothing)
        out_t = self.teacher_forward(unlabelled["weak"])
        ft, bt = self.teacher_maps(out_t)
        if not (self.options.piac or self.options.miac):  # Scheme.1: plain MT, no masks needed
            out_l, out_u = self.student_forward(labelled, unlabelled["strong"])
            sup, _ = self.trainer.supervised_loss(out_l, labelled)
            fs, bs = feature_maps(out_u)
            cons = masked_mse(fs, ft, unlabelled["valid"].float())
            weighted = self.options.gamma1 * w * cons
            self.check_balance(sup, {"mse": weighted})
            return sup + weighted, {"sup": float(sup.detach()), "mse": float(cons.detach()),
                                    "miac": 0.0, "unsup_weight": w}
        if self.masks is not None:
            return self._pipelined_step(labelled, unlabelled, ft, bt, self._mask_hv(out_t, ft),
                                        w, name)
        weak_np = to_uint8_images(unlabelled["weak"])
        pt_np, hvt_np = bt[:, 0].cpu().numpy(), self._mask_hv(out_t, ft).cpu().numpy()
        n = int(unlabelled["weak"].shape[0])
        current = self.options.mask_source == "current"
        fut_t = self.pool.submit(self._teacher_side, pt_np, hvt_np, weak_np) if current else None
        out_l, out_u = self.student_forward(labelled, unlabelled["strong"])
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        fs, bs = feature_maps(out_u)
        ps_np, hvs_np = bs[:, 0].detach().cpu().numpy(), fs[:, 1:].detach().cpu().numpy()
        if fut_t is not None:
            fut_s = self.pool.submit(self._student_side, ps_np, hvs_np, fut_t) \
                if self.options.miac else None
            t_side, active = fut_t.result(), [True] * n
            cons = self._cons_term(fs, ft, unlabelled["valid"], t_side, active)
            s_side = fut_s.result() if fut_s is not None else self._match(
                t_side.inst, [np.zeros_like(t) for t in t_side.inst], active)
        else:
            t_side, s_inst, active = self._cached_masks(unlabelled)
            fut = self.pool.submit(self._all_masks, pt_np, hvt_np, weak_np, ps_np, hvs_np)
            self.pending.append((fut, unlabelled["index"].cpu().numpy(),
                                 unlabelled["src_index"].cpu().numpy()))
            cons = self._cons_term(fs, ft, unlabelled["valid"], t_side, active)
            s_side = self._match(t_side.inst, s_inst, active)
        miac = self._miac_term(fs, ft, bs, bt, s_side, sum(active))
        self._keep_overlays(weak_np, t_side, s_side, unlabelled["index"])
        w_cons, w_miac = self.options.gamma1 * w * cons, self.options.gamma2 * w * miac
        self.check_balance(sup, {name: w_cons, "miac": w_miac})
        return sup + w_cons + w_miac, {"sup": float(sup.detach()), name: float(cons.detach()),
                                       "miac": float(miac.detach()), "unsup_weight": w}

    def _mask_hv(self, out_t: dict[str, Tensor], ft: Tensor) -> Tensor:
        """(N, 2, H, W) float32 teacher HV for its WBIS: raw unless ``clamp_teacher_hv_masks``."""
        return ft[:, 1:] if self.options.clamp_teacher_hv_masks else out_t["hv"].float()

    # -- previous iteration (held batch) -----------------------------------------------------
    def _held_batch_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor],
                         w: float, name: str) -> tuple[Tensor, dict[str, float]]:
        """Loss on iteration k − 1's batch with its masks; this batch's masks for k + 1."""
        prev = self.held
        new = {k: unlabelled[k] for k in ("weak", "strong", "valid", "index")}
        both = [new] if prev is None else [prev.views, new]
        out_t = self.teacher_forward(torch.cat([v["weak"] for v in both]))
        ft, bt = self.teacher_maps(out_t)
        hv_masks = self._mask_hv(out_t, ft)
        out_l, out_u = self.student_forward(labelled, torch.cat([v["strong"] for v in both]))
        sup, _ = self.trainer.supervised_loss(out_l, labelled)
        fs, bs = feature_maps(out_u)
        m = 0 if prev is None else int(prev.views["weak"].shape[0])
        fut = self.pool.submit(self._all_masks, bt[m:, 0].cpu().numpy(),
                               hv_masks[m:].cpu().numpy(), to_uint8_images(new["weak"]),
                               bs[m:, 0].detach().cpu().numpy(),
                               fs[m:, 1:].detach().cpu().numpy())
        self.held = HeldBatch(new, fut)
        if prev is None:  # nothing built yet: both terms 0 this iteration
            self.check_balance(sup, {})
            return sup, {"sup": float(sup.detach()), name: 0.0, "miac": 0.0, "unsup_weight": w}
        t_side, s_inst = prev.masks.result()
        active = [True] * m
        cons = self._cons_term(fs[:m], ft[:m], prev.views["valid"], t_side, active)
        s_side = self._match(t_side.inst, s_inst, active)
        miac = self._miac_term(fs[:m], ft[:m], bs[:m], bt[:m], s_side, m)
        if len(self.overlay_items) < int(self.options.diagnostic_overlays):
            self._keep_overlays(to_uint8_images(prev.views["weak"]), t_side, s_side,
                                prev.views["index"])
        w_cons, w_miac = self.options.gamma1 * w * cons, self.options.gamma2 * w * miac
        self.check_balance(sup, {name: w_cons, "miac": w_miac})
        return sup + w_cons + w_miac, {"sup": float(sup.detach()), name: float(cons.detach()),
                                       "miac": float(miac.detach()), "unsup_weight": w}

    # -- previous-visit cache ----------------------------------------------------------------
    def _cached_masks(self, unlabelled: dict[str, Tensor]
                      ) -> tuple[TeacherSide, list[np.ndarray], list[bool]]:
        """Cached (T, S, rejected) mapped into the current view; active = has a cache entry."""
        size = int(self.trainer.cfg.data.patch_size)
        src = unlabelled["src_index"].cpu()
        h, w = src.shape[1:]
        t_side = TeacherSide([], [], [])
        student, active = [], []
        for k, idx in enumerate(unlabelled["index"].tolist()):
            entry = self.cache.get(int(idx))
            if entry is None:
                t_side.inst.append(np.zeros((h, w), np.int32))
                student.append(np.zeros((h, w), np.int32))
                t_side.rejected.append(np.zeros(0, np.int64))
                t_side.scored.append(0)
                active.append(False)
                continue
            both = torch.from_numpy(np.stack([unpack(entry["T"], size), unpack(entry["S"], size)]))
            view = map_to_view(both.unsqueeze(0), src[k : k + 1]).squeeze(0).numpy()
            t_side.inst.append(view[0].astype(np.int32))
            student.append(view[1].astype(np.int32))
            t_side.rejected.append(entry["rejected"].numpy())
            t_side.scored.append(int(entry["scored"]))
            active.append(True)
        return t_side, student, active

    def _collect(self, block: bool) -> None:
        """Move finished mask futures into the cache (all of them when ``block``)."""
        keep = []
        size = int(self.trainer.cfg.data.patch_size)
        for fut, index, src in self.pending:
            if not (block or fut.done()):
                keep.append((fut, index, src))
                continue
            t_side, student = fut.result()
            for k, idx in enumerate(index.tolist()):
                self.cache[int(idx)] = {
                    "T": pack(to_patch_frame(t_side.inst[k], src[k], size)),
                    "S": pack(to_patch_frame(student[k], src[k], size)),
                    "rejected": torch.from_numpy(np.asarray(t_side.rejected[k], np.int64)),
                    "scored": torch.tensor(int(t_side.scored[k])),
                }
        self.pending = keep

    # -- diagnostics / state -----------------------------------------------------------------
    def _keep_overlays(self, weak_np: np.ndarray, t: TeacherSide, s: StudentSide,
                       index: Tensor) -> None:
        """Keep the first few unlabelled patches of the epoch for the overlay PNGs."""
        want = int(self.options.diagnostic_overlays)
        for k in range(len(t.inst)):
            if len(self.overlay_items) >= want:
                return
            self.overlay_items.append({
                "image": weak_np[k], "teacher": t.inst[k], "student": s.inst[k],
                "rejected_ids": t.rejected[k].tolist(),
                "pairs": [tuple(p) for p in s.pairs[k].tolist()],
                "name": f"e{self.trainer.epoch:03d}_p{int(index[k])}",
            })

    def epoch_end(self) -> dict[str, float]:
        """Per-epoch diagnostics; writes overlay PNGs when ``diagnostic_overlays`` > 0."""
        self._collect(block=True)
        if self.overlay_items:
            save_overlays(Path(self.trainer.run_dir) / "diagnostics", self.overlay_items)
            self.overlay_items = []
        out = {k: float("nan") for k in ("pairs_per_image", "match_dist_mean", "prior_reject_frac")}
        out.update(super().epoch_end())  # NaN = nothing counted (e.g. no cache entries yet)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Teacher plus (``previous`` mode) the compressed mask cache."""
        self._collect(block=True)
        state = super().state_dict()
        if self.options.mask_source == "previous":
            state["cache"] = {str(k): v for k, v in self.cache.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher and the mask cache."""
        super().load_state_dict(state)
        self.cache = {int(k): v for k, v in state.get("cache", {}).items()}
