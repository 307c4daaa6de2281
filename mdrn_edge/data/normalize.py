"""Intensity normalisation: the paper's fixed clip/divide, a per-volume robust percentile for other scanners, and
the paper protocol's per-slice min-max.

The normaliser used in training is stored with the model (checkpoint, ONNX metadata, engine sidecar) and
re-applied and inverted at inference, so the user never passes it twice. ``fit`` measures a volume and returns
the :class:`Scaling` that maps it to about [0, 1] and back, slice by slice where the mode is per-slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

MODES = ("fixed", "percentile", "minmax")


@dataclass(frozen=True)
class Scaling:
    """``normalized = (x - offset) / scale`` with ``offset`` and ``scale`` scalars or one per slice (``(N, 1, 1)``).

    ``first`` selects the slices of a chunk (``x`` holds slices ``first .. first + len(x) - 1`` of the fitted
    volume), so a volume can be normalised whole and inverted chunk by chunk as results stream out.
    """

    offset: np.ndarray
    scale: np.ndarray
    lower: float | None = None
    upper: float | None = None

    def _rows(self, values: np.ndarray, first: int, n: int) -> np.ndarray:
        return values[first : first + n] if values.ndim == 3 else values

    def normalize(self, x: np.ndarray, first: int = 0) -> np.ndarray:
        offset, scale = self._rows(self.offset, first, len(x)), self._rows(self.scale, first, len(x))
        clipped = np.clip(x, self.lower, self.upper) if self.lower is not None or self.upper is not None else x
        return ((clipped - offset) / scale).astype(np.float32)

    def denormalize(self, y: np.ndarray, first: int = 0) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        offset, scale = self._rows(self.offset, first, len(y)), self._rows(self.scale, first, len(y))
        return (y * scale.astype(np.float32) + offset.astype(np.float32)).astype(np.float32)

    def denormalize_spread(self, y: np.ndarray, first: int = 0) -> np.ndarray:
        """A spread (a standard deviation, a difference) in normalised units -> physical units: scaled, not offset."""
        y = np.asarray(y, dtype=np.float32)
        return (y * self._rows(self.scale, first, len(y)).astype(np.float32)).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Maps stored intensities to about [0, 1] and back.

    ``fixed``: clip to [0, max_value] and divide by it (paper sec. 3.1: 2000). ``percentile``: ``max_value`` is
    measured per volume as its ``percentile``-th percentile and mapped to 1, 0 stays 0 (or, for signed data, the
    volume's minimum maps to 0); nothing is clipped, so the inverse is exact for every input. ``minmax``: each slice to [0, 1] by its own minimum and
    maximum, the paper's evaluation protocol; exactly invertible.
    """

    mode: str = "percentile"
    max_value: float | None = None
    percentile: float = 99.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normaliser mode must be one of {MODES}, got {self.mode!r}")
        if self.max_value is not None and not (isinstance(self.max_value, (int, float)) and self.max_value > 0):
            raise ValueError(f"normaliser max_value must be a positive number, got {self.max_value!r}")
        if not isinstance(self.percentile, (int, float)) or not 0 < self.percentile <= 100:
            raise ValueError(f"normaliser percentile must be in (0, 100], got {self.percentile!r}")
        if self.mode == "fixed" and not self.max_value:
            raise ValueError("a fixed normaliser needs a positive max_value (the paper uses 2000)")

    @classmethod
    def paper(cls) -> "Normalizer":
        """The paper's data preparation (sec. 3.1): clip at 2000, divide by 2000."""
        return cls(mode="fixed", max_value=2000.0)

    @classmethod
    def minmax(cls) -> "Normalizer":
        """The paper's evaluation protocol: per-slice min-max."""
        return cls(mode="minmax")

    def fit(self, volume: np.ndarray) -> Scaling:
        """The scaling of this ``(N, H, W)`` (or ``(H, W)``) volume."""
        volume = np.asarray(volume)
        if self.mode == "fixed":
            return Scaling(np.zeros(()), np.asarray(float(self.max_value)), 0.0, float(self.max_value))
        if self.mode == "minmax":
            axes = (-2, -1)
            lo = volume.min(axis=axes, keepdims=True).astype(np.float64)
            span = np.maximum(volume.max(axis=axes, keepdims=True) - lo, 1e-12)
            if volume.ndim == 2:
                lo, span = lo.reshape(()), span.reshape(())
            return Scaling(lo, span)
        low = min(0.0, float(volume.min()))  # MR magnitude: 0; signed data (phase, CT, float NIfTI): its minimum
        span = float(np.percentile(volume, self.percentile)) - low
        if not np.isfinite(span) or span <= 0:
            span = float(np.max(volume)) - low
            span = span if span > 0 else 1.0  # a constant volume: keep it finite
        return Scaling(np.asarray(low), np.asarray(span))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalizer":
        """The inverse of :meth:`to_dict`; unknown keys are refused (ValueError) rather than dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"a normaliser is a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown normaliser keys {sorted(unknown)}")
        return cls(**data)
