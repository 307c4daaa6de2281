"""The bicubic baseline as a weightless module, using the same MATLAB-style kernel as the degradation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mdrn_edge.data.degradation import resize_matrix
from mdrn_edge.models.config import ArchConfig


class Bicubic(nn.Module):
    """``Y = R_h X R_w^T`` with the 1-D bicubic matrices of :func:`resize_matrix` (no learnable weights)."""

    Config = ArchConfig
    BYTES_PER_LR_PIXEL = 0
    FP32_LAYERS = None

    def __init__(self, cfg: ArchConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = ArchConfig.from_dict({**(cfg.to_dict() if cfg else {}), **overrides})
        self.scale = self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.tensor(resize_matrix(h, h * self.scale)).to(x)
        cols = torch.tensor(resize_matrix(w, w * self.scale)).to(x)
        return rows @ x @ cols.T
