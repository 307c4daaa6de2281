"""Read a 3-D NIfTI volume as axial slices with nibabel, keeping header and affine for writing back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError, first_line, require

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> Volume:
    """Slices are cut along the third voxel axis (axial for the usual RAS/LPS storage): data ``(Z, X, Y)``."""
    nib = require("nibabel", "nifti")
    path = Path(path)
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path") from None
    except Exception as exc:
        raise InputError(f"{path}: unreadable NIfTI ({first_line(exc)}); the file may be truncated") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: {arr.ndim}-D image of shape {arr.shape}; give a 3-D volume (split 4-D series first)")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InputError(f"{path}: {bad} NaN/Inf voxels; clean the volume (e.g. replace them with 0) first")
    return Volume(
        data=np.ascontiguousarray(np.moveaxis(arr, 2, 0)),
        kind="nifti",
        sources=[path],
        headers=[img.header.copy(), img.affine.copy()],
        meta={"description": path.name.split(".")[0], "dtype": str(img.get_data_dtype())},
    )
