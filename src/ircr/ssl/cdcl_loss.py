"""Loss pieces of CDCL (Wu et al., CVPR 2022; reference-algorithms §8.2), pure functions plus
the FIFO memory bank of the cross-patch dense contrastive loss.

Shapes: logits (N, 2, H, W) float; masks (N, H, W) bool; embeddings (N, D, h, w) float32,
L2-normalised per pixel (the network's projector output, h x w = the embedding grid).

* :func:`masked_ce`: supervised CE on valid pixels.
* :func:`pseudo_label_ce`: CE to the teacher's argmax where its confidence > threshold
  (divided by all valid pixels, so fewer confident pixels weigh less).
* :func:`entropy_loss`: mean pixel entropy of the student's prediction.
* :func:`embedding_labels` / :func:`patch_fc`: pseudo-labels and validity on the embedding
  grid; each image's grid split into ``patch_num x patch_num`` patches, FC = fraction of
  pseudo-label-1 pixels of each patch.
* :class:`MemoryBank` + :func:`cross_patch_contrastive`: anchors are the student pixels of
  patches with FC <= bdp or FC >= fdp; the positive is the teacher embedding at the same pixel;
  negatives are bank pixels whose pseudo-label differs from the anchor's and whose patch FC
  plus the anchor patch's FC is <= bdp + fdp; InfoNCE (log-sum-exp) with temperature ``temp``,
  averaged over the pixels of each anchor patch, then over anchor patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BankEntries", "MemoryBank", "batch_entries", "cross_patch_contrastive",
           "embedding_labels", "entropy_loss", "masked_ce", "patch_fc", "pseudo_label_ce"]


def masked_ce(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean cross-entropy over valid pixels (0, still in the graph, when none is valid).

    Args:
        logits: (N, 2, H, W); target: (N, H, W) int64 in {0, 1}; valid: (N, H, W) bool.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    v = valid.to(ce.dtype)
    return (ce * v).sum() / v.sum().clamp(min=1.0)


def pseudo_label_ce(student_logits: Tensor, teacher_prob: Tensor, valid: Tensor,
                    threshold: float) -> tuple[Tensor, float]:
    """CE between the student's logits and the teacher's argmax where its confidence exceeds
    ``threshold``; summed over those pixels and divided by the number of valid pixels.

    Args:
        student_logits: (N, 2, H, W); teacher_prob: (N, 2, H, W) softmax; valid: (N, H, W).

    Returns:
        (loss, fraction of valid pixels that passed the threshold).
    """
    conf, label = teacher_prob.max(dim=1)
    keep = (conf > threshold) & valid
    ce = F.cross_entropy(student_logits.float(), label, reduction="none")
    n_valid = valid.sum().clamp(min=1)
    loss = (ce * keep.to(ce.dtype)).sum() / n_valid
    return loss, float(keep.sum()) / float(n_valid)


def entropy_loss(logits: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels of -sum_c p_c log p_c of softmax(logits) (nats).

    Args:
        logits: (N, C, H, W); valid: (N, H, W) bool.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1)
    v = valid.to(ent.dtype)
    return (ent * v).sum() / v.sum().clamp(min=1.0)


def embedding_labels(fg_prob: Tensor, valid: Tensor, size: tuple[int, int]
                     ) -> tuple[Tensor, Tensor]:
    """Pseudo-labels and validity on the embedding grid.

    The foreground probability is area-averaged onto the grid and thresholded at 0.5 (the
    majority label of the input pixels an embedding pixel covers); an embedding pixel is valid
    when every input pixel it covers is.

    Args:
        fg_prob: (N, H, W) teacher foreground probability; valid: (N, H, W) bool.
        size: (h, w) of the embedding grid.

    Returns:
        labels (N, h, w) int64 in {0, 1}, valid (N, h, w) bool.
    """
    p = F.adaptive_avg_pool2d(fg_prob.float().unsqueeze(1), size)[:, 0]
    v = F.adaptive_avg_pool2d(valid.float().unsqueeze(1), size)[:, 0] > 1.0 - 1e-6
    return (p > 0.5).long(), v


def patch_fc(labels: Tensor, valid: Tensor, patch_num: int) -> tuple[Tensor, Tensor]:
    """Foreground ratio of each grid patch and the patch id of every embedding pixel.

    Pixel (y, x) of an (h, w) grid belongs to patch (y * patch_num // h, x * patch_num // w).

    Args:
        labels: (N, h, w) int64 in {0, 1}; valid: (N, h, w) bool; patch_num: grid side.

    Returns:
        fc (N, patch_num, patch_num) float32 (NaN for a patch without valid pixels) and
        pid (N, h, w) int64 global patch ids ``n * patch_num**2 + row * patch_num + col``.
    """
    n, h, w = labels.shape
    dev = labels.device
    rows = torch.arange(h, device=dev) * patch_num // h
    cols = torch.arange(w, device=dev) * patch_num // w
    local = rows[:, None] * patch_num + cols[None, :]
    pid = local[None] + torch.arange(n, device=dev)[:, None, None] * patch_num ** 2
    k = n * patch_num ** 2
    vf = valid.float().flatten()
    fg = torch.zeros(k, device=dev).index_add_(0, pid.flatten(), labels.float().flatten() * vf)
    cnt = torch.zeros(k, device=dev).index_add_(0, pid.flatten(), vf)
    fc = torch.where(cnt > 0, fg / cnt.clamp(min=1.0), torch.full_like(cnt, float("nan")))
    return fc.view(n, patch_num, patch_num), pid


@dataclass
class BankEntries:
    """Pixel embeddings (M, D) float32, pseudo-labels (M,) int64, patch FC (M,) float32."""

    emb: Tensor
    label: Tensor
    fc: Tensor


class MemoryBank:
    """FIFO bank of the most recent ``capacity`` pixel embeddings (detached, float32)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"memory bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._chunks: list[BankEntries] = []

    def __len__(self) -> int:
        return sum(int(c.label.numel()) for c in self._chunks)

    def push(self, entries: BankEntries) -> None:
        """Append (detached) entries; drop the oldest beyond the capacity."""
        e = BankEntries(entries.emb.detach().float(), entries.label.detach(),
                        entries.fc.detach().float())
        if e.label.numel() > self.capacity:  # keep the newest
            e = BankEntries(e.emb[-self.capacity:], e.label[-self.capacity:],
                            e.fc[-self.capacity:])
        self._chunks.append(e)
        excess = len(self) - self.capacity
        while excess > 0:
            first = self._chunks[0]
            m = int(first.label.numel())
            if m <= excess:
                self._chunks.pop(0)
                excess -= m
            else:
                self._chunks[0] = BankEntries(first.emb[excess:], first.label[excess:],
                                              first.fc[excess:])
                excess = 0

    def entries(self) -> BankEntries | None:
        """Every stored entry (oldest first), or None when empty."""
        if not self._chunks:
            return None
        return BankEntries(torch.cat([c.emb for c in self._chunks]),
                           torch.cat([c.label for c in self._chunks]),
                           torch.cat([c.fc for c in self._chunks]))

    def clear(self) -> None:
        """Forget every entry."""
        self._chunks = []

    def state_dict(self) -> dict[str, Tensor]:
        """The entries as tensors (``{}`` when empty), for checkpoints (exact resume)."""
        e = self.entries()
        return {} if e is None else {"emb": e.emb, "label": e.label, "fc": e.fc}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace the entries by those of :meth:`state_dict`."""
        self.clear()
        if state:
            self.push(BankEntries(state["emb"], state["label"], state["fc"]))


def batch_entries(emb: Tensor, labels: Tensor, valid: Tensor, fc: Tensor, pid: Tensor
                  ) -> BankEntries:
    """The valid pixels of an (N, D, h, w) embedding map as bank entries (FC of their patch)."""
    keep = valid.flatten()
    flat = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
    return BankEntries(flat[keep], labels.flatten()[keep], fc.flatten()[pid.flatten()][keep])


def cross_patch_contrastive(student: Tensor, teacher: Tensor, labels: Tensor, valid: Tensor,
                            fc: Tensor, pid: Tensor, negatives: BankEntries, bdp: float,
                            fdp: float, temp: float, chunk: int = 1024) -> tuple[Tensor, int]:
    """The cross-patch dense contrastive loss of one batch.

    Args:
        student, teacher: (N, D, h, w) L2-normalised embeddings (teacher detached).
        labels, valid: (N, h, w) pseudo-labels and validity on the grid.
        fc, pid: :func:`patch_fc` of ``labels``.
        negatives: bank entries the negatives are drawn from.
        bdp, fdp: background / foreground patch thresholds (anchor patches: FC <= bdp or
            FC >= fdp); temp: InfoNCE temperature; chunk: anchors per similarity block.

    Returns:
        (loss, number of anchor patches); loss is 0 (in the graph) without anchor patches.
    """
    flat_fc = fc.flatten()
    anchor_patch = ~torch.isnan(flat_fc) & ((flat_fc <= bdp) | (flat_fc >= fdp))
    keep = (valid & anchor_patch[pid]).flatten()
    d = student.shape[1]
    s = student.permute(0, 2, 3, 1).reshape(-1, d)[keep].float()
    t = teacher.permute(0, 2, 3, 1).reshape(-1, d)[keep].float()
    if s.shape[0] == 0:
        return student.sum() * 0.0, 0
    lab = labels.flatten()[keep]
    afc = flat_fc[pid.flatten()[keep]]
    apid = pid.flatten()[keep]
    pos = (s * t).sum(dim=1) / temp
    bank_emb, bank_lab, bank_fc = negatives.emb, negatives.label, negatives.fc
    losses = []
    with torch.autocast(device_type=s.device.type, enabled=False):
        for i in range(0, s.shape[0], chunk):
            sim = s[i:i + chunk] @ bank_emb.T / temp
            ok = ((bank_lab[None, :] != lab[i:i + chunk, None])
                  & (bank_fc[None, :] + afc[i:i + chunk, None] <= bdp + fdp + 1e-6))
            sim = sim.masked_fill(~ok, float("-inf"))
            both = torch.cat([pos[i:i + chunk, None], sim], dim=1)
            losses.append(torch.logsumexp(both, dim=1) - pos[i:i + chunk])
    per_pixel = torch.cat(losses)
    patches, inverse = torch.unique(apid, return_inverse=True)
    k = int(patches.numel())
    sums = torch.zeros(k, device=s.device, dtype=per_pixel.dtype).index_add(0, inverse, per_pixel)
    cnt = torch.zeros(k, device=s.device, dtype=per_pixel.dtype).index_add(
        0, inverse, torch.ones_like(per_pixel))
    return (sums / cnt).mean(), k
