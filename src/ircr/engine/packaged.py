"""Trained models shipped inside the package (``ircr/resources/models/<name>/``).

Each packaged model is an ordinary model folder (:mod:`ircr.inference.model_folder`) whose
``model.yaml`` also carries a ``card`` mapping (description, training data and its licence,
training command, validation metrics). They work offline: nothing is downloaded at run time.

``resolve_model(spec)`` turns what a user typed (a folder path or a packaged model name,
``"default"`` included) into a folder. A bare packaged name typed as a string (``default``)
always means the packaged model, even where a folder of that name exists in the working
directory (which is then named in a warning: write ``./default`` for the folder); anything
else is a path.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ircr.config import load_yaml_file
from ircr.errors import IrcrError

DEFAULT_MODEL = "default"
CARD_KEYS = ("description", "architecture", "parameters", "weights", "training_data", "licence",
             "method", "training_command", "validation", "speed")


@dataclass(frozen=True)
class PackagedModel:
    """A model folder shipped with the package: its name, folder and card (from model.yaml)."""

    name: str
    folder: Path
    card: dict[str, Any]
    mpp: float | None


def packaged_root() -> Path:
    """The folder holding the packaged model folders (inside the installed package)."""
    return Path(str(resources.files("ircr").joinpath("resources/models")))


def _read_card(folder: Path) -> tuple[dict[str, Any], float | None]:
    yml = folder / "model.yaml"
    try:
        meta = load_yaml_file(yml, "packaged model description")
    except IrcrError as exc:
        raise IrcrError(f"{exc}; reinstall ircr") from None
    if not isinstance(meta, dict):
        raise IrcrError(f"{yml}: expected a mapping; reinstall ircr")
    card = meta.get("card") or {}
    if not isinstance(card, dict):
        raise IrcrError(f"{yml}: 'card' must be a mapping")
    mpp = meta.get("mpp")
    return card, float(mpp) if isinstance(mpp, (int, float)) else None


def packaged_models() -> list[PackagedModel]:
    """Every packaged model (sorted by name, ``default`` first)."""
    root = packaged_root()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if (p / "model.yaml").is_file()):
        card, mpp = _read_card(folder)
        found.append(PackagedModel(folder.name, folder, card, mpp))
    found.sort(key=lambda m: (m.name != DEFAULT_MODEL, m.name))
    return found


def packaged_names() -> list[str]:
    """Names accepted by :func:`resolve_model` besides folder paths."""
    return [m.name for m in packaged_models()]


def _bare_name(text: str) -> bool:
    return bool(text) and text not in (".", "..") and not any(
        sep in text for sep in ("/", os.sep, os.altsep or "/"))


def is_packaged_name(spec: str | Path) -> bool:
    """True when ``spec`` is a bare packaged model name (``default``, not ``./default``).

    A :class:`~pathlib.Path` that exists is a path, never a name (``Path("./default")`` and
    ``Path("default")`` cannot be told apart).
    """
    text = str(spec)
    if isinstance(spec, Path) and spec.exists():
        return False
    return _bare_name(text) and (packaged_root() / text / "model.yaml").is_file()


def resolve_model(spec: str | Path | None) -> Path:
    """The model folder for a folder path or a packaged model name (None = ``default``).

    A bare packaged name wins over a folder of that name in the working directory, with a
    warning naming both (``./NAME`` selects the folder).

    Raises:
        IrcrError: ``spec`` is neither an existing path nor a packaged model name.
    """
    if spec is None:  # no model given: the packaged default, whatever folders exist here
        if not (packaged_root() / DEFAULT_MODEL / "model.yaml").is_file():
            raise IrcrError(f"{DEFAULT_MODEL}: the packaged default model is missing; "
                            "reinstall ircr")
        return packaged_root() / DEFAULT_MODEL
    if is_packaged_name(spec):
        if Path(str(spec)).exists():
            warnings.warn(f"{spec}: using the packaged model '{spec}', not the folder "
                          f"'{spec}' in the working directory (write ./{spec} for the folder)",
                          stacklevel=2)
        return packaged_root() / str(spec)
    if Path(str(spec)).exists():
        return Path(str(spec))
    names = ", ".join(packaged_names()) or "none installed"
    raise IrcrError(f"{spec}: model folder not found and not a packaged model "
                    f"(packaged: {names}; `ircr models list`)")


def is_packaged_folder(folder: str | Path) -> bool:
    """True when ``folder`` is one of the package's own model folders (read-only in use)."""
    try:
        Path(folder).resolve().relative_to(packaged_root().resolve())
    except ValueError:
        return False
    return True


def format_card(model: PackagedModel) -> str:
    """Human-readable card of one packaged model (``ircr models list``)."""
    lines = [f"{model.name}  ({model.folder})"]
    if model.mpp is not None:
        lines.append(f"  mpp: {model.mpp:g} µm/px (inputs at other resolutions are rescaled)")
    for key in CARD_KEYS:
        if key in model.card:
            lines.extend(_format_value(key, model.card[key], indent=2))
    extra = [k for k in model.card if k not in CARD_KEYS]
    for key in extra:
        lines.extend(_format_value(key, model.card[key], indent=2))
    return "\n".join(lines)


def _format_value(key: str, value: Any, indent: int) -> list[str]:
    pad = " " * indent
    label = key.replace("_", " ")
    if isinstance(value, dict):
        out = [f"{pad}{label}:"]
        for k, v in value.items():
            out.extend(_format_value(str(k), v, indent + 2))
        return out
    if isinstance(value, float):
        return [f"{pad}{label}: {value:.4g}"]
    if isinstance(value, (list, tuple)):  # a list as text, not Python's repr
        return [f"{pad}{label}: {', '.join(str(v) for v in value)}"]
    return [f"{pad}{label}: {value}"]
