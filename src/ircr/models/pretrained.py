"""Load encoder weights from a local file (no download, never arbitrary pickle execution).

Supported layouts (detected from the keys; a ``module.`` prefix is stripped):

* ``hovernet-preact``: HoVer-Net's ImageNet pre-activation ResNet-50 (a torch-saved dict whose
  ``"desc"`` entry is a state dict with keys ``conv0./.weight``, ``d0.units.N.conv1.weight``,
  ``d0.units.N.preact/bn.*``, ``d0.shortcut.weight``, ``d0.blk_bna.bn.*``, ...). Loads into
  ``encoder: preact``. Full HoVer-Net checkpoints in this layout also carry ``conv_bot`` and
  ``decoder.*`` keys; the decoder is loaded only with ``encoder_only=False``.
* ``torchvision``: a torchvision ResNet-50 state dict (``conv1.weight``, ``layer1.0.conv1.weight``,
  ``fc.*``, ...). Loads into ``encoder: resnet``; ``fc.*`` is reported as unexpected.
* ``ircr``: a state dict of our own :class:`~ircr.models.HoVerNet` (``encoder.*``, ...).
* ``ircr-pretrain``: the output folder of ``ircr pretrain`` (or its ``encoder.pt``): a dict
  ``{"ircr_pretrain": {format, arch, ...}, "state_dict": {...}}``. ``arch`` names what the
  weights fit (:func:`hovernet_arch`: encoder type, width, blocks; :func:`backbone_arch`:
  the BASS backbone body); a model of another architecture is refused with one line naming
  the first difference, before any tensor is compared. HoVer-Net encoders use ``encoder.*``
  keys, BASS backbone bodies torchvision keys (:func:`read_pretrain_file`).

Every tensor that maps onto the model must have the model's shape, otherwise the file is
refused with an :class:`IrcrError` naming the file, the key and both shapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError

log = logging.getLogger(__name__)

LAYOUTS = ("hovernet-preact", "torchvision", "ircr", "ircr-pretrain")
PRETRAIN_FORMAT = "ircr-pretrain"
PRETRAIN_WEIGHTS = "encoder.pt"


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did. Key names are the model's (``loaded``, ``missing``)
    and the file's (``unexpected``)."""

    path: Path
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    detail: str = ""  # e.g. what an `ircr pretrain` file was trained on

    def summary(self) -> str:
        """One line: counts and the first few missing / unexpected keys."""

        def head(keys: list[str]) -> str:
            shown = ", ".join(keys[:4])
            return f" ({shown}{', ...' if len(keys) > 4 else ''})" if keys else ""

        return (
            f"{self.path}: {self.layout} layout, loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)}{head(self.missing)}, "
            f"unexpected {len(self.unexpected)}{head(self.unexpected)}"
            + (f"; {self.detail}" if self.detail else "")
        )


def hovernet_arch(cfg: Any) -> dict[str, Any]:
    """What a HoVer-Net encoder's weights depend on (a ModelConfig): encoder, width, blocks."""
    return {"family": "hovernet", "encoder": str(cfg.encoder), "width": float(cfg.width),
            "blocks": [int(b) for b in cfg.blocks]}


def backbone_arch(backbone: str, tiny_channels: list[int] | None = None) -> dict[str, Any]:
    """What a BASS backbone body's weights depend on: the body, the tiny widths."""
    arch: dict[str, Any] = {"family": "maskrcnn", "backbone": str(backbone)}
    if backbone == "tiny":
        arch["tiny_channels"] = [int(c) for c in (tiny_channels or [16, 32, 64, 128])]
    return arch


def describe_arch(arch: dict[str, Any]) -> str:
    """``hovernet encoder preact width 0.25 blocks [3, 4, 6, 3]`` / ``maskrcnn backbone tiny``."""
    parts = [str(arch.get("family", "?"))]
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
              for k, v in arch.items() if k != "family"]
    return " ".join(parts)


_ARCH_KEYS = {"encoder": "model.encoder", "width": "model.width", "blocks": "model.blocks",
              "backbone": "backbone", "tiny_channels": "tiny_channels"}


def check_arch(path: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    """Refuse weights pretrained for ``have`` in a model of architecture ``want``.

    Raises:
        IrcrError: ``"<path>: pretrained for hovernet ..., but the model is ...: model.width
        0.25 != 0.5"`` naming the first differing setting.
    """
    if have.get("family") != want.get("family"):
        raise IrcrError(f"{path}: pretrained for a {have.get('family')} encoder "
                        f"({describe_arch(have)}), but the model is {describe_arch(want)}")
    for key, value in want.items():
        if have.get(key) != value:
            raise IrcrError(f"{path}: pretrained for {describe_arch(have)}, but the model is "
                            f"{describe_arch(want)}: {_ARCH_KEYS.get(key, key)} "
                            f"{have.get(key)} != {value}")


def is_pretrain_output(path: str | Path) -> bool:
    """Whether ``path`` is an ``ircr pretrain`` folder (or names one's weights file)."""
    p = Path(path)
    return (p / PRETRAIN_WEIGHTS).is_file() if p.is_dir() else p.name == PRETRAIN_WEIGHTS


def read_pretrain_file(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    """(weights file, its ``ircr_pretrain`` meta, state dict) of an ``ircr pretrain`` output.

    Raises:
        IrcrError: no weights file, unreadable (``weights_only``), not this format.
    """
    p = Path(path)
    f = p / PRETRAIN_WEIGHTS if p.is_dir() else p
    if not f.is_file():
        raise IrcrError(f"{f}: weights file not found (not an `ircr pretrain` output folder)")
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise IrcrError(f"{f}: cannot read as a torch weights file (weights_only): "
                        f"{type(exc).__name__}") from None
    meta = obj.get("ircr_pretrain") if isinstance(obj, dict) else None
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if (not isinstance(meta, dict) or meta.get("format") != PRETRAIN_FORMAT
            or not isinstance(meta.get("arch"), dict) or not isinstance(state, dict)):
        raise IrcrError(f"{f}: not an `ircr pretrain` weights file")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise IrcrError(f"{f}: the file holds no tensors")
    return f, meta, tensors


def pretrain_detail(meta: dict[str, Any]) -> str:
    """``pretrained 1500 iterations at 0.25 µm/px`` from an ``ircr pretrain`` file's meta."""
    its, mpp = meta.get("iterations"), meta.get("mpp")
    return (f"pretrained {its} iterations at {mpp:g} µm/px"
            if isinstance(its, int) and isinstance(mpp, (int, float)) else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``; unwrap ``desc``/``state_dict``.

    Returns a flat ``{key: tensor}`` with any ``module.`` prefix removed. Non-tensor entries
    are dropped. Raises :class:`IrcrError` for a missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise IrcrError(f"{p}: weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise IrcrError(
            f"{p}: cannot read as a torch weights file (weights_only): {type(exc).__name__} {first}"
        ) from exc
    for wrapper in ("desc", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise IrcrError(f"{p}: expected a state dict (mapping of names to tensors)")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            continue
        k = str(key)
        out[k[len("module.") :] if k.startswith("module.") else k] = value
    if not out:
        raise IrcrError(f"{p}: the file holds no tensors")
    return out


def detect_layout(keys: list[str] | set[str]) -> str | None:
    """Guess the key layout of a state dict: one of :data:`LAYOUTS` or None."""
    ks = set(keys)
    if any(k.startswith("encoder.") for k in ks):
        return "ircr"
    if "conv0./.weight" in ks or any(k.startswith("d0.units.") for k in ks):
        return "hovernet-preact"
    if "conv1.weight" in ks or any(k.startswith("layer1.") for k in ks):
        return "torchvision"
    return None


def hovernet_key(key: str) -> str:
    """Our HoVerNet state-dict key -> HoVer-Net's own (PyTorch release) key."""
    k = key[len("encoder.") :] if key.startswith("encoder.") else key
    k = k.replace("conv0.conv.", "conv0./.")
    if ".dense.units." in k:
        k = k.replace(".preact_bn.", ".preact_bna/bn.")
    else:
        k = k.replace(".preact_bn.", ".preact/bn.")
    k = k.replace(".conv1_bn.", ".conv1/bn.").replace(".conv2_bn.", ".conv2/bn.")
    return k.replace(".blk_bna.", ".blk_bna.bn.")


def to_hovernet_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a state dict of our preact HoVerNet into HoVer-Net's key layout."""
    return {hovernet_key(k): v for k, v in state_dict.items()}


def _key_map(model_keys: list[str], layout: str, encoder_only: bool) -> dict[str, str]:
    """file key -> model key for every model key this layout can provide."""
    scope = [
        k for k in model_keys
        if k.startswith("encoder.") or (
            layout != "torchvision" and (k.startswith("conv_bot.") or not encoder_only)
        )
    ]
    if layout == "hovernet-preact":
        return {hovernet_key(k): k for k in scope}
    if layout == "torchvision":
        return {k[len("encoder.") :]: k for k in scope}
    return {k: k for k in scope}


def _check_layout(path: Path, layout: str | None, encoder: str) -> str:
    if layout is None:
        raise IrcrError(
            f"{path}: unknown weights layout (expected HoVer-Net preact, torchvision ResNet-50 "
            f"or ircr keys)"
        )
    needs = {"hovernet-preact": "preact", "torchvision": "resnet"}.get(layout)
    if needs is not None and needs != encoder:
        raise IrcrError(
            f"{path}: {layout} weights need model.encoder '{needs}', but the model uses '{encoder}'"
        )
    return layout


def load_pretrained(
    model: nn.Module, path: str | Path, encoder_only: bool = True
) -> PretrainedReport:
    """Load weights from ``path`` into ``model`` (a HoVerNet) and report what happened.

    Args:
        model: a :class:`~ircr.models.HoVerNet` (its ``cfg.encoder`` must match the layout).
        path: local file (HoVer-Net preact ``.tar``/``.pth``, torchvision ``.pth``, ircr).
        encoder_only: load only the encoder (and ``conv_bot``); other file keys are reported
            as unexpected.

    Raises:
        IrcrError: missing/unreadable file, unknown layout, layout/encoder mismatch, a tensor
            whose shape does not fit (names the first bad key and both shapes), or no key fits.
    """
    p = Path(path)
    if is_pretrain_output(p):
        return _load_pretrain_output(model, p)
    file_sd = read_state_dict(p)
    encoder = getattr(getattr(model, "cfg", None), "encoder", "preact")
    layout = _check_layout(p, detect_layout(list(file_sd)), encoder)
    model_sd = model.state_dict()
    kmap = _key_map(list(model_sd), layout, encoder_only)
    to_load: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for fkey, value in file_sd.items():
        mkey = kmap.get(fkey)
        if mkey is None:
            unexpected.append(fkey)
            continue
        want = tuple(model_sd[mkey].shape)
        if tuple(value.shape) != want:
            raise IrcrError(
                f"{p}: tensor '{fkey}' has shape {tuple(value.shape)} but the model expects "
                f"{want} (model key '{mkey}'); wrong architecture or width?"
            )
        to_load[mkey] = value
    if not to_load:
        raise IrcrError(f"{p}: no tensor in the file fits the model ({layout} layout)")
    model.load_state_dict(to_load, strict=False)
    missing = [
        k for k in kmap.values() if k not in to_load and not k.endswith("num_batches_tracked")
    ]
    report = PretrainedReport(p, layout, sorted(to_load), sorted(missing), sorted(unexpected))
    log.info("pretrained weights: %s", report.summary())
    return report


def _load_pretrain_output(model: nn.Module, path: Path) -> PretrainedReport:
    """Load an ``ircr pretrain`` HoVer-Net encoder: architecture checked first, then every
    encoder tensor by name and shape (none may be missing)."""
    f, meta, file_sd = read_pretrain_file(path)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise IrcrError(f"{f}: the model has no HoVer-Net config to check the weights against")
    check_arch(f, meta["arch"], hovernet_arch(cfg))
    model_sd = model.state_dict()
    wanted = [k for k in model_sd if k.startswith("encoder.")]
    unexpected = sorted(k for k in file_sd if k not in wanted)
    for k in wanted:
        if k in file_sd and tuple(file_sd[k].shape) != tuple(model_sd[k].shape):
            raise IrcrError(f"{f}: tensor '{k}' has shape {tuple(file_sd[k].shape)} but the "
                            f"model expects {tuple(model_sd[k].shape)}")
    missing = sorted(k for k in wanted if k not in file_sd
                     and not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        bad = missing[0] if missing else unexpected[0]
        raise IrcrError(f"{f}: weights do not match the encoder ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors, e.g. '{bad}')")
    to_load = {k: file_sd[k] for k in wanted if k in file_sd}
    model.load_state_dict(to_load, strict=False)
    report = PretrainedReport(f, PRETRAIN_FORMAT, sorted(to_load), [], [],
                              detail=pretrain_detail(meta))
    log.info("pretrained weights: %s", report.summary())
    return report
