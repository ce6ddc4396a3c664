"""CDCL's segmentation network (Wu et al., CVPR 2022; reference-algorithms §8.2).

DenseNet-161 encoder (torchvision's ``DenseNet``; ``growth_rate 48, num_init_features 96,
block_config (6, 12, 36, 24)`` is exactly ``torchvision.models.densenet161``), a U-Net-like
decoder of three upsampling blocks, a 2-class semantic classifier and a projector for the dense
contrastive loss.

torchvision is imported when a network is built (not on import: HoVer-Net paths work without
it). Input and outputs:

* Input: (N, 3, H, W) float32, values 0..255, RGB, any H, W >= 1 (reflect-padded inside to a
  multiple of 32 and the outputs cropped back); ImageNet mean/std normalisation inside.
* Encoder features: denseblock1 (stride 4), denseblock2 (stride 8), denseblock3 (stride 16),
  norm5 + ReLU (stride 32): 384, 768, 2112, 2208 channels at paper depth.
* Decoder block ``i``: bilinear x2 up to the skip's size, add the skip projected by a 1x1 conv
  to the incoming channels, 3x3 conv -> BN -> ReLU to ``decoder_channels[i]``
  (2208 -> 768 -> 384 -> 256 at stride 4 in the paper).
* Classifier: 3x3 conv -> 64, dropout2d(0.3) (training mode only: the released code applies it
  in eval mode too, a defect not copied), BN -> ReLU, 1x1 conv -> 2 logits, bilinearly
  upsampled to the input size.
* Projector: optional 2x2 average pool, 1x1 conv -> ReLU -> 1x1 conv, L2-normalised per pixel.

Output: ``{"np": (N, 2, H, W) logits, "emb": (N, D, h, w) unit vectors}`` (h = H/4, or H/8 with
``proj_pool``); ``forward(x, embed=False)`` skips the projector (inference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ircr.compat import torchvision_problem
from ircr.config import bounded
from ircr.errors import IrcrError
from ircr.models.pretrained import (
    PRETRAIN_FORMAT,
    PretrainedReport,
    check_arch,
    is_pretrain_output,
    pretrain_detail,
    read_pretrain_file,
    read_state_dict,
)

__all__ = ["CDCLNet", "CDCLNetConfig", "build_cdcl_net", "load_densenet_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNSAMPLE = 32


@dataclass
class CDCLNetConfig:
    """Architecture of the CDCL network (``method.model`` of a cdcl config, ``model:`` of its
    model folder). Defaults = the paper's DenseNet-161 network.

    Attributes:
        growth_rate, num_init_features, bn_size: torchvision DenseNet arguments (161: 48, 96,
            4); smaller values give a narrow network of the same depth (CPU tests).
        block_config: dense layers per block (161: [6, 12, 36, 24]).
        decoder_channels: output channels of the three decoder blocks ([768, 384, 256]).
        head_channels: hidden channels of the classifier (64).
        dropout: dropout2d probability of the classifier (0.3), training mode only.
        proj_dim: projector output dimension (our choice: 128; the paper gives none).
        proj_pool: 2x2 average pool before the projector (embeddings at stride 8).
        pretrained: local torchvision DenseNet weights file (ImageNet ``densenet161-*.pth``),
            a state dict of this network, or an ``ircr pretrain`` output (``target: cdcl``);
            None = from scratch. Nothing is downloaded.
    """

    growth_rate: int = bounded(48, 1, 512)
    num_init_features: int = bounded(96, 1, 1024)
    bn_size: int = bounded(4, 1, 16)
    block_config: list[int] = bounded(None, 1, 128, factory=lambda: [6, 12, 36, 24])
    decoder_channels: list[int] = bounded(None, 1, 4096, factory=lambda: [768, 384, 256])
    head_channels: int = bounded(64, 1, 4096)
    dropout: float = bounded(0.3, 0, 1, hi_open=True)
    proj_dim: int = bounded(128, 1, 4096)
    proj_pool: bool = False
    pretrained: str | None = None

    def validate(self, where: str = "config") -> None:
        """One-line IrcrError for list lengths (ranges are checked by ``from_dict``)."""
        if len(self.block_config) != 4:
            raise IrcrError(f"{where}: config key 'model.block_config' must list 4 dense "
                            f"blocks, got {len(self.block_config)}")
        if len(self.decoder_channels) != 3:
            raise IrcrError(f"{where}: config key 'model.decoder_channels' must list 3 decoder "
                            f"blocks, got {len(self.decoder_channels)}")

    def arch(self) -> dict[str, Any]:
        """What encoder weights depend on (for refusing mismatched pretrained files)."""
        return {"family": "cdcl", "growth_rate": self.growth_rate,
                "num_init_features": self.num_init_features,
                "block_config": list(self.block_config)}


def encoder_channels(cfg: CDCLNetConfig) -> list[int]:
    """Channels of denseblock1..3 and norm5 outputs (161: [384, 768, 2112, 2208])."""
    out, c = [], cfg.num_init_features
    for i, n in enumerate(cfg.block_config):
        c = c + n * cfg.growth_rate
        out.append(c)
        if i < 3:
            c = c // 2  # transition halves the channels
    return out


class DenseEncoder(nn.Module):
    """torchvision DenseNet ``features``; returns the four stage outputs (strides 4..32)."""

    def __init__(self, cfg: CDCLNetConfig) -> None:
        super().__init__()
        problem = torchvision_problem()  # imported here only: HoVer-Net works without it
        if problem is not None:
            raise IrcrError(f"CDCL models need torchvision (DenseNet-161): {problem}")
        from torchvision.models import DenseNet

        net = DenseNet(growth_rate=cfg.growth_rate, block_config=tuple(cfg.block_config),
                       num_init_features=cfg.num_init_features, bn_size=cfg.bn_size)
        self.features = net.features  # classifier of the ImageNet net is dropped

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (N, 3, H, W) normalised, H, W multiples of 32 -> [s4, s8, s16, s32] maps."""
        outs: list[Tensor] = []
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in ("denseblock1", "denseblock2", "denseblock3"):
                outs.append(x)
        outs.append(F.relu(x))  # after norm5, as torchvision's DenseNet.forward
        return outs


class UpBlock(nn.Module):
    """Bilinear x2, add the 1x1-projected skip, 3x3 conv -> BN -> ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(skip_ch, in_ch, 1)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x (N, in, h, w), skip (N, skip, 2h, 2w) -> (N, out, 2h, 2w)."""
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(x + self.skip(skip))))


class CDCLNet(nn.Module):
    """DenseNet encoder + U-Net-like decoder + 2-class classifier + projector."""

    pretrained_report: PretrainedReport | None = None  # set when encoder weights were loaded

    def __init__(self, cfg: CDCLNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = encoder_channels(cfg)
        dec = list(cfg.decoder_channels)
        self.encoder = DenseEncoder(cfg)
        self.up = nn.ModuleList([UpBlock(enc[3], enc[2], dec[0]), UpBlock(dec[0], enc[1], dec[1]),
                                 UpBlock(dec[1], enc[0], dec[2])])
        self.head_conv = nn.Conv2d(dec[2], cfg.head_channels, 3, padding=1, bias=False)
        self.head_bn = nn.BatchNorm2d(cfg.head_channels)
        self.head_out = nn.Conv2d(cfg.head_channels, 2, 1)
        self.proj = nn.Sequential(nn.Conv2d(dec[2], dec[2], 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(dec[2], cfg.proj_dim, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def decode(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) 0..255, H, W multiples of 32 -> (N, dec[2], H/4, W/4) features."""
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        s4, s8, s16, s32 = self.encoder((x - mean) / std)
        d = self.up[0](s32, s16)
        d = self.up[1](d, s8)
        return self.up[2](d, s4)

    def forward(self, x: Tensor, embed: bool = True) -> dict[str, Tensor]:
        """x: (N, 3, H, W) float 0..255 -> {"np": (N, 2, H, W), "emb": (N, D, h, w)}."""
        h, w = x.shape[-2:]
        ph, pw = -h % DOWNSAMPLE, -w % DOWNSAMPLE
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        feat = self.decode(x)
        z = self.head_conv(feat)
        z = F.dropout2d(z, p=self.cfg.dropout, training=self.training)
        logits = self.head_out(F.relu(self.head_bn(z)))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = {"np": logits[..., :h, :w]}
        if embed:
            e = F.avg_pool2d(feat, 2) if self.cfg.proj_pool else feat
            e = F.normalize(self.proj(e).float(), dim=1)
            stride = 8 if self.cfg.proj_pool else 4
            out["emb"] = e[..., : -(-h // stride), : -(-w // stride)]
        return out


_OLD_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\."
                            r"(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _torchvision_to_model(key: str) -> str:
    """``features.denseblock1.denselayer1.norm.1.weight`` -> ``encoder.features.denseblock1
    .denselayer1.norm1.weight`` (old and current torchvision layouts)."""
    m = _OLD_LAYER_KEY.match(key)
    if m:
        key = m.group(1) + m.group(2)
    return "encoder." + key


def load_densenet_weights(model: CDCLNet, path: str | Path) -> PretrainedReport:
    """Load encoder weights: torchvision DenseNet layout, this network's own state dict, or an
    ``ircr pretrain`` output of ``target: cdcl`` (folder or its ``encoder.pt``).

    Returns what was loaded (printed by the trainer). Raises :class:`IrcrError` (naming the
    file) for a missing/unreadable file, an ``ircr pretrain`` output of another architecture
    (HoVer-Net, Mask R-CNN, another DenseNet width), a tensor whose shape differs, or a file
    that lacks encoder tensors.
    """
    p = Path(path)
    layout, detail = "torchvision", ""
    if is_pretrain_output(p):  # `ircr pretrain` with target cdcl: same architecture only
        f, meta, state = read_pretrain_file(p)
        check_arch(f, meta["arch"], model.cfg.arch())
        p, layout, detail = f, PRETRAIN_FORMAT, pretrain_detail(meta)
    else:
        state = read_state_dict(p)
        if any(k.startswith("encoder.") for k in state):
            layout = "ircr"
    own = model.state_dict()
    wanted = {k for k in own if k.startswith("encoder.")}
    to_load: dict[str, Tensor] = {}
    for fkey, value in state.items():
        mkey = fkey if fkey.startswith("encoder.") else _torchvision_to_model(fkey)
        if mkey not in wanted:
            continue  # the ImageNet classifier, or decoder tensors of a full state dict
        if tuple(value.shape) != tuple(own[mkey].shape):
            raise IrcrError(f"{p}: tensor '{fkey}' has shape {tuple(value.shape)} but the model "
                            f"expects {tuple(own[mkey].shape)} (another growth_rate, "
                            "num_init_features or block_config?)")
        to_load[mkey] = value.to(own[mkey].dtype)
    missing = sorted(k for k in wanted - set(to_load) if not k.endswith("num_batches_tracked"))
    if not to_load or missing:
        raise IrcrError(f"{p}: not DenseNet weights of this encoder ({len(to_load)} tensors "
                        f"fit, {len(missing)} missing"
                        + (f", e.g. '{missing[0]}')" if missing else ")"))
    model.load_state_dict(to_load, strict=False)
    unexpected = sorted(k for k in state if k not in to_load
                        and _torchvision_to_model(k) not in to_load)
    return PretrainedReport(p, layout, sorted(to_load), [], unexpected, detail=detail)


def build_cdcl_net(cfg: CDCLNetConfig, load_pretrained: bool = True) -> CDCLNet:
    """The network of ``cfg`` (torchvision init), with ``cfg.pretrained`` loaded when set and
    ``load_pretrained`` (False for model folders: their weights replace every tensor)."""
    model = CDCLNet(cfg)
    if load_pretrained and cfg.pretrained:  # the report is printed by the trainer
        model.pretrained_report = load_densenet_weights(model, cfg.pretrained)
    return model
