"""DBNet: a timm backbone, a U-Net or FPN decoder and the differentiable-binarization head.

Contract: ``build_dbnet(model_cfg) -> DBNet``; ``DBNet(images)`` returns a dict of (B, 1, H, W)
maps at the input resolution:

* ``prob_logits`` / ``prob``: the text (shrink) probability map P, before and after sigmoid;
* ``thresh``: the threshold map T (sigmoid), trained towards the [0.3, 0.7] border map;
* ``binary``: the approximate binary map B = 1 / (1 + exp(-k (P - T))), k = ``model.k`` (50).

At inference only ``prob`` is used by post-processing; ``thresh``/``binary`` exist for the loss.

* ``model.decoder: unet`` merges the backbone levels top-down with upsampling + concatenation +
  convs (the Upstage receipt baseline's shape); ``fpn`` uses torchvision's
  FeaturePyramidNetwork and concatenates every level upsampled to the finest one (DBNet paper).
* Decoder widths: ``model.inner_channels`` inside (U-Net laterals and fusions, FPN levels) and
  ``model.out_channels`` out (what the DB head reads; the last fusion / the FPN merge outputs it),
  both ``model.channels`` unless set (the receipt baseline: 256 inside, 64 out). Equal widths
  build exactly the one-width decoder of before (same modules, same initialisation).
* ``model.weights`` loads local backbone weights through timm (never a download); backbones are
  timm names, created with ``features_only``. timm loads them non-strictly, so a file that cannot
  be read or does not fill the backbone (another model's weights would leave it random without a
  word) raises ValueError naming ``model.weights`` and the file: the backbone is built by
  :func:`~sweeper.tasks.feature_maps.build_body` (for the trial's resolution: Swin/ViT take any
  input size; NHWC maps are read as NCHW) over :func:`~sweeper.tasks.backbones.create_timm_body`,
  as detection's.
* ``model.init_from`` (:mod:`sweeper.tasks.init_from`) fills the whole built DBNet; the task calls it.

Usage::

    model = build_dbnet({"backbone": "resnet18", "decoder": "unet", "inner_channels": 256,
                         "out_channels": 64, "k": 50}, resolution=640)
    out = model(torch.zeros(2, 3, 256, 256))      # out["prob"].shape == (2, 1, 256, 256)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from sweeper.tasks.feature_maps import build_body, nchw

DECODERS = ("unet", "fpn")


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """Top-down: upsample the coarser map, concatenate the skip level, two 3x3 convs; ``inner``
    wide, the last (finest) fusion's second conv ``out`` wide."""

    def __init__(self, in_channels: list[int], inner: int, out: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv(c, inner, 1) for c in in_channels)
        self.fuse = nn.ModuleList(nn.Sequential(_conv(2 * inner, inner), _conv(inner, out if i == 0 else inner))
                                  for i in range(len(in_channels) - 1))
        self.out_channels = out if self.fuse else inner

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = self.fuse[i](torch.cat([x, skip], dim=1))
        return x


class FPNDecoder(nn.Module):
    """FPN (``inner`` wide), then every level upsampled to the finest and concatenated (the DBNet
    paper's neck), merged to ``out`` channels."""

    def __init__(self, in_channels: list[int], inner: int, out: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, inner)
        per_level = max(inner // 4, 8)
        self.smooth = nn.ModuleList(_conv(inner, per_level) for _ in in_channels)
        self.merge = _conv(per_level * len(in_channels), out)
        self.out_channels = out

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        pyramid = list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())
        size = pyramid[0].shape[-2:]
        ups = [F.interpolate(s(p), size=size, mode="nearest") for s, p in zip(self.smooth, pyramid)]
        return self.merge(torch.cat(ups, dim=1))


class DBHead(nn.Module):
    """Two branches (probability, threshold): conv, then two stride-2 transposed convs back to
    full resolution when the decoder works at stride 4."""

    def __init__(self, channels: int, upscale: int) -> None:
        super().__init__()
        self.prob = self._branch(channels, upscale)
        self.thresh = self._branch(channels, upscale)

    @staticmethod
    def _branch(channels: int, upscale: int) -> nn.Sequential:
        mid = max(channels // 4, 8)
        layers: list[nn.Module] = [_conv(channels, mid)]
        steps = max(0, upscale.bit_length() - 1)  # log2(upscale) transposed convs
        for i in range(steps):
            last = i == steps - 1
            layers.append(nn.ConvTranspose2d(mid, 1 if last else mid, 2, stride=2))
            if not last:
                layers += [nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        if steps == 0:
            layers.append(nn.Conv2d(mid, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prob(x), self.thresh(x)


class DBNet(nn.Module):
    """Backbone + decoder + DB head; outputs at the input resolution."""

    def __init__(self, backbone: nn.Module, decoder: str, inner_channels: int, out_channels: int, k: float) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"model.decoder: unknown decoder {decoder!r}; known: {', '.join(DECODERS)}")
        self.backbone = backbone
        info = backbone.feature_info
        in_channels, strides = info.channels(), info.reduction()
        self.decoder = (UNetDecoder if decoder == "unet" else FPNDecoder)(in_channels, inner_channels, out_channels)
        self.head = DBHead(self.decoder.out_channels, upscale=int(strides[0]))
        self.k = float(k)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`images`: (B, 3, H, W), already normalised by the dataset (ImageNet mean/std)."""
        x = self.decoder(nchw(self.backbone, self.backbone(images)))
        prob_logits, thresh_logits = self.head(x)
        size = images.shape[-2:]
        if prob_logits.shape[-2:] != size:
            prob_logits = F.interpolate(prob_logits, size=size, mode="bilinear", align_corners=False)
            thresh_logits = F.interpolate(thresh_logits, size=size, mode="bilinear", align_corners=False)
        prob = torch.sigmoid(prob_logits)
        thresh = torch.sigmoid(thresh_logits)
        binary = torch.sigmoid(self.k * (prob - thresh))  # differentiable binarization
        return {"prob_logits": prob_logits, "prob": prob, "thresh": thresh, "binary": binary}


def build_dbnet(model_cfg: Mapping[str, Any], resolution: int | None = None) -> DBNet:
    """Build DBNet from the `model` block of a trial config, for inputs of ``resolution`` px
    (``train.resolution``; None: the backbone's own size, which only a fixed-size one has)."""
    channels = int(model_cfg.get("channels", 64))
    return DBNet(build_body(model_cfg, resolution), model_cfg.get("decoder", "unet"),
                 int(model_cfg.get("inner_channels") or channels), int(model_cfg.get("out_channels") or channels),
                 float(model_cfg.get("k", 50)))
