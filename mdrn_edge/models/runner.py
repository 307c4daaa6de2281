"""PyTorch as one more runner of the runtime's family: the reference that export checks, evaluation, training's
validation and the benchmarks compare every other backend against, through the same ``infer`` contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.base import Runner


class TorchRunner(Runner):
    """A checkpoint (or an in-memory model with its info) on a torch device, FP32 or FP16, optionally
    channels-last; host arrays in and out like every runner, so timings and comparisons have the same scope."""

    backend = "torch"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = False, model: nn.Module | None = None, info: ModelInfo | None = None) -> None:
        if (path is None) == (model is None):
            raise ValueError("give a checkpoint path or an in-memory model, not both")
        if model is not None and info is None:
            raise ValueError("an in-memory model needs its ModelInfo")
        super().__init__(path if path is not None else f"<{info.name} in memory>")
        self.device, self.precision, self.channels_last = torch.device(device), precision, channels_last
        self.model, self.given_info = model, info
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def from_model(cls, model: nn.Module, info: ModelInfo) -> "TorchRunner":
        param = next(model.parameters(), None)
        return cls(model=model, info=info, device=param.device if param is not None else "cpu")

    def activate_impl(self) -> None:
        if self.model is None:
            from mdrn_edge.models.checkpoint import load_model

            self.model, _, self.info = load_model(self.path)
            self.model = self.model.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
        else:  # a model being trained: used where and as it is (its device, dtype and memory format untouched)
            self.info = self.given_info
        self.model.eval()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
            return self.model(x).float().cpu().numpy()  # .cpu() synchronises the stream

    def peak_gpu_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": str(self.device), "precision": self.precision}
