"""HoVer-Net (256 -> 256 'same' variant): encoder, conv_bot, NP/HV[/NC] decoder branches.

Input: float (N, 3, H, W) with values 0..255, H and W divisible by 8 (divided by 255 inside).
Output: ``{"np": (N, 2, H, W) logits, "hv": (N, 2, H, W), ["tp": (N, nr_types, H, W) logits]}``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ircr import compat
from ircr.errors import IrcrError
from ircr.models.checkpointing import set_checkpointing
from ircr.models.config import ModelConfig
from ircr.models.decoder import DecoderBranch, DenseUnit
from ircr.models.preact_resnet import Bottleneck, PreactResNet, PreactUnit, ResNetEncoder

OUTPUT_STRIDE = 8


class HoVerNet(nn.Module):
    """HoVer-Net with a pre-activation (or torchvision-layout) ResNet-50 encoder.

    Set ``model.freeze_encoder = True`` for HoVer-Net's phase 1: in training mode the encoder
    units run without autograd (their BN running statistics still update unless
    ``cfg.freeze_encoder_bn``).
    ``model.activation_checkpointing = True`` (or ``cfg.activation_checkpointing``) recomputes
    the activations of each residual / dense unit in the backward pass (training only).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder: PreactResNet | ResNetEncoder
        if cfg.encoder == "preact":
            self.encoder = PreactResNet(cfg)
        else:
            self.encoder = ResNetEncoder(cfg)
        c = self.encoder.out_channels
        self.conv_bot = nn.Conv2d(c[3], c[2], 1, bias=False)
        heads = {"np": 2, "hv": 2}
        if cfg.nr_types is not None:
            heads["tp"] = cfg.nr_types
        self.decoder = nn.ModuleDict(
            {name: DecoderBranch(cfg, c[:3], c[2], out) for name, out in heads.items()}
        )
        self._freeze_encoder = False
        self.pretrained_report: object | None = None  # set by build_model (models/pretrained)
        self.activation_checkpointing = cfg.activation_checkpointing
        init_weights(self)

    @property
    def activation_checkpointing(self) -> bool:
        """Whether units recompute their activations in the backward pass (training only)."""
        return self._checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool) -> None:
        self._checkpointing = bool(value)
        set_checkpointing(self, self._checkpointing, (PreactUnit, Bottleneck, DenseUnit))

    @property
    def freeze_encoder(self) -> bool:
        """Whether the encoder is frozen (phase 1); only effective in training mode."""
        return self._freeze_encoder

    @freeze_encoder.setter
    def freeze_encoder(self, value: bool) -> None:
        self._freeze_encoder = bool(value)
        self.train(self.training)

    def train(self, mode: bool = True) -> HoVerNet:
        """Set train/eval mode; keeps frozen-encoder BN in eval when ``cfg.freeze_encoder_bn``."""
        super().train(mode)
        if mode and self._freeze_encoder and self.cfg.freeze_encoder_bn:
            for part in self.encoder.frozen_modules():
                for m in part.modules():
                    if compat.is_batchnorm(m):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N, 3, H, W) float 0..255 -> dict of (N, C, H, W) maps."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise IrcrError(f"model input: expected (N, 3, H, W), got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE or h == 0 or w == 0:
            raise IrcrError(f"model input: H and W must be positive multiples of 8, got {h}x{w}")
        freeze = self._freeze_encoder and self.training
        d0, d1, d2, d3 = self.encoder(x / 255.0, freeze=freeze)
        bottom = self.conv_bot(d3)
        return {name: branch(d0, d1, d2, bottom) for name, branch in self.decoder.items()}


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs with zero bias; BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif (compat.is_batchnorm(m) and isinstance(m.weight, Tensor)
              and isinstance(m.bias, Tensor)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
