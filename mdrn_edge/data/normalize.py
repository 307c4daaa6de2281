"""Intensity normalisation: the paper's fixed clip/divide, and a per-volume robust percentile for other scanners.

The normaliser used in training is stored with the model (checkpoint, ONNX metadata, engine sidecar) and
re-applied and inverted at inference, so the user never passes it twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

MODES = ("fixed", "percentile")


@dataclass(frozen=True)
class Normalizer:
    """Maps stored intensities to about [0, 1] and back.

    ``fixed``: clip to [0, max_value] and divide by it (paper: 2000). ``percentile``: ``max_value`` is fitted per
    volume as its ``percentile``-th percentile; values are divided by it and clipped below at 0 only, so the
    inverse is exact for every non-negative input.
    """

    mode: str = "percentile"
    max_value: float | None = None
    percentile: float = 99.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normaliser mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fixed" and not self.max_value:
            raise ValueError("a fixed normaliser needs a positive max_value (the paper uses 2000)")

    @classmethod
    def paper(cls) -> "Normalizer":
        return cls(mode="fixed", max_value=2000.0)

    def fit(self, volume: np.ndarray) -> "Normalizer":
        """The normaliser for this volume (``percentile`` measures it; ``fixed`` is returned unchanged)."""
        if self.mode == "fixed":
            return self
        value = float(np.percentile(volume, self.percentile))
        if not np.isfinite(value) or value <= 0:
            value = float(np.max(volume)) if np.max(volume) > 0 else 1.0  # an all-dark volume: keep it finite
        return replace(self, max_value=value)

    def _scale(self) -> float:
        if self.max_value is None:
            raise ValueError("this percentile normaliser has not been fitted to a volume; call fit() first")
        return float(self.max_value)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        upper = self._scale() if self.mode == "fixed" else None
        return (np.clip(x, 0, upper) / self._scale()).astype(np.float32)

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float32) * np.float32(self._scale())).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalizer":
        return cls(**data)
