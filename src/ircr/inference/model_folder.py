"""The self-describing trained model folder (what ``ircr evaluate`` / ``ircr segment`` load).

Layout::

    <folder>/
      weights.pt      state_dict only (torch.save); refused when a tensor holds NaN/inf
      model.yaml      ircr_version, created, family (default hovernet), model (the family's
                      config), mpp, patch_size, inference (window, overlap, batch_size),
                      + extra keys (e.g. method, train); metrics/prior file names when present
      postproc.yaml   WBIS parameters as a plain mapping
      metrics.json    optional evaluation/validation metrics
      prior.npz       optional morphological prior (copied)

Every file is written atomically with the umask's permissions (:mod:`ircr.io.atomic`);
``model.yaml`` is removed first and written last, so a folder without it is incomplete.

``inference`` is the one sliding-window setting that ``ircr evaluate``, ``ircr segment`` and
``ircr.load_model(...).segment(...)`` all use (each can override it). The trainer stores the
``eval`` section it validated with. Folders written before it existed load with
:data:`INFERENCE_DEFAULTS` (window 256, overlap 64, batch size 8: the ``eval`` defaults).

``family`` names the model family (:mod:`ircr.inference.family`) that parses ``model:`` and
``postproc.yaml`` and builds the network; folders without it are HoVer-Net folders.

Loading uses ``torch.load(weights_only=True)``; every missing or corrupt file gives a one-line
:class:`IrcrError` naming that file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ircr._version import __version__
from ircr.config import load_yaml_file, short_repr, to_dict
from ircr.errors import IrcrError
from ircr.inference.family import DEFAULT_FAMILY, ModelFamily, get_family
from ircr.inference.predict import window_size_problem
from ircr.io.atomic import atomic_write, atomic_write_text, clean_stale_temps
from ircr.io.paths import ensure_dir
from ircr.io.torchfile import first_nonfinite, save_torch
from ircr.io.wsi import MPP_RANGE

WEIGHTS = "weights.pt"
MODEL_YAML = "model.yaml"
POSTPROC_YAML = "postproc.yaml"
METRICS_JSON = "metrics.json"
PRIOR_NPZ = "prior.npz"
RESERVED = frozenset({"ircr_version", "created", "family", "model", "mpp", "patch_size",
                      "files", "inference"})
# sliding-window setting of folders whose model.yaml has no ``inference`` (the eval defaults)
INFERENCE_DEFAULTS: dict[str, int] = {"window": 256, "overlap": 64, "batch_size": 8}


@dataclass
class LoadedModel:
    """A model folder read back: the network (eval mode) and everything needed to use it."""

    model: nn.Module
    model_cfg: Any
    postproc: Any  # the family's post-processing dataclass (HoVer-Net: WBISParams)
    mpp: float | None
    patch_size: int
    meta: dict[str, Any]
    folder: Path
    metrics: dict[str, Any] | None = None
    prior_file: Path | None = field(default=None)
    inference: dict[str, int] = field(default_factory=lambda: dict(INFERENCE_DEFAULTS))
    family: ModelFamily = field(default_factory=get_family)


def check_inference(settings: dict[str, Any], where: str, flags: bool = False) -> dict[str, int]:
    """Validate a window/overlap/batch_size mapping (defaults filled in).

    Errors are one line naming ``where`` and the key (``flags``: the command-line option,
    e.g. ``--overlap``, when the value came from one).
    """
    def name(key: str) -> str:
        return f"--{key.replace('_', '-')}" if flags else f"{where}: {key}"

    unknown = sorted(set(settings) - set(INFERENCE_DEFAULTS))
    if unknown:
        raise IrcrError(f"{where}: unknown key '{unknown[0]}' (expected window, overlap, "
                        "batch_size)")
    out = dict(INFERENCE_DEFAULTS)
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise IrcrError(f"{name(key)}: must be an integer, got {short_repr(value)}")
        out[key] = value
    w, o, b = out["window"], out["overlap"], out["batch_size"]
    if w < 16 or w % 8:
        raise IrcrError(f"{name('window')}: must be a multiple of 8 and >= 16, got {w}")
    if not 0 <= o < w:
        raise IrcrError(f"{name('overlap')}: must be in [0, window={w}), got {o}")
    if b < 1:
        raise IrcrError(f"{name('batch_size')}: must be >= 1, got {b}")
    too_big = window_size_problem(w, b)
    if too_big is not None:
        raise IrcrError(f"{name(too_big[0])}: {too_big[1]}")
    return out


def resolve_inference(stored: dict[str, int], window: int | None = None,
                      overlap: int | None = None, batch_size: int | None = None) -> dict[str, int]:
    """The folder's inference setting with the given (non-None) overrides, validated.

    Errors name the option (``--window``, ``--overlap``, ``--batch-size``).
    """
    given = {"window": window, "overlap": overlap, "batch_size": batch_size}
    merged = dict(stored, **{k: v for k, v in given.items() if v is not None})
    return check_inference(merged, "inference", flags=True)


def save_model_folder(
    out_dir: str | Path,
    model: nn.Module,
    model_cfg: Any,
    postproc: dict[str, Any],
    mpp: float | None,
    patch_size: int,
    metrics: dict[str, Any] | None = None,
    prior_file: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    inference: dict[str, int] | None = None,
    family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a model folder and return its path.

    Args:
        out_dir: folder to create (or update).
        model: trained network (its state dict is saved on CPU).
        model_cfg: the architecture it was built from (the family's ``config_class``).
        postproc: WBIS parameters as a plain dict (e.g. ``dataclasses.asdict(WBISParams())``).
        mpp: microns per pixel of the training data (None = unknown).
        patch_size: training patch size in px.
        metrics: optional metrics -> metrics.json.
        prior_file: optional prior .npz -> copied as prior.npz.
        extra: extra top-level keys for model.yaml (method, training info, ...).
        inference: window/overlap/batch_size for evaluate and segment (default
            :data:`INFERENCE_DEFAULTS`).
        family: the registered model family (:mod:`ircr.inference.family`).
    """
    out = Path(out_dir)
    extra = dict(extra or {})
    clash = sorted(RESERVED & set(extra))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved in {MODEL_YAML}")
    if prior_file is not None and not Path(prior_file).is_file():
        raise IrcrError(f"{prior_file}: prior file not found")
    check_inference(dict(inference or {}), "inference")
    fam = get_family(family, where="family")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = first_nonfinite(state)
    if bad is not None:
        raise IrcrError(f"{out / WEIGHTS}: not written, model tensor '{bad}' holds NaN or inf")
    ensure_dir(out, "model folder")
    clean_stale_temps(out)
    # model.yaml is written last: while it is missing the folder is incomplete
    (out / MODEL_YAML).unlink(missing_ok=True)
    save_torch(out / WEIGHTS, state)
    files = {"weights": WEIGHTS, "postproc": POSTPROC_YAML}
    if metrics is not None:
        atomic_write_text(out / METRICS_JSON, json.dumps(to_dict(metrics), indent=2) + "\n")
        files["metrics"] = METRICS_JSON
    if prior_file is not None:
        atomic_write(out / PRIOR_NPZ, lambda p: shutil.copyfile(prior_file, p))
        files["prior"] = PRIOR_NPZ
    meta = {
        "ircr_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "family": fam.name,
        "model": to_dict(model_cfg),
        "mpp": None if mpp is None else float(mpp),
        "patch_size": int(patch_size),
        "inference": check_inference(dict(inference or {}), "inference"),
        "files": files,
        **to_dict(extra),
    }
    atomic_write_text(out / POSTPROC_YAML, yaml.safe_dump(to_dict(postproc), sort_keys=False,
                                                          allow_unicode=True))
    atomic_write_text(out / MODEL_YAML, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IrcrError(f"{path}: missing from the model folder")
    data = load_yaml_file(path, "model folder file")
    if not isinstance(data, dict):
        raise IrcrError(f"{path}: expected a mapping")
    return data


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise IrcrError(f"{path}: missing from the model folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means a corrupt file
        raise IrcrError(f"{path}: corrupt or unreadable weights ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IrcrError(f"{path}: not a state dict of tensors")
    return state


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise IrcrError(f"{path}: missing tensor '{key}' (does not match model.yaml)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise IrcrError(
                f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}, model.yaml "
                f"describes {tuple(value.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise IrcrError(f"{path}: unexpected tensor '{extra[0]}' (does not match model.yaml)")
    # weights may be stored in fp16 (packaged models); the network always runs in its own dtype
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _read_meta(folder: Path) -> tuple[dict[str, Any], ModelFamily, Any, float | None, int]:
    yml = folder / MODEL_YAML
    if not yml.is_file():
        raise IrcrError(f"{yml}: missing from the model folder (a model folder holds "
                        "model.yaml, postproc.yaml and weights.pt; `ircr train` writes one to "
                        "RUN/model)")
    meta = _read_yaml(yml)
    for key in ("model", "patch_size"):
        if key not in meta:
            raise IrcrError(f"{yml}: missing key '{key}'")
    if not isinstance(meta["model"], dict):
        raise IrcrError(f"{yml}: 'model' must be a mapping")
    family = meta.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str):
        raise IrcrError(f"{yml}: 'family' must be a model family name, got "
                        f"{short_repr(family)}")
    fam = get_family(family, where=f"{yml}: family")
    cfg = fam.parse_config(meta["model"], where=str(yml))
    mpp, patch = meta.get("mpp"), meta["patch_size"]
    if mpp is not None and (not isinstance(mpp, (int, float)) or isinstance(mpp, bool)
                            or not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise IrcrError(f"{yml}: 'mpp' must be a number of microns per pixel in "
                        f"[{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}] or null, got {short_repr(mpp)}")
    if not isinstance(patch, int) or patch <= 0:
        raise IrcrError(f"{yml}: 'patch_size' must be a positive integer, got "
                        f"{short_repr(patch)}")
    return meta, fam, cfg, None if mpp is None else float(mpp), patch


def load_model_folder(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a folder written by :func:`save_model_folder`; the model is in eval mode.

    Raises:
        IrcrError: the folder or one of its files is missing or corrupt (names the file).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise IrcrError(f"{folder}: model folder not found")
    if not (folder / MODEL_YAML).is_file() and (folder / "model" / MODEL_YAML).is_file():
        raise IrcrError(f"{folder}: this is a training run folder; pass its model folder "
                        f"{folder / 'model'}")
    meta, fam, cfg, mpp, patch = _read_meta(folder)
    stored = meta.get("inference", {})
    if not isinstance(stored, dict):
        raise IrcrError(f"{folder / MODEL_YAML}: 'inference' must be a mapping")
    inference = check_inference(stored, f"{folder / MODEL_YAML}: inference")
    postproc = fam.parse_postproc(_read_yaml(folder / POSTPROC_YAML),
                                  where=str(folder / POSTPROC_YAML))
    metrics = None
    if (folder / METRICS_JSON).is_file():
        try:
            metrics = json.loads((folder / METRICS_JSON).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IrcrError(f"{folder / METRICS_JSON}: corrupt JSON") from exc
    weights = folder / WEIGHTS
    state = _read_weights(weights)
    model = fam.build(cfg)
    _load_state(model, state, weights)
    model.to(torch.device(device)).eval()
    prior = folder / PRIOR_NPZ
    return LoadedModel(
        model=model,
        model_cfg=cfg,
        postproc=postproc,
        mpp=mpp,
        patch_size=patch,
        meta=meta,
        folder=folder,
        metrics=metrics,
        prior_file=prior if prior.is_file() else None,
        inference=inference,
        family=fam,
    )


def write_postproc(folder: str | Path, postproc: dict[str, Any],
                   extra_files: dict[str, str] | None = None) -> Path:
    """Replace a model folder's ``postproc.yaml`` atomically (e.g. tuned WBIS thresholds).

    ``extra_files`` maps file names in the folder to text written alongside (atomically too).
    """
    out = Path(folder)
    for name, text in (extra_files or {}).items():
        atomic_write_text(out / name, text)
    atomic_write_text(out / POSTPROC_YAML, yaml.safe_dump(to_dict(postproc), sort_keys=False,
                                                          allow_unicode=True))
    return out / POSTPROC_YAML
