"""Start a training from the full weights of a trained model (``train.init_weights``).

Unlike ``model.pretrained`` (an encoder only), every tensor of the network is loaded: the
file must describe exactly the network of ``model:`` (same keys, same shapes), otherwise
nothing is loaded and a one-line :class:`~ircr.errors.IrcrError` names the first mismatch.
Used by fine-tuning and by ``ircr adapt`` (student and EMA teacher start from the model).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ircr.errors import IrcrError
from ircr.models.pretrained import read_state_dict

WEIGHTS_FILE = "weights.pt"  # the weights of a model folder (inference.model_folder)


def init_weights_file(path: str | Path) -> Path:
    """The weights file of ``path``: the file itself, or a model folder's ``weights.pt``."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise IrcrError(f"train.init_weights: {p}: weights file not found")
    return p


def load_init_weights(model: nn.Module, path: str | Path) -> int:
    """Load every tensor of ``model`` from ``path`` (a weights file or a model folder).

    Returns:
        the number of tensors loaded (= every tensor of ``model``'s state dict).

    Raises:
        IrcrError: missing/unreadable file, a tensor missing from the file or not in the
            model, or a shape that differs (names the key and both shapes).
    """
    p = init_weights_file(path)
    state = read_state_dict(p)
    expected = model.state_dict()
    where = f"train.init_weights: {p}"
    for key, value in expected.items():
        if key not in state:
            raise IrcrError(f"{where}: tensor '{key}' of the model is missing from the file "
                            "(another architecture than model:?)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise IrcrError(f"{where}: tensor '{key}' has shape {tuple(state[key].shape)}, the "
                            f"model expects {tuple(value.shape)} (another width or depth?)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise IrcrError(f"{where}: tensor '{extra[0]}' is not in the model (another "
                        "architecture than model:?)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return len(expected)
