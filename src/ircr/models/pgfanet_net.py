"""PG-FANet (Jin et al., ESWA 2024): a two-stage dilated ResNet-34 with multi-scale and
multi-stage fusion and a 3-class output (0 background, 1 nucleus interior, 2 boundary).

Reference-algorithms.md §8.3. Shapes for an (N, 3, H, W) input (H, W multiples of 8):

* **Stage 1**: a ResNet-34 (BasicBlock, [3, 4, 6, 3]) dilated to output stride 8: the stem
  (7x7/2 conv-BN-ReLU, "layer0", H/2) then 3x3/2 max-pool, layer1 (H/4), layer2 (H/8), layer3
  and layer4 without stride (their first strided conv gets stride 1 and dilation d/2, every
  other 3x3 conv dilation d, d = 2 and 4; the 1x1 shortcut projections lose their stride).
  An ASPP classifier (four 3x3 convs with dilations 6/12/18/24, summed) on layer4 gives the
  coarse logits (H/8).
* **Stage-1 output** (auxiliary): the coarse logits bilinearly upsampled to H x W and a 1x1
  conv (``aux_out``); the student's feature perturbations act on the upsampled logits before
  that conv.
* **Prior mask**: argmax of the coarse logits upsampled to H/2; every class >= 1 -> 1.
  Concatenated with layer0 (C0 + 1 channels) -> 1x1 conv -> C0 -> 3x3/2 max-pool -> the
  stage-2 ResNet layers 1-4 (no stem of its own) -> a second ASPP classifier (H/8).
* **Multi-scale fusion**: layers 1-3 of both stages reduced to F channels (1x1 conv-BN-
  PReLU), bilinearly upsampled to H/4, summed, 1x1 conv-BN-PReLU.
* **Multi-stage fusion**: layer4 of both stages reduced to F, upsampled to H/4, added.
* **Head**: concat(fused (F), stage-2 logits upsampled to H/4) -> [Dropout2d 0.5 when
  perturbed] -> 1x1 conv -> bilinear upsample to H x W (``seg``).

Widths: ``width`` scales every channel count (64/128/256/512 of ResNet-34, F = 32); 1.0 is
the paper's network, a narrow width keeps the depth for CPU tests. Input: float 0..255 RGB,
normalised inside with the ImageNet mean/std (so ImageNet ResNet-34 weights fit at width 1).
Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layerN.i.conv1``,
``layerN.0.downsample``), so a torchvision ResNet-34 state dict loads into both backbones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ircr.config import bounded
from ircr.errors import IrcrError

N_CLASSES = 3  # background, interior, boundary
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPP_DILATIONS = (6, 12, 18, 24)


@dataclass
class PGFANetConfig:
    """Architecture of PG-FANet (the ``pgfanet`` model family's ``model:`` mapping).

    Attributes:
        width: channel multiplier of both backbones and the fusion (1.0 = the paper).
        fusion_channels: channels of the multi-scale / multi-stage fusion at width 1 (32).
        pretrained: a torchvision ResNet-34 state dict (``.pth``) loaded into both backbones
            before training (ImageNet, as the paper); None = random init. Width 1 only.
    """

    width: float = bounded(1.0, 0.01, 4.0)
    fusion_channels: int = bounded(32, 1, 4096)
    pretrained: Path | None = None


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_resnet34_weights` loaded (the trainer prints ``summary()``)."""

    text: str

    def summary(self) -> str:
        """One line: the file and the tensors loaded per backbone."""
        return self.text


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class BasicBlock(nn.Module):
    """ResNet BasicBlock with a dilation for each 3x3 conv (torchvision layout)."""

    def __init__(self, cin: int, cout: int, stride: int, dil1: int, dil2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dil1, dilation=dil1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dil2, dilation=dil2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        """(N, cin, H, W) -> (N, cout, H/stride, W/stride)."""
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


def _layer(cin: int, cout: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """One ResNet stage; ``dilation`` > 1 replaces its stride (output stride 8)."""
    if dilation == 1:
        first = BasicBlock(cin, cout, stride, 1, 1)
    else:  # the strided conv keeps dilation d/2 without stride, the rest dilation d
        first = BasicBlock(cin, cout, 1, max(1, dilation // 2), dilation)
    rest = [BasicBlock(cout, cout, 1, dilation, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)


class DilatedResNet34(nn.Module):
    """ResNet-34 at output stride 8 (layer3 dilation 2, layer4 dilation 4); optional stem."""

    def __init__(self, width: float, stem: bool = True) -> None:
        super().__init__()
        c = [_ch(v, width) for v in (64, 128, 256, 512)]
        self.channels = c
        if stem:
            self.conv1 = nn.Conv2d(3, c[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(c[0])
        self.layer1 = _layer(c[0], c[0], 3, 1, 1)
        self.layer2 = _layer(c[0], c[1], 4, 2, 1)
        self.layer3 = _layer(c[1], c[2], 6, 2, 2)
        self.layer4 = _layer(c[2], c[3], 3, 2, 4)

    def stem(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised -> layer0 (N, C0, H/2, W/2)."""
        return F.relu(self.bn1(self.conv1(x)))

    def layers(self, x: Tensor) -> list[Tensor]:
        """Max-pooled layer0 (N, C0, H/2, W/2) -> [layer1 (H/4), layer2..4 (H/8)]."""
        out = []
        x = F.max_pool2d(x, 3, 2, 1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out


class ASPPClassifier(nn.Module):
    """Sum of four 3x3 convs with dilations 6/12/18/24 (bias) -> class logits."""

    def __init__(self, cin: int, n_classes: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(cin, n_classes, 3, 1, padding=d, dilation=d)
                                      for d in ASPP_DILATIONS)

    def forward(self, x: Tensor) -> Tensor:
        """(N, cin, h, w) -> (N, n_classes, h, w) logits."""
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out


def conv_bn_prelu(cin: int, cout: int) -> nn.Sequential:
    """1x1 conv (no bias) - BN - PReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.PReLU(cout))


def _up(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def feature_dropout(x: Tensor, lo: float = 0.7, hi: float = 0.9) -> Tensor:
    """Zero the pixels whose channel-mean "attention" is >= t·max (t ~ U(lo, hi), per image).

    Args:
        x: (N, C, H, W); returns the same shape. Randomness: torch's global generator.
    """
    att = x.mean(dim=1, keepdim=True)
    peak = att.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    t = lo + (hi - lo) * torch.rand((), device=x.device)
    return x * (att < peak * t).to(x.dtype)


def feature_noise(x: Tensor, amplitude: float = 0.3) -> Tensor:
    """x + x·n with n ~ U(−a, a) of shape (1, C, H, W), shared by the batch."""
    noise = (torch.rand(x.shape[1:], device=x.device) * 2 - 1) * amplitude
    return x + x * noise.unsqueeze(0).to(x.dtype)


class PGFANet(nn.Module):
    """The two-stage network; ``forward`` returns {"seg", "aux"} (N, 3, H, W) logits."""

    def __init__(self, cfg: PGFANetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pretrained_report: WeightsReport | None = None
        self.stage1 = DilatedResNet34(cfg.width, stem=True)
        self.stage2 = DilatedResNet34(cfg.width, stem=False)
        c = self.stage1.channels
        f = _ch(cfg.fusion_channels, cfg.width)
        self.pred1 = ASPPClassifier(c[3], N_CLASSES)
        self.pred2 = ASPPClassifier(c[3], N_CLASSES)
        self.prior_fuse = nn.Conv2d(c[0] + 1, c[0], 1, bias=False)
        self.scale_reduce = nn.ModuleList(conv_bn_prelu(c[i], f) for i in (0, 0, 1, 1, 2, 2))
        self.scale_fuse = conv_bn_prelu(f, f)
        self.stage_reduce = nn.ModuleList(conv_bn_prelu(c[3], f) for _ in range(2))
        self.head = nn.Conv2d(f + N_CLASSES, N_CLASSES, 1)
        self.aux_out = nn.Conv2d(N_CLASSES, N_CLASSES, 1)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255,
                             persistent=False)

    def forward(self, x: Tensor, perturb: bool = False) -> dict[str, Tensor]:
        """x: (N, 3, H, W) float 0..255 (H, W multiples of 8).

        ``perturb`` (the student on unlabelled data): Dropout2d 0.5 on the head's input and,
        each with probability 0.5, :func:`feature_dropout` and :func:`feature_noise` on the
        upsampled stage-1 logits.

        Returns:
            {"seg": final logits, "aux": stage-1 logits}, each (N, 3, H, W) float.
        """
        size = x.shape[2:]
        layer0 = self.stage1.stem((x - self.mean) / self.std)
        s1 = self.stage1.layers(layer0)
        coarse = self.pred1(s1[3])
        aux = _up(coarse, size)
        if perturb:
            if bool(torch.rand(()) < 0.5):
                aux = feature_dropout(aux)
            if bool(torch.rand(()) < 0.5):
                aux = feature_noise(aux)
        aux = self.aux_out(aux)
        prior = (_up(coarse, layer0.shape[2:]).argmax(dim=1, keepdim=True) >= 1).to(x.dtype)
        s2 = self.stage2.layers(self.prior_fuse(torch.cat([layer0, prior.to(layer0.dtype)],
                                                          dim=1)))
        q = s1[0].shape[2:]
        feats = (s1[0], s2[0], s1[1], s2[1], s1[2], s2[2])
        fused = sum((_up(r(t), q) for r, t in zip(self.scale_reduce, feats, strict=True)),
                    torch.zeros((), device=x.device))
        fused = self.scale_fuse(fused)
        for reduce, deep in zip(self.stage_reduce, (s1[3], s2[3]), strict=True):
            fused = fused + _up(reduce(deep), q)
        cf = torch.cat([fused, _up(self.pred2(s2[3]), q)], dim=1)
        if perturb:
            cf = F.dropout2d(cf, 0.5, training=True)
        return {"seg": _up(self.head(cf), size), "aux": aux}


def load_resnet34_weights(model: PGFANet, path: Path) -> WeightsReport:
    """Load a torchvision ResNet-34 state dict into both backbones (stage 2 has no stem).

    Returns:
        the report (tensors loaded per backbone).
    Raises:
        IrcrError: unreadable file or shapes that do not match (width != 1).
    """
    from ircr.models.pretrained import read_state_dict

    state = read_state_dict(path)
    loaded = []
    for backbone in (model.stage1, model.stage2):
        own = backbone.state_dict()
        take = {k: v for k, v in state.items() if k in own}
        bad = [k for k, v in take.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise IrcrError(f"{path}: tensor '{bad[0]}' has shape {tuple(take[bad[0]].shape)}, "
                            f"the network needs {tuple(own[bad[0]].shape)} (method.net.width must "
                            "be 1 for ResNet-34 weights)")
        if not take:
            raise IrcrError(f"{path}: no tensor of a torchvision ResNet-34 found")
        backbone.load_state_dict(take, strict=False)
        loaded.append(len(take))
    return WeightsReport(f"ResNet-34 weights from {path}: {loaded[0]} tensors (stage 1) + "
                         f"{loaded[1]} (stage 2)")


def build_pgfanet(cfg: PGFANetConfig, load_pretrained: bool = True) -> PGFANet:
    """PG-FANet of ``cfg`` (Kaiming init of convs), with ``cfg.pretrained`` loaded if set."""
    model = PGFANet(cfg)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for aspp in (model.pred1, model.pred2):  # DeepLab-v2 classifier init: N(0, 0.01)
        for conv in aspp.branches.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, 0.0, 0.01)
    if load_pretrained and cfg.pretrained is not None:  # the trainer prints the report
        model.pretrained_report = load_resnet34_weights(model, cfg.pretrained)
    return model
