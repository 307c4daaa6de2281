"""MRI input/output, normalisation and degradation: NumPy, pydicom and nibabel only (never torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mdrn_edge.data.volume import Volume


def read_volume(inputs: Iterable[str | Path]) -> Volume:
    """One volume from a NIfTI file, or from DICOM folders/files (one series)."""
    from mdrn_edge.data.dicom import read_dicom_series
    from mdrn_edge.data.nifti import is_nifti, read_nifti
    from mdrn_edge.errors import InputError

    inputs = list(inputs)
    if any(is_nifti(p) for p in inputs):
        if len(inputs) != 1:
            raise InputError(f"{', '.join(map(str, inputs))}: give one NIfTI file at a time")
        return read_nifti(inputs[0])
    return read_dicom_series(inputs)


__all__ = ["Volume", "read_volume"]
