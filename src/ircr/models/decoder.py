"""HoVer-Net decoder branch with 'same' padding (reference-algorithms.md §2.3, §2.6).

One branch: u3 (k x k conv -> dense block -> 1x1), u2 (same), u1 (k x k conv), u0 (BN-ReLU-1x1
with bias). Nearest x2 upsampling and additive skips from the encoder. Module names mirror
HoVer-Net's (``conva``, ``dense.units.N.conv1``, ``convf``, ``u0.conv``; ``/`` -> ``_``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ircr.models.checkpointing import run_unit
from ircr.models.config import ModelConfig

GROUPS = 4


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=1e-5)


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling (HoVer-Net's fixed 2x2 unpooling)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class DenseUnit(nn.Module):
    """BN-ReLU -> 1x1 conv -> BN-ReLU -> k x k grouped conv (growth channels, 'same')."""

    def __init__(self, cin: int, bottleneck: int, growth: int, ksize: int) -> None:
        super().__init__()
        self.preact_bn = _bn(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck, 1, bias=False)
        self.conv1_bn = _bn(bottleneck)
        self.conv2 = nn.Conv2d(
            bottleneck, growth, ksize, padding=ksize // 2, groups=GROUPS, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1_bn(self.conv1(F.relu(self.preact_bn(x)))))
        return self.conv2(x)


class DenseBlock(nn.Module):
    """Dense units concatenated onto the running feature map, then BN-ReLU."""

    def __init__(self, cin: int, count: int, bottleneck: int, growth: int, ksize: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            DenseUnit(cin + i * growth, bottleneck, growth, ksize) for i in range(count)
        )
        self.out_channels = cin + count * growth
        self.blk_bna = _bn(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        for unit in self.units:
            x = torch.cat([x, run_unit(unit, x)], dim=1)
        return F.relu(self.blk_bna(x))


class DenseStage(nn.Module):
    """u3 / u2: k x k conv (cin -> mid) -> dense block -> 1x1 conv (-> cout)."""

    def __init__(self, cin: int, mid: int, cout: int, units: int, cfg: ModelConfig) -> None:
        super().__init__()
        k = cfg.decoder_kernel
        self.conva = nn.Conv2d(cin, mid, k, padding=k // 2, bias=False)
        self.dense = DenseBlock(mid, units, cfg.channels(128), cfg.channels(32), k)
        self.convf = nn.Conv2d(self.dense.out_channels, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.convf(self.dense(self.conva(x)))


class OutputStage(nn.Module):
    """u0: BN -> ReLU -> 1x1 conv with bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = _bn(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.relu(self.bn(x)))


class DecoderBranch(nn.Module):
    """One output branch (NP, HV or NC) of HoVer-Net: 256 -> 256 with 'same' padding."""

    def __init__(self, cfg: ModelConfig, skip_channels: list[int], bottom: int, out_ch: int):
        """skip_channels: channels of d0, d1, d2; bottom: channels of conv_bot's output."""
        super().__init__()
        c0, c1, _ = skip_channels
        k = cfg.decoder_kernel
        self.u3 = DenseStage(bottom, cfg.channels(256), c1, cfg.decoder_units[0], cfg)
        self.u2 = DenseStage(c1, cfg.channels(128), c0, cfg.decoder_units[1], cfg)
        self.u1 = nn.Sequential()
        self.u1.add_module("conva", nn.Conv2d(c0, cfg.channels(64), k, padding=k // 2, bias=False))
        self.u0 = OutputStage(cfg.channels(64), out_ch)

    def forward(self, d0: Tensor, d1: Tensor, d2: Tensor, bottom: Tensor) -> Tensor:
        """Encoder features at strides 1, 2, 4 and conv_bot(d3) at stride 8 -> (N, out, H, W)."""
        x = self.u3(upsample2x(bottom) + d2)
        x = self.u2(upsample2x(x) + d1)
        x = self.u1(upsample2x(x) + d0)
        return self.u0(x)
