"""A stack of 2-D slices with the metadata needed to write the result back in the input's own format."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Volume:
    """``data`` is float32 ``(N, H, W)`` in physical units (RescaleSlope/Intercept applied).

    ``kind`` is ``dicom`` (``headers`` holds one pixel-less pydicom Dataset per slice, in slice order) or
    ``nifti`` (``headers`` holds the nibabel header and affine, ``slice_axis`` the axis the slices were cut along).
    """

    data: np.ndarray
    kind: str
    sources: list[Path]
    headers: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @cached_property
    def value_range(self) -> tuple[float, float]:
        """Its minimum and maximum, measured once (the input check, the clip bounds and the map's scale read it)."""
        return float(self.data.min()), float(self.data.max())

    @property
    def description(self) -> str:
        return self.meta.get("description", self.sources[0].name if self.sources else "volume")
