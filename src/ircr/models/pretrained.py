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

Every tensor that maps onto the model must have the model's shape, otherwise the file is
refused with an :class:`IrcrError` naming the file, the key and both shapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ircr.errors import IrcrError

log = logging.getLogger(__name__)

LAYOUTS = ("hovernet-preact", "torchvision", "ircr")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did. Key names are the model's (``loaded``, ``missing``)
    and the file's (``unexpected``)."""

    path: Path
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts and the first few missing / unexpected keys."""

        def head(keys: list[str]) -> str:
            shown = ", ".join(keys[:4])
            return f" ({shown}{', ...' if len(keys) > 4 else ''})" if keys else ""

        return (
            f"{self.path}: {self.layout} layout, loaded {len(self.loaded)} tensors, "
            f"missing {len(self.missing)}{head(self.missing)}, "
            f"unexpected {len(self.unexpected)}{head(self.unexpected)}"
        )


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
