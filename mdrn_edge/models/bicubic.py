"""The bicubic baseline as a weightless module, using the same MATLAB-style kernel as the degradation."""

from __future__ import annotations

import torch
from torch import nn

from mdrn_edge.data.degradation import resize_matrix


class Bicubic(nn.Module):
    """``Y = R_h X R_w^T`` with the 1-D bicubic matrices of :func:`resize_matrix` (no learnable weights)."""

    def __init__(self, scale: int = 4, **_: object) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.tensor(resize_matrix(h, h * self.scale)).to(x)
        cols = torch.tensor(resize_matrix(w, w * self.scale)).to(x)
        return rows @ x @ cols.T
