"""Model size and cost: parameters and FLOPs (2 per multiply-add) as the paper's Table 3 reports them."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int = 256, channels: int = 1) -> int:
    """FLOPs of one forward pass at a ``1 x channels x size x size`` input, by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, channels, size, size))
    return int(counter.get_total_flops())
