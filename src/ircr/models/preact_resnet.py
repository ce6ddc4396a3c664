"""ResNet-50 encoders with a stride-1 stem and no max-pool (output stride 8).

Two layouts, both returning the four group outputs d0..d3 at strides 1, 2, 4, 8:

* :class:`PreactResNet`: HoVer-Net's pre-activation ResNet ('fast' mode: TF-'same' padding),
  reference-algorithms.md §2.2. Module names mirror HoVer-Net's checkpoint keys with ``/``
  replaced by ``_`` (see :mod:`ircr.models.pretrained` for the exact mapping).
* :class:`ResNetEncoder`: torchvision-layout post-activation ResNet (CoNIC baseline, §2.6):
  ``conv1`` 7x7 stride 1 pad 3, the max-pool skipped; module names equal torchvision's
  state-dict keys (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...).

Freezing (§2.4): ``forward(x, freeze=True)`` runs the frozen parts without autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ircr.models.checkpointing import run_unit
from ircr.models.config import ModelConfig

EXPANSION = 4
GROUP_MID = (64, 128, 256, 512)
GROUP_STRIDE = (1, 2, 2, 2)


def tf_same_pad(x: Tensor, ksize: int, stride: int) -> Tensor:
    """Zero-pad (N, C, H, W) like TensorFlow 'same' (extra pixel after, i.e. bottom/right)."""

    def amount(n: int) -> tuple[int, int]:
        out = -(-n // stride)
        total = max((out - 1) * stride + ksize - n, 0)
        return total // 2, total - total // 2

    top, bottom = amount(int(x.shape[-2]))
    left, right = amount(int(x.shape[-1]))
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=1e-5)


class PreactUnit(nn.Module):
    """Pre-activation bottleneck: [BN-ReLU] 1x1 -> BN-ReLU 3x3 (stride) -> BN-ReLU 1x1."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, preact: bool) -> None:
        super().__init__()
        self.stride = stride
        self.preact_bn = _bn(cin) if preact else None
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.conv1_bn = _bn(mid)
        pad = 0 if stride > 1 else 1  # stride 2: asymmetric TF-'same' pad in forward
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=pad, bias=False)
        self.conv2_bn = _bn(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.preact_bn is not None:
            x = F.relu(self.preact_bn(x))
        x = F.relu(self.conv1_bn(self.conv1(x)))
        if self.stride > 1:
            x = tf_same_pad(x, 3, self.stride)
        x = F.relu(self.conv2_bn(self.conv2(x)))
        return self.conv3(x)


class PreactGroup(nn.Module):
    """A group d_i: units with residual adds, a 1x1 projection shortcut, final BN-ReLU."""

    def __init__(self, cin: int, mid: int, count: int, stride: int) -> None:
        super().__init__()
        cout = mid * EXPANSION
        self.units = nn.ModuleList(
            PreactUnit(cin if i == 0 else cout, mid, cout, stride if i == 0 else 1, preact=i > 0)
            for i in range(count)
        )
        needs_proj = cin != cout or stride != 1
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if needs_proj else None
        self.blk_bna = _bn(cout)

    def forward(self, x: Tensor, freeze_units: bool = False) -> Tensor:
        """``freeze_units``: run the units without autograd (adds and shortcut keep it)."""
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        feat = x
        for unit in self.units:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_units):
                new = run_unit(unit, feat)
            feat = new + shortcut
            shortcut = feat
        return F.relu(self.blk_bna(feat))


class PreactResNet(nn.Module):
    """HoVer-Net pre-activation ResNet encoder ('fast': 256 -> 256/128/64/32)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        stem = cfg.channels(64)
        self.conv0 = nn.Sequential()
        self.conv0.add_module("conv", nn.Conv2d(3, stem, 7, stride=1, padding=3, bias=False))
        self.conv0.add_module("bn", _bn(stem))
        cin = stem
        self.out_channels: list[int] = []
        groups = []
        for mid_base, stride, count in zip(GROUP_MID, GROUP_STRIDE, cfg.blocks):
            mid = cfg.channels(mid_base)
            groups.append(PreactGroup(cin, mid, count, stride))
            cin = mid * EXPANSION
            self.out_channels.append(cin)
        self.d0, self.d1, self.d2, self.d3 = groups

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that get no gradient while frozen (d0 units, d1-d3)."""
        return [self.d0.units, self.d1, self.d2, self.d3]

    def forward(self, x: Tensor, freeze: bool = False) -> list[Tensor]:
        """x: (N, 3, H, W) in [0, 1] -> [d0, d1, d2, d3] at strides 1, 2, 4, 8."""
        x = F.relu(self.conv0(x))
        d0 = self.d0(x, freeze_units=freeze)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze):
            d1 = self.d1(d0)
            d2 = self.d2(d1)
            d3 = self.d3(d2)
        return [d0, d1, d2, d3]


class Bottleneck(nn.Module):
    """torchvision-layout post-activation bottleneck (stride on the 3x3 conv)."""

    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * EXPANSION
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = _bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """torchvision-layout ResNet-50 body: stride-1 7x7 stem, no max-pool, layer1..layer4."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        stem = cfg.channels(64)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=1, padding=3, bias=False)
        self.bn1 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        self.out_channels: list[int] = []
        layers = []
        for mid_base, stride, count in zip(GROUP_MID, GROUP_STRIDE, cfg.blocks):
            mid = cfg.channels(mid_base)
            blocks = [
                Bottleneck(cin if j == 0 else mid * EXPANSION, mid, stride if j == 0 else 1)
                for j in range(count)
            ]
            layers.append(nn.Sequential(*blocks))
            cin = mid * EXPANSION
            self.out_channels.append(cin)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def frozen_modules(self) -> list[nn.Module]:
        """Everything is frozen in phase 1 (CoNIC baseline): the whole encoder."""
        return [self]

    def forward(self, x: Tensor, freeze: bool = False) -> list[Tensor]:
        """x: (N, 3, H, W) in [0, 1] -> [layer1..layer4] at strides 1, 2, 4, 8."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze):
            x = self.relu(self.bn1(self.conv1(x)))
            feats = []
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                for block in layer:
                    x = run_unit(block, x)
                feats.append(x)
        return feats
