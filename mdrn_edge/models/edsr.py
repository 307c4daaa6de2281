"""EDSR-baseline (Lim et al. 2017): 16 residual blocks of 64 features, 1-channel I/O, the paper's Table 1 "Base"."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mdrn_edge.models.config import ArchConfig


@dataclass(frozen=True)
class EDSRConfig(ArchConfig):
    num_feat: int = 64
    num_block: int = 16


class ResBlock(nn.Module):
    """``x + Conv(ReLU(Conv(x)))`` without batch norm (EDSR)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(num_feat, num_feat, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsampler(nn.Sequential):
    """Pixel-shuffle upsampler: x2 stages for powers of two, one x3 stage for scale 3 (EDSR)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        steps = [2] * int(math.log2(scale)) if scale & (scale - 1) == 0 else [scale]
        layers: list[nn.Module] = []
        for s in steps:
            layers += [nn.Conv2d(num_feat, num_feat * s * s, 3, padding=1), nn.PixelShuffle(s)]
        super().__init__(*layers)


class EDSR(nn.Module):
    """Head conv, residual body with a global skip, pixel-shuffle upsampler, tail conv."""

    Config = EDSRConfig
    BYTES_PER_LR_PIXEL = 16941  # measured like MDRN's (benchmarks/arch_memory.py)
    FP32_LAYERS = None  # no FP16-unsafe reductions

    def __init__(self, cfg: EDSRConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = self.config = EDSRConfig.from_dict({**(cfg.to_dict() if cfg else {}), **overrides})
        scale, in_channels, num_feat, num_block = cfg.scale, cfg.in_channels, cfg.num_feat, cfg.num_block
        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(num_feat) for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.upsample = Upsampler(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.conv_first(x)
        return self.conv_last(self.upsample(self.conv_after_body(self.body(f0)) + f0))
