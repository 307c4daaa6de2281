"""RFDN (Liu et al. 2020): residual feature distillation blocks with enhanced spatial attention, 1-channel I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mdrn_edge.models.config import ArchConfig


@dataclass(frozen=True)
class RFDNConfig(ArchConfig):
    num_feat: int = 50
    num_block: int = 4


class ESA(nn.Module):
    """Enhanced spatial attention: a strided, max-pooled branch gives a large receptive field cheaply."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        f = num_feat // 4
        self.conv1 = nn.Conv2d(num_feat, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, num_feat, 1)
        self.pool = nn.MaxPool2d(kernel_size=7, stride=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v = F.relu(self.conv_max(self.pool(c1)))
        c3 = self.conv3_(F.relu(self.conv3(v)))
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class RFDB(nn.Module):
    """Three distill/refine steps (1x1 distillation, shallow residual 3x3 refinement), fusion, ESA."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        dc = num_feat // 2
        self.distill = nn.ModuleList(nn.Conv2d(num_feat, dc, 1) for _ in range(3))
        self.refine = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, padding=1) for _ in range(3))
        self.last = nn.Conv2d(num_feat, dc, 3, padding=1)
        self.fuse = nn.Conv2d(4 * dc, num_feat, 1)
        self.esa = ESA(num_feat)
        self.act = nn.LeakyReLU(0.05, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled, r = [], x
        for d, refine in zip(self.distill, self.refine):
            distilled.append(self.act(d(r)))
            r = self.act(refine(r) + r)
        return self.esa(self.fuse(torch.cat([*distilled, self.act(self.last(r))], dim=1)))


class RFDN(nn.Module):
    """Head conv, residual feature distillation blocks aggregated by a 1x1 conv, pixel-shuffle upsampling."""

    Config = RFDNConfig
    BYTES_PER_LR_PIXEL = 2899  # measured like MDRN's (benchmarks/arch_memory.py)
    FP32_LAYERS = None  # no FP16-unsafe reductions

    def __init__(self, cfg: RFDNConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = self.config = RFDNConfig.from_dict({**(cfg.to_dict() if cfg else {}), **overrides})
        scale, in_channels, num_feat, num_block = cfg.scale, cfg.in_channels, cfg.num_feat, cfg.num_block
        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, padding=1)
        self.body = nn.ModuleList(RFDB(num_feat) for _ in range(num_block))
        self.fuse = nn.Sequential(nn.Conv2d(num_feat * num_block, num_feat, 1), nn.LeakyReLU(0.05, inplace=True))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsample = nn.Sequential(
            nn.Conv2d(num_feat, in_channels * scale**2, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.conv_first(x)
        feats, f = [], f0
        for block in self.body:
            f = block(f)
            feats.append(f)
        return self.upsample(self.conv_after_body(self.fuse(torch.cat(feats, dim=1))) + f0)
