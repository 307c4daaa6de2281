"""Read a 3-D NIfTI volume as axial slices with nibabel, keeping header and affine for writing back."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError, first_line, require
from mdrn_edge.hardware import available_memory

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def check_claimed_size(path: Path, img) -> None:
    """Refuse, before reading any data, a header whose claims the file cannot back: a data type that is not one
    real value per voxel, more voxel bytes than the file holds (decompressed bytes counted as a stream, never
    kept), or a volume larger than the memory available. A 68-byte file claiming 4 GiB costs nothing."""
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise InputError(f"{path}: complex-valued NIfTI ({dtype}); MDRN super-resolves magnitude images, so give the "
                         "magnitude (e.g. numpy.abs of the data) as a real volume")
    if dtype.fields is not None or dtype.kind not in "uif":
        raise InputError(f"{path}: NIfTI data type {dtype} (e.g. RGB) is not one real value per voxel; give a "
                         "greyscale volume")
    voxels = int(np.prod(img.shape, dtype=np.int64))
    needed = int(img.dataobj.offset) + voxels * dtype.itemsize
    held = _stored_bytes(path, needed)
    if held < needed:
        raise InputError(f"{path}: the header claims {img.shape} {dtype} voxels ({needed} bytes with the header), the "
                         f"file holds {held}; the file is truncated or its header damaged")
    if voxels * 4 > available_memory():
        raise InputError(f"{path}: a {img.shape} volume needs {voxels * 4 / 2**30:.1f} GiB as float32, more than the "
                         f"{available_memory() / 2**30:.1f} GiB available; crop it or use a larger machine")


def _stored_bytes(path: Path, needed: int, chunk: int = 1 << 20) -> int:
    """The file's (decompressed) size, counted up to ``needed`` bytes at most."""
    if not str(path).lower().endswith(".gz"):
        return path.stat().st_size
    held = 0
    with gzip.open(path, "rb") as f:
        while held < needed:
            block = f.read(min(chunk, needed - held))
            if not block:
                break
            held += len(block)
    return held


def read_nifti(path: str | Path) -> Volume:
    """Slices are cut along the third voxel axis (axial for the usual RAS/LPS storage): data ``(Z, X, Y)``."""
    nib = require("nibabel", "nifti")
    path = Path(path)
    try:
        img = nib.load(str(path))  # the header only: the data are read below, once their claimed size is checked
        check_claimed_size(path, img)
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path") from None
    except InputError:
        raise
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
        meta={"description": path.name.split(".")[0], "dtype": str(img.get_data_dtype()),
              # nibabel moves scl_slope/scl_inter from the header into the data object on reading: kept here so
              # that the output is stored as the input was
              "scaling": [float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0))]},
    )
