"""``ircr adapt``: fit a trained model to new slides without their labels.

Student and EMA teacher start from MODEL's weights (``train.init_weights``); the unlabelled
batches come from tiles of the TARGET images, folders or slides sampled once at the model's
µm/px on detected tissue (:mod:`ircr.engine.tile_source`) and written into ``OUT/data``
(:mod:`ircr.engine.adapt_data`); an optional labelled source dataset keeps a supervised
term. Training is the one :class:`~ircr.train.trainer.Trainer` with the ``ircr`` (default),
``mean_teacher`` method plug-in, so progress, checkpoints, Ctrl-C/SIGTERM, exact resume and
the stability guard are the trainer's. ``OUT/model`` is an ordinary model folder with MODEL's
WBIS thresholds, pixel size and inference setting, and an ``adapt`` record plus ``card`` in
its model.yaml (source model, targets, tiles, labelled data, method, prior, skipped targets).

Run folder ``OUT``: adapt.json (the request; a resume must repeat it), data/ (prepared
dataset), config.yaml, split.yaml, metrics.csv, checkpoints/last.pt, model/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ircr.config import apply_overrides, to_dict
from ircr.engine.adapt_data import (
    AdaptData,
    LabelledSource,
    build_adapt_data,
    existing_adapt_data,
    labelled_choice,
)
from ircr.engine.packaged import is_packaged_folder, resolve_model
from ircr.errors import IrcrError
from ircr.inference.device import select_device
from ircr.inference.model_folder import MODEL_YAML, LoadedModel, load_model_folder
from ircr.io.atomic import atomic_write_text
from ircr.io.paths import ensure_dir
from ircr.train import run_text

METHODS = ("ircr", "mean_teacher")
REQUEST = "adapt.json"


@dataclass
class AdaptRequest:
    """What ``ircr adapt`` was asked to do (recorded in OUT/adapt.json).

    Attributes:
        model: a model folder or a packaged model name (``default``).
        targets: images, folders or whole-slide files of the new lab (labels never read).
        out: the run folder; the adapted model is ``out/model``.
        method: ``ircr`` or ``mean_teacher``.
        labelled: None = the model's own training data when it names a prepared dataset that
            exists, ``"none"`` = no supervised term, else a prepared dataset folder.
        labelled_split: split of ``labelled`` (None: see ``adapt_data.labelled_choice``).
        prior: PIAC prior .npz (None: the model folder's prior.npz, else the packaged one).
        mpp: µm/px of every target, winning over the files' (None: the files' own; a target
            without one is skipped).
        tiles, tile_size: target tiles sampled (tile_size px at the model's µm/px).
        iterations, seed, device, threads, progress: as for ``ircr train``.
        overrides: ``--set KEY=VALUE`` on the training config (applied last).
    """

    model: str
    targets: list[str]
    out: str
    method: str = "ircr"
    labelled: str | None = None
    labelled_split: str | None = None
    prior: str | None = None
    mpp: float | None = None
    tiles: int = 64
    tile_size: int = 256
    iterations: int = 300
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    overrides: list[str] = field(default_factory=list)

    def check(self) -> None:
        """One-line errors for option values out of range."""
        if self.method not in METHODS:
            raise IrcrError(f"--method: must be one of {', '.join(METHODS)}, got "
                            f"'{self.method}'")
        if self.prior is not None and self.method != "ircr":
            raise IrcrError("--prior: only --method ircr uses a prior (PIAC)")
        for name, value, low in (("--tiles", self.tiles, 1), ("--tile-size", self.tile_size, 32),
                                 ("--iterations", self.iterations, 1)):
            if value < low:
                raise IrcrError(f"{name}: must be >= {low}, got {value}")
        if self.threads is not None and self.threads < 1:
            raise IrcrError(f"--threads: must be >= 1, got {self.threads}")
        if not self.targets:
            raise IrcrError("TARGET: give at least one image, folder or slide")

    def identity(self) -> dict[str, Any]:
        """The keys a resumed run must repeat (they fix the data and the training)."""
        keys = ("method", "labelled", "labelled_split", "prior", "mpp", "tiles", "tile_size",
                "iterations", "seed", "overrides")
        d = asdict(self)
        out = {k: d[k] for k in keys}
        out["model"] = str(Path(str(resolve_model(self.model))).resolve())
        out["targets"] = [str(Path(t).resolve()) for t in self.targets]
        return out


def _say(text: str) -> None:
    run_text.say(text, "ircr adapt")


def _source_model(spec: str) -> LoadedModel:
    folder = resolve_model(spec)
    loaded = load_model_folder(folder)
    if loaded.family.name != "hovernet":
        raise IrcrError(f"{folder}: adapt needs a HoVer-Net model folder, this one is "
                        f"'{loaded.family.name}'")
    if loaded.mpp is None:
        raise IrcrError(f"{folder / MODEL_YAML}: mpp is unknown; adapt samples target tiles "
                        "at the model's pixel size (set 'mpp:' in model.yaml)")
    return loaded


LABEL_DIRS = ("label", "mask")  # folders of label maps under a dataset root: never read


def target_paths(targets: list[str], say: Callable[[str], None]) -> list[Path]:
    """TARGETs with folders expanded, leaving out files under label/mask sub-folders.

    A dataset root (e.g. MoNuSeg's images/ + labels_inst/) may be given as a target: its label
    maps must not be opened, not even to find that they hold no tissue. Prepared datasets are
    kept whole (tile_source reads only their images).
    """
    from ircr.engine.tile_source import iter_source_files

    out: list[Path] = []
    for t in map(Path, targets):
        if not t.is_dir() or (t / "dataset.json").is_file():
            out.append(t)
            continue
        files = list(iter_source_files(t))
        keep = [f for f in files if not any(part.lower().startswith(LABEL_DIRS)
                                            for part in f.relative_to(t).parts[:-1])]
        if len(keep) < len(files):
            say(f"{t}: {len(files) - len(keep)} file(s) under label/mask folders left out "
                "(target labels are never read)")
        out.extend(keep if files else [t])  # an empty folder: tile_source names it
    return out


def sample_targets(req: AdaptRequest, mpp: float,
                   say: Callable[[str], None]) -> tuple[np.ndarray, list[str], list[str]]:
    """Target tiles (n, S, S, 3) uint8 at ``mpp``, the sources used, one line per skipped."""
    from ircr.engine.tile_source import open_tile_sources, sample_tiles

    sources, skipped = open_tile_sources(target_paths(req.targets, say), target_mpp=mpp,
                                         mpp_override=req.mpp, log=lambda line: say(line))
    lines = [s.line() for s in skipped]
    if not sources:
        raise IrcrError(f"TARGET: no usable target among {len(req.targets)} given "
                        f"({len(lines)} skipped: see above)")
    tiles = sample_tiles(sources, req.tiles, req.tile_size, req.seed)
    return np.asarray(tiles, dtype=np.uint8), [s.name for s in sources], lines


def check_labelled_mpp(labelled: LabelledSource | None, mpp: float) -> None:
    """The labelled data must be at the model's pixel size (mixed/unknown sizes pass)."""
    from ircr.data.store import PreparedDataset
    from ircr.inference.scale import common_mpp, rescale_factor

    if labelled is None:
        return
    have = common_mpp(m.get("mpp") for m in PreparedDataset(labelled.dataset).images)
    if have is not None and rescale_factor(have, mpp) != 1.0:
        raise IrcrError(f"--labelled: {labelled.dataset} is at {have:g} µm/px, the model at "
                        f"{mpp:g}; prepare the labelled data at the model's pixel size")


def _prior(req: AdaptRequest, loaded: LoadedModel) -> tuple[str | None, str]:
    if req.method != "ircr":
        return None, "none (mean_teacher)"
    if req.prior is not None:
        if not Path(req.prior).is_file():
            raise IrcrError(f"--prior: {req.prior}: file not found")
        return str(req.prior), f"{req.prior} (--prior)"
    if loaded.prior_file is not None:
        return str(loaded.prior_file), f"{loaded.prior_file} (the model folder's)"
    return None, "the packaged CPM-15 prior"


def training_config(req: AdaptRequest, loaded: LoadedModel, data: AdaptData,
                    labelled: bool, prior: str | None) -> dict[str, Any]:
    """The experiment config of the adaptation (``--set`` applied last)."""
    ipe = min(50, req.iterations)
    method: dict[str, Any] = {"name": req.method, "warmup_iterations": 0,
                              "rampup_iterations": min(50, req.iterations // 4)}
    if not labelled:
        method["guard_ratio"] = 0.0  # no supervised loss to compare with (NaN still warns)
    if prior is not None:
        method["prior"] = prior
    model_cfg = to_dict(loaded.model_cfg)
    model_cfg["pretrained"] = None
    # NHWC weights and batches: oneDNN's faster convolutions on CPU (1.43x the lite training
    # step, docs/benchmarks.md); CUDA/MPS keep the default layout.
    channels_last = select_device(req.device).type == "cpu"
    cfg: dict[str, Any] = {
        "data": {"dataset": str(data.path), "split": str(data.split),
                 "patch_size": data.patch_size, "batch_size": 4 if labelled else 0,
                 "context_margin": min(100, data.patch_size * 3 // 8)},
        "model": model_cfg,
        "train": {"epochs": math.ceil(req.iterations / ipe), "iterations_per_epoch": ipe,
                  "max_iterations": req.iterations, "lr_steps": [], "seed": req.seed,
                  "deterministic": True, "val_every": 0, "device": req.device,
                  "progress": req.progress, "tensorboard": False,
                  "channels_last": channels_last,
                  "init_weights": str(loaded.folder / "weights.pt")},
        "method": method,
        "postproc": to_dict(loaded.postproc),
        "eval": dict(loaded.inference),
    }
    from ircr.train.config import check_override_key

    for item in req.overrides:
        check_override_key(item)
    apply_overrides(cfg, list(req.overrides), where="--set")
    return cfg


def _prepare_data(req: AdaptRequest, loaded: LoadedModel, labelled: LabelledSource | None,
                  resume: bool) -> tuple[AdaptData, list[str], list[str]]:
    out = Path(req.out)
    record = out / REQUEST
    ident = req.identity()
    if resume:
        if not record.is_file():
            raise IrcrError(f"{record}: not found; nothing to resume in {out}")
        old = json.loads(record.read_text(encoding="utf-8"))
        diff = sorted(k for k in ident if old.get("request", {}).get(k) != ident[k])
        if diff:
            raise IrcrError(f"{record}: the run was started with another {diff[0]}; resume "
                            "with the same MODEL, TARGETs and options")
        data = existing_adapt_data(out / "data")
        if data is not None:
            return data, list(old.get("targets_used", [])), list(old.get("skipped", []))
    elif (out / "checkpoints" / "last.pt").is_file():
        raise IrcrError(f"{out}: run folder already holds a checkpoint; use --resume or "
                        "another -o")
    assert loaded.mpp is not None
    tiles, used, skipped = sample_targets(req, loaded.mpp, _say)
    ensure_dir(out, "output folder")
    data = build_adapt_data(out / "data", tiles, loaded.mpp, loaded.patch_size, labelled,
                            {"model": ident["model"], "seed": req.seed})
    atomic_write_text(record, json.dumps({"request": ident, "targets_used": used,
                                          "skipped": skipped}, indent=1) + "\n")
    return data, used, skipped


def _summary(req: AdaptRequest, loaded: LoadedModel, data: AdaptData,
             labelled: LabelledSource | None, prior_text: str, used: list[str]) -> str:
    lab = (f"{labelled.dataset} split {labelled.split}: {data.n_labelled_patches} labelled "
           f"patches ({labelled.reason})" if labelled else
           "none (supervised term off: the model folder names no prepared dataset that "
           "exists; --labelled PREPARED adds one)" if req.labelled is None else "none")
    return "\n".join([
        f"model {loaded.folder} ({loaded.mpp:g} µm/px); student and EMA teacher start from "
        "its weights; its WBIS thresholds are kept",
        f"targets: {len(used)} image(s)/slide(s) used; {data.n_tiles} tiles of "
        f"{req.tile_size} px at {loaded.mpp:g} µm/px -> {data.n_target_patches} unlabelled "
        f"patches of {data.patch_size} px (labels of the targets are never read)",
        f"labelled data: {lab}",
        f"method {req.method}; prior: {prior_text}; {req.iterations} iterations, seed "
        f"{req.seed}",
    ])


def _annotate(folder: Path, req: AdaptRequest, loaded: LoadedModel, used: list[str],
              skipped: list[str], labelled: LabelledSource | None, prior_text: str,
              iterations: int) -> None:
    """Record the source model and the targets in OUT/model/model.yaml (atomic rewrite)."""
    path = folder / MODEL_YAML
    meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    source = str(req.model) if is_packaged_folder(loaded.folder) else str(loaded.folder)
    record = {"source_model": source, "source_model_folder": str(loaded.folder.resolve()),
              "targets": used, "skipped_targets": skipped, "tiles": req.tiles,
              "tile_size": req.tile_size, "method": req.method, "iterations": iterations,
              "seed": req.seed, "prior": prior_text,
              "labelled": None if labelled is None else {
                  "dataset": str(labelled.dataset), "split": labelled.split}}
    got = loaded.meta.get("card")
    src_card: dict[str, Any] = got if isinstance(got, dict) else {}
    card = {"description": f"{source} adapted with ircr adapt ({req.method}, {iterations} "
                           f"iterations) to {len(used)} target image(s)/slide(s) without "
                           "their labels",
            "adapted_from": src_card.get("description", source),
            "training_data": f"source model's: {src_card.get('training_data', 'see its card')}"
                             f"; unlabelled: {req.tiles} tiles of {req.tile_size} px from the "
                             "targets listed under adapt:",
            "method": f"{req.method} consistency, student and EMA teacher from the source "
                      "model; WBIS thresholds of the source model",
            "licence": src_card.get("licence", "that of the source model and the targets")}
    meta.update(mpp=loaded.mpp, adapt=record, card=card)
    atomic_write_text(path, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))


def run_adapt(req: AdaptRequest, resume: bool = False, stop_after: int | None = None) -> Path:
    """Adapt ``req.model`` to ``req.targets``; returns the model folder ``OUT/model``.

    ``stop_after``: stop after that iteration (resume tests; see ``Trainer``).
    """
    import torch

    from ircr.train.config import experiment_from_dict
    from ircr.train.stop import TrainingStopped
    from ircr.train.trainer import Trainer

    req.check()
    if req.threads is not None:
        torch.set_num_threads(req.threads)
    loaded = _source_model(req.model)
    labelled = labelled_choice(loaded.meta, req.labelled, req.labelled_split)
    assert loaded.mpp is not None
    check_labelled_mpp(labelled, loaded.mpp)
    prior, prior_text = _prior(req, loaded)
    data, used, skipped = _prepare_data(req, loaded, labelled, resume)
    _say(_summary(req, loaded, data, labelled, prior_text, used))
    cfg_dict = training_config(req, loaded, data, labelled is not None, prior)
    cfg = experiment_from_dict(cfg_dict, where=f"{req.out} (adapt config)")
    cfg.validate(f"{req.out} (adapt config)")
    trainer = Trainer(cfg, req.out, resume="auto" if resume else False, stop_after=stop_after,
                      config_source=str(Path(req.out) / "config.yaml"))
    try:
        folder = trainer.run()
    except TrainingStopped as exc:  # name the adapt command, not `ircr train`
        raise TrainingStopped(str(exc).split("; resume with:")[0] + "; resume with the same "
                              "ircr adapt command and --resume") from None
    _annotate(folder, req, loaded, used, skipped, labelled, prior_text, trainer.iteration)
    if skipped:
        _say(f"{len(skipped)} target(s) skipped:")
        for line in skipped:
            _say(f"  {line}")
    _say(f"adapted model folder: {folder}  (ircr segment {folder} IMAGES... -o OUT)")
    return folder
