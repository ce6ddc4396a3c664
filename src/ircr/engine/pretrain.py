"""``ircr pretrain``: tiles from images, folders, prepared datasets and slides -> encoder weights.

Composes the tile source (:mod:`ircr.engine.tile_source`, tissue as ``ircr segment`` finds
it) with the pretraining loop (:class:`ircr.train.pretrain.Pretrainer`, layer 7): the loop
asks for pool ``k`` and gets ``sample_tiles(sources, pool, tile, seed=(seed, k))``. Skipped
sources are printed as they are found and listed again at the end; the card records every
source with its pixel size and tissue pixels, the skipped ones and the library versions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ircr.engine.provenance import versions
from ircr.engine.tile_source import (
    SkippedSource,
    TileSource,
    open_tile_sources,
    sample_tiles,
)
from ircr.errors import IrcrError
from ircr.train.pretrain import Pretrainer
from ircr.train.pretrain_config import PretrainConfig

__all__ = ["run_pretrain", "pool_seed", "open_pretrain_sources"]


def pool_seed(seed: int, k: int) -> int:
    """Seed of tile pool ``k`` (a pure function of the run seed and k)."""
    return int(np.random.SeedSequence([int(seed), int(k), 2021]).generate_state(1)[0])


def open_pretrain_sources(cfg: PretrainConfig, inputs: Sequence[str | Path],
                          mpp: float | None = None,
                          log: Callable[[str], None] | None = None
                          ) -> tuple[list[TileSource], list[SkippedSource]]:
    """Open the sources at ``cfg.data.mpp``; an error when none is usable."""
    sources, skipped = open_tile_sources(inputs, target_mpp=cfg.data.mpp, mpp_override=mpp,
                                         exclude_splits=cfg.data.exclude_splits, log=log)
    if not sources:
        raise IrcrError(f"{', '.join(str(p) for p in inputs)}: no usable image "
                        f"({len(skipped)} skipped)")
    return sources, skipped


def _say(line: str) -> None:
    print(f"ircr pretrain: {line}", file=sys.stderr, flush=True)


def run_pretrain(cfg: PretrainConfig, inputs: Sequence[str | Path], out: str | Path, *,
                 mpp: float | None = None, resume: bool = False, resume_hint: str = "",
                 stop_after: int | None = None,
                 on_step: Callable[[Pretrainer], None] | None = None) -> Path:
    """Pretrain the encoder of ``cfg`` on tiles of ``inputs``; returns the output folder.

    Args:
        cfg: validated :class:`PretrainConfig`.
        inputs: image files, slides, folders, prepared dataset folders.
        out: output folder (weights, card, checkpoints).
        mpp: µm/px for every input (wins over the files', like ``ircr segment --mpp``).
        resume: continue ``out``'s checkpoint.

    Raises:
        IrcrError: no usable source, bad config, a folder holding another run, ...
    """
    sources, skipped = open_pretrain_sources(cfg, inputs, mpp,
                                             log=lambda line: _say("skipping " + line))
    tissue = sum(s.tissue_pixels for s in sources)
    _say(f"{len(sources)} source image(s), {tissue / 1e6:.1f} Mpx of tissue at "
         f"{cfg.data.mpp:g} µm/px" + (f"; {len(skipped)} skipped" if skipped else ""))
    seed, pool, tile = cfg.train.seed, cfg.data.pool, cfg.data.tile

    def tiles(k: int) -> np.ndarray:
        return sample_tiles(sources, pool, tile, seed=pool_seed(seed, k))

    card: dict[str, Any] = {
        "sources": [s.describe() for s in sources],
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "tissue_pixels": int(round(tissue)), "inputs": [str(p) for p in inputs],
        "mpp_override": mpp, "versions": versions(),
    }
    trainer = Pretrainer(cfg, out, tiles, resume=resume, card=card, resume_hint=resume_hint,
                         stop_after=stop_after, on_step=on_step)
    folder = trainer.run()
    for s in skipped:
        _say("skipped " + s.line())
    return folder
