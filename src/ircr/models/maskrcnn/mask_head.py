"""The BASS mask head: NMH (28x28) + LRD (14x14 -> 28x28) + CRC (28x28) + 1x1 fusion.

Shapes (R = RoIs, C = FPN channels):

* input ``mask_feats`` (R, C, 14, 14) from a 14x14 RoIAlign, ``crc_feats`` (R, C, 28, 28) from a
  separate 28x28 RoIAlign on the same FPN levels (only when ``crc`` is active);
* shared trunk: 3 x (3x3 conv ``mask_channels``, ReLU) on the 14x14 features;
* NMH: 3x3 conv + ReLU -> 2x2 stride-2 deconv + ReLU -> 3x3 conv -> (R, 1, 28, 28) logits;
* LRD: 2 x (3x3 conv + ReLU) -> 1x1 conv -> (R, 1, 14, 14) logits ("coarse", supervised at
  14x14) -> 2x2 stride-2 deconv (1 -> 1) -> (R, 1, 28, 28);
* CRC (:class:`PixelContrastiveHead`): encoder 3 x (3x3 conv 64, ReLU) on the 28x28 features;
  projector 1x1 conv + BN + ReLU then a per-pixel Linear + ReLU -> (R, 64, 28, 28) embeddings
  (no L2 normalisation; the loss uses cosine similarity); mask logits 1x1 conv 64 -> 32, ReLU
  (our choice: the released code's two 1x1 convs would otherwise be one linear map), 1x1 conv
  32 -> 1 -> (R, 1, 28, 28);
* fusion: the active branches' 28x28 logits in the order NMH, LRD, CRC concatenated ->
  1x1 conv (n -> 1), initialised to their mean (weights 1/n, bias 0). One active branch is
  used as is (no fusion); ``[nmh]`` is a plain Mask R-CNN head (the BASS teacher, with a 3x3
  instead of mmdetection's 1x1 final conv).

:meth:`BassMaskHead.forward` returns a dict: ``"mask"`` (R, 1, 28, 28) final logits, ``"lrd"``
(R, 1, 14, 14) when LRD is active, ``"embed"`` (R, 64, 28, 28) when CRC is active and
``with_embed`` is true (training).
"""

from __future__ import annotations

import torch
from torch import nn

from ircr.models.maskrcnn.config import MASK_BRANCHES

__all__ = ["BassMaskHead", "PixelContrastiveHead"]


def _convs(cin: int, cout: int, n: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return layers


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PixelContrastiveHead(nn.Module):
    """CRC: per-pixel encoder, projector (embeddings) and 28x28 mask logits."""

    def __init__(self, in_channels: int, channels: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*_convs(in_channels, channels, 3))
        self.proj_conv = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.proj_linear = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True))
        half = max(1, channels // 2)
        self.logits = nn.Sequential(
            nn.Conv2d(channels, half, 1), nn.ReLU(inplace=True), nn.Conv2d(half, 1, 1)
        )
        _init(self)

    def forward(
        self, x: torch.Tensor, with_embed: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R, C, S, S) -> logits (R, 1, S, S), embeddings (R, channels, S, S) or None."""
        feat = self.encoder(x)
        logits = self.logits(feat)
        if not with_embed:
            return logits, None
        emb = self.proj_conv(feat)
        emb = self.proj_linear(emb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return logits, emb


class BassMaskHead(nn.Module):
    """NMH + LRD + CRC mask branches with a 1x1 fusion (see the module docstring)."""

    def __init__(
        self, in_channels: int, channels: int, branches: list[str], crc_channels: int = 64
    ) -> None:
        super().__init__()
        self.branches = [b for b in MASK_BRANCHES if b in branches]  # fixed fusion order
        self.trunk = (
            nn.Sequential(*_convs(in_channels, channels, 3))
            if "nmh" in self.branches or "lrd" in self.branches else None
        )
        self.nmh = None
        if "nmh" in self.branches:
            self.nmh = nn.Sequential(
                *_convs(channels, channels, 1),
                nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True),
                nn.Conv2d(channels, 1, 3, padding=1),
            )
        self.lrd = self.lrd_up = None
        if "lrd" in self.branches:
            self.lrd = nn.Sequential(*_convs(channels, channels, 2), nn.Conv2d(channels, 1, 1))
            self.lrd_up = nn.ConvTranspose2d(1, 1, 2, stride=2)
        self.crc = (PixelContrastiveHead(in_channels, crc_channels)
                    if "crc" in self.branches else None)
        _init(self)
        n = len(self.branches)
        self.fusion = nn.Conv2d(n, 1, 1) if n > 1 else None
        if self.fusion is not None:
            nn.init.constant_(self.fusion.weight, 1.0 / n)
            nn.init.zeros_(self.fusion.bias)  # type: ignore[arg-type]

    @property
    def needs_crc_features(self) -> bool:
        """True when :meth:`forward` needs the 28x28 RoI features."""
        return self.crc is not None

    def forward(
        self, mask_feats: torch.Tensor, crc_feats: torch.Tensor | None = None,
        with_embed: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Mask logits of R RoIs; see the module docstring for the keys and shapes."""
        out: dict[str, torch.Tensor] = {}
        maps: dict[str, torch.Tensor] = {}
        trunk = self.trunk(mask_feats) if self.trunk is not None else None
        if self.nmh is not None:
            maps["nmh"] = self.nmh(trunk)
        if self.lrd is not None and self.lrd_up is not None:
            out["lrd"] = self.lrd(trunk)
            maps["lrd"] = self.lrd_up(out["lrd"])
        if self.crc is not None:
            if crc_feats is None:
                raise ValueError("BassMaskHead: the CRC branch needs the 28x28 RoI features")
            maps["crc"], emb = self.crc(crc_feats, with_embed=with_embed)
            if emb is not None:
                out["embed"] = emb
        stacked = torch.cat([maps[b] for b in self.branches], dim=1)
        out["mask"] = self.fusion(stacked) if self.fusion is not None else stacked
        return out
