"""Model size and cost: parameters and FLOPs (2 per multiply-add) as the paper's Table 3 reports them."""

from __future__ import annotations

import numpy as np
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


def receptive_field(model: nn.Module, size: int = 48) -> int:
    """Width in LR pixels of the receptive field, computed from the network: the reach ``(k - 1) * dilation`` of
    every convolution and pooling layer, each scaled by its input's resolution relative to the LR input (a 3x3 conv
    after a x2 pixel shuffle reaches one LR pixel), summed, plus one.

    Exact for a chain of convolutions (MDRN: ``8 n + 7`` = 71, since its distillation branches are 1x1); an upper
    bound where spatial branches run in parallel (RFDN's ESA), which only makes tiles safer. CCA's and ESA's
    global statistics are not local and not counted: tiling measures their effect on real slices.
    """
    reach = 0.0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        nonlocal reach
        k, d = module.kernel_size, module.dilation
        k, d = (k if isinstance(k, int) else max(k)), (d if isinstance(d, int) else max(d))
        reach += (k - 1) * d * size / inputs[0].shape[-1]

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.config.in_channels, size, size))
    finally:
        for h in handles:
            h.remove()
    return int(np.ceil(reach - 1e-9)) + 1
