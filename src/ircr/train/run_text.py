"""What the trainer prints: the lines before training, the closing summary, the progress bar.

Kept apart from :mod:`ircr.train.trainer` (the loop) so the loop stays readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def describe_run(self: Any) -> str:
    """Lines printed before training by ``self`` (a Trainer): device, AMP, data counts,
    iterations, checkpoints."""
    cfg, sp = self.cfg, self.split
    amp = "bf16" if self.amp is not None else "off"
    ckpt = [count(cfg.train.checkpoint_every, "iteration", "every ")] \
        if cfg.train.checkpoint_every \
        else ["at epoch ends"]
    if cfg.train.checkpoint_minutes:
        ckpt.append(f"every {cfg.train.checkpoint_minutes:g} min")
    start = f"resuming at iteration {self.iteration}; " if self.iteration else ""
    report = getattr(self.model, "pretrained_report", None)
    weights = [f"encoder weights: {report.summary()}"] if report is not None else []
    return "\n".join([
        f"method {cfg.method.name}; device {device_name(self.device)}; AMP {amp}", *weights,
        f"data {cfg.data.dataset}: {len(sp.labelled)} labelled + {len(sp.unlabelled)} "
        "unlabelled patches" + ("" if self.method.uses_unlabelled else
                                " (unlabelled not used by this method)")
        + f", {len(sp.val_images)} validation image(s)",
        f"{start}{self.ipe} iterations/epoch x {count(cfg.train.epochs, 'epoch')} = "
        f"{count(self.total, 'iteration')} (batch {cfg.data.batch_size}"
        + (f" + {cfg.data.batch_size_unlabelled} unlabelled" if
           self.method.uses_unlabelled else "")
        + (f" per process x {self.dist.world} processes" if self.dist.active else "") + ")",
        f"checkpoints {' and '.join(ckpt)} to {self.run_dir / 'checkpoints' / 'last.pt'}; "
        "Ctrl-C saves one and stops",
    ])


def closing_summary(self: Any, model_dir: Path) -> str:
    """Lines printed after training: best/last val metrics, wall time, next command."""
    lines = [f"done: {count(self.iteration, 'iteration')} in {hms(self._wall())} (wall)"]
    shown = ("_aji", "_dice", "_f1", "_pq")
    for key, (best, epoch) in sorted(self.best.items()):
        if not key.endswith(shown):
            continue
        last = self.last_row.get(key)
        last_s = f"{last:.4f}" if isinstance(last, float) else "n/a"
        lines.append(f"{key}: last {last_s}, best {best:.4f} (epoch {epoch})")
    lines.append(f"model folder: {model_dir}")
    lines.append(f"next: ircr evaluate {model_dir} {self.cfg.data.dataset}   or   "
                 f"ircr segment {model_dir} IMAGES... -o OUT")
    return "\n".join(lines)


def say(text: str, prefix: str = "ircr train") -> None:
    """Print messages to stderr, each line prefixed ``PREFIX:`` (trainer, pretrain, adapt)."""
    import sys

    for line in text.splitlines():
        print(f"{prefix}: {line}", file=sys.stderr, flush=True)


def count(n: int, word: str, prefix: str = "") -> str:
    """``"1 iteration"``, ``"2 iterations"`` (with ``prefix`` before the number)."""
    return f"{prefix}{n} {word}{'s' * (n != 1)}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' * (n != 1)})"
    return str(device)


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar of ``total`` iterations starting at ``initial``, or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, leave=True)
