"""MDRN: multi-distillation residual network (Deng et al., MBE 2024), as fixed by ``shared/spec/MDRN.md``.

Read bottom-up like the paper: BSConv -> BSRB (sec. 2.2) -> CCALayer (eq. 6) -> FMDRB (eq. 5) -> MDRN (eqs. 1-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mdrn_edge.models.config import ArchConfig

ATTENTIONS = ("cca", "ca", "none")
UNITS = ("bsrb", "rb")


@dataclass(frozen=True)
class MDRNConfig(ArchConfig):
    """Every hyper-parameter and ablation switch of MDRN; stored in checkpoints, ONNX metadata and sidecars."""

    num_feat: int = 56
    num_block: int = 8
    reduction: int = 16
    inner_distillation: bool = True
    outer_distillation: bool = True
    unit: str = "bsrb"
    attention: str = "cca"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.num_feat % 2:
            raise ValueError(f"num_feat must be even (the distillation halves it), got {self.num_feat}")


class BSConv(nn.Sequential):
    """Blueprint separable convolution: pointwise 1x1 (no bias), then depthwise 3x3 (with bias)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch),
        )


def conv_unit(in_ch: int, out_ch: int, unit: str) -> nn.Module:
    """The 3x3 feature extractor of a residual unit: BSConv for ``bsrb``, a plain conv for ``rb``."""
    return BSConv(in_ch, out_ch) if unit == "bsrb" else nn.Conv2d(in_ch, out_ch, 3, padding=1)


class BSRB(nn.Module):
    """Residual unit, ``ReLU(BSConv(x) + x)`` (paper sec. 2.2); with ``unit='rb'`` a plain 3x3 conv instead."""

    def __init__(self, num_feat: int, unit: str = "bsrb") -> None:
        super().__init__()
        self.conv = conv_unit(num_feat, num_feat, unit)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + x)


def channel_mean_std(x: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std over H x W with mean reductions only.

    Mean-type reductions (never spatial sums) keep the statistics inside FP16 range at any slice size; the
    epsilon inside the square root keeps the gradient finite on constant background channels.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
    return mean, torch.sqrt(var + eps)


class CCALayer(nn.Module):
    """Contrast-aware channel attention (eq. 6): ``x * sigmoid(W2 ReLU(W1 (mean(x) + std(x))))``."""

    def __init__(self, num_feat: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(num_feat // reduction, 1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(num_feat, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = channel_mean_std(x)
        return x * self.conv_du(mean + std)


class CALayer(CCALayer):
    """Squeeze-excitation channel attention with average pooling (RCAN), the ``attention='ca'`` ablation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


def attention_layer(kind: str, num_feat: int, reduction: int) -> nn.Module:
    return {"cca": CCALayer, "ca": CALayer}[kind](num_feat, reduction) if kind != "none" else nn.Identity()


class FMDRB(nn.Module):
    """Feature multi-distillation residual block (eq. 5).

    Three steps each split the features into a distilled half (1x1 conv) and a refined full-width part (BSRB);
    the last refinement is distilled by a BSConv; the four halves are fused by a 1x1 conv, weighted by CCA and
    added to the block input. With ``inner_distillation=False`` the units are chained at full width instead.
    """

    def __init__(self, cfg: MDRNConfig) -> None:
        super().__init__()
        c, d = cfg.num_feat, cfg.num_feat // 2
        self.inner = cfg.inner_distillation
        self.refine = nn.ModuleList(BSRB(c, cfg.unit) for _ in range(3))
        if self.inner:
            self.distill = nn.ModuleList(nn.Conv2d(c, d, 1) for _ in range(3))
        self.last = conv_unit(c, d if self.inner else c, cfg.unit)
        self.act = nn.ReLU(inplace=True)
        self.fuse = nn.Conv2d(4 * d if self.inner else c, c, 1)
        self.attn = attention_layer(cfg.attention, c, cfg.reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled, r = [], x
        for k, refine in enumerate(self.refine):
            if self.inner:
                distilled.append(self.act(self.distill[k](r)))  # d_k = ReLU(D_k(r_{k-1}))
            r = refine(r)  # r_k = BSRB_k(r_{k-1})
        r4 = self.act(self.last(r))
        fused = torch.cat([*distilled, r4], dim=1) if self.inner else r4
        return self.attn(self.fuse(fused)) + x


class MDRN(nn.Module):
    """MDRN (eqs. 1-4): shallow conv, n FMDRBs, outer multi-distillation aggregation, pixel-shuffle upsampling."""

    Config = MDRNConfig
    # Peak ONNX Runtime (CPU, FP32) memory per LR pixel at x4, measured by benchmarks/arch_memory.py as the slope
    # of peak RSS between 128x128 and 256x256 LR inputs; the runtime plans batches and tiles with it.
    BYTES_PER_LR_PIXEL = 5795
    # CCA's per-channel mean/variance/sqrt chain (and its constants): FP16-unsafe hand-written reductions, kept in
    # FP32 in the FP16 ONNX and pinned to FP32 in TensorRT engines. Node names come from the module path ``.attn``;
    # TensorRT's ONNX parser names layers after the node, appending ``_N`` for every extra layer of one node.
    FP32_LAYERS = r"/attn/(ReduceMean|Sub|Pow|Add|Sqrt|Constant)(_\d+)*$"

    def __init__(self, cfg: MDRNConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = MDRNConfig.from_dict({**(cfg.to_dict() if cfg else {}), **overrides})
        self.config = cfg
        c, n = cfg.num_feat, cfg.num_block
        self.conv_first = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.body = nn.ModuleList(FMDRB(cfg) for _ in range(n))
        self.outer = cfg.outer_distillation
        self.conv_after_body = nn.Sequential(
            *([nn.Conv2d(n * c, c, 1), nn.GELU()] if self.outer else []),
            nn.Conv2d(c, c, 3, padding=1),
        )
        self.upsample = nn.Sequential(
            nn.Conv2d(c, cfg.in_channels * cfg.scale**2, 3, padding=1), nn.PixelShuffle(cfg.scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.conv_first(x)  # F_0 = Conv3x3(I_LR)
        feats, f = [], f0
        for block in self.body:  # F_k = FMDRB_k(F_{k-1})
            f = block(f)
            feats.append(f)
        fusion = self.conv_after_body(torch.cat(feats, dim=1) if self.outer else f)  # F_fusion
        return self.upsample(fusion + f0)  # I_SR = PixelShuffle(Conv3x3(F_fusion + F_0))
