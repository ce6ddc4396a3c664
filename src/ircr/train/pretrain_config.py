"""Config of ``ircr pretrain``: typed YAML, unknown keys are errors, ``--set`` overrides.

```yaml
target: hovernet            # or maskrcnn (the BASS backbone body), cdcl (DenseNet: densenet:)
model: {width: 0.25, blocks: [3, 4, 6, 3], encoder: preact}   # an experiment config's model:
backbone: resnet50          # target maskrcnn: resnet50 | resnet18 | tiny (+ tiny_channels)
heads: {hidden: 1024, dim: 256, dense_hidden: 512, dense_dim: 128}
data: {mpp: 0.25, tile: 256, pool: 256, refresh: 100, batch_size: 16, exclude_splits: []}
views: {size: 224, scale: [0.5, 1.0], hed_sigma: 0.05, ...}           # ssl/views.py
objective: {global_weight: 1.0, dense_weight: 1.0, ema_start: 0.99, ema_end: 1.0}
train: {iterations: 1000, lr: 1e-3, ...}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ircr.config import apply_overrides, from_dict, read_yaml
from ircr.errors import IrcrError
from ircr.models.cdcl_net import CDCLNetConfig
from ircr.models.config import ModelConfig
from ircr.models.selfsup import HeadConfig
from ircr.ssl.views import ViewConfig

__all__ = ["PretrainConfig", "PretrainData", "PretrainObjective", "PretrainTrain",
           "load_pretrain_config", "pretrain_config_from_dict"]


@dataclass
class PretrainData:
    """Tiles: pixel size, side, how many are sampled at a time and how often anew.

    Attributes:
        mpp: µm/px of the tiles (the later model's pixel size).
        tile: tile side in px; views are crops of it (``views.scale``) resized to
            ``views.size``.
        pool: tiles sampled from the sources at once; every ``refresh`` iterations a new pool.
        batch_size: tiles per iteration (two views each).
        exclude_splits: split names whose validation/test images prepared datasets leave out.
    """

    mpp: float = 0.25
    tile: int = 256
    pool: int = 256
    refresh: int = 100
    batch_size: int = 16
    exclude_splits: list[str] = field(default_factory=list)

    def validate(self, where: str = "data") -> None:
        """One-line errors for impossible values."""
        for key in ("tile", "pool", "refresh", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise IrcrError(f"{where}: data.{key} must be >= 1")
        if self.batch_size < 2:
            raise IrcrError(f"{where}: data.batch_size must be >= 2 (BatchNorm in the heads)")
        if self.pool < self.batch_size:
            raise IrcrError(f"{where}: data.pool ({self.pool}) must be >= data.batch_size "
                            f"({self.batch_size})")


@dataclass
class PretrainObjective:
    """BYOL image-level term + dense term weights; target EMA momentum (cosine to the end)."""

    global_weight: float = 1.0
    dense_weight: float = 1.0
    ema_start: float = 0.99
    ema_end: float = 1.0

    def validate(self, where: str = "objective") -> None:
        """Weights >= 0 (not both 0), momentum in [0, 1]."""
        if self.global_weight < 0 or self.dense_weight < 0 or (
                self.global_weight == 0 and self.dense_weight == 0):
            raise IrcrError(f"{where}: objective weights must be >= 0 and not both 0")
        if not (0 <= self.ema_start <= 1 and 0 <= self.ema_end <= 1):
            raise IrcrError(f"{where}: objective.ema_start/ema_end must be in [0, 1]")


@dataclass
class PretrainTrain:
    """Schedule and run settings (AdamW, linear warm-up then cosine lr decay).

    ``max_minutes`` (0 = off) ends a session early after that much wall time: checkpoint,
    weights and card are written (the card says ``complete: false``); ``--resume`` goes on.
    It exists for fixed GPU windows; a run cut by it is not reproducible to the iteration.
    """

    iterations: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_iterations: int = 50
    seed: int = 0
    deterministic: bool = True
    amp: Literal["auto", "bf16", "off"] = "auto"
    device: str = "auto"
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    progress: bool = True
    grad_clip: float | None = None
    max_minutes: float = 0.0

    def validate(self, where: str = "train") -> None:
        """Positive iterations and lr; non-negative counts."""
        if self.iterations < 1 or self.lr <= 0:
            raise IrcrError(f"{where}: train.iterations must be >= 1 and train.lr > 0")
        if min(self.warmup_iterations, self.checkpoint_every, self.checkpoint_minutes,
               self.max_minutes) < 0:
            raise IrcrError(f"{where}: train.warmup_iterations/checkpoint_* must be >= 0")
        if self.log_every < 1:
            raise IrcrError(f"{where}: train.log_every must be >= 1")


@dataclass
class PretrainConfig:
    """The whole ``ircr pretrain`` config (see the module docstring)."""

    target: Literal["hovernet", "maskrcnn", "cdcl"] = "hovernet"
    model: ModelConfig = field(default_factory=ModelConfig)
    densenet: CDCLNetConfig = field(default_factory=CDCLNetConfig)  # target cdcl
    backbone: Literal["resnet50", "resnet18", "tiny"] = "resnet50"
    tiny_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    heads: HeadConfig = field(default_factory=HeadConfig)
    data: PretrainData = field(default_factory=PretrainData)
    views: ViewConfig = field(default_factory=ViewConfig)
    objective: PretrainObjective = field(default_factory=PretrainObjective)
    train: PretrainTrain = field(default_factory=PretrainTrain)

    def validate(self, where: str = "config") -> None:
        """Cross-section checks: views fit in tiles, stride of the encoder."""
        if self.views.size % (8 if self.target == "hovernet" else 32):
            raise IrcrError(f"{where}: views.size must be a multiple of "
                            f"{8 if self.target == 'hovernet' else 32} for target {self.target}")
        if len(self.tiny_channels) != 4 or min(self.tiny_channels) < 1:
            raise IrcrError(f"{where}: tiny_channels must be 4 positive integers")
        if self.target == "cdcl":
            self.densenet.validate(f"{where}: densenet")
            if self.densenet.pretrained:
                raise IrcrError(f"{where}: densenet.pretrained is not used by ircr pretrain "
                                "(it starts from random weights); remove it")
        if self.model.pretrained:
            raise IrcrError(f"{where}: model.pretrained is not used by ircr pretrain "
                            "(it starts from random weights); remove it")


def pretrain_config_from_dict(data: dict[str, Any] | None, where: str) -> PretrainConfig:
    """Validated :class:`PretrainConfig` from a mapping (unknown keys are errors)."""
    return from_dict(PretrainConfig, data, where=where)


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None
                         ) -> PretrainConfig:
    """Read a YAML config (None = defaults) and apply ``key=value`` overrides."""
    data: dict[str, Any] = read_yaml(path, "pretrain config") if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return pretrain_config_from_dict(data, str(path) if path is not None else "--set")
