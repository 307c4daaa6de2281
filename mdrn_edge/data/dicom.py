"""Read one DICOM series into a :class:`Volume` with pydicom, refusing what cannot be a slice stack."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError, first_line

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def list_dicom_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively; hidden files and DICOMDIR indexes skipped) and keep files; a missing path is
    an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*")
                            if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder; check the path")
    if not files:
        raise InputError(f"{', '.join(map(str, inputs))}: no files found; give a DICOM folder or files")
    return files


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no DICM preamble); remove it or give DICOM files only") from None
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InputError(f"{path}: unreadable DICOM ({first_line(exc)}); the file may be truncated") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: has no pixel data (SOP class {ds.get('SOPClassUID', '?')}); give image files only")
    return ds


def _pixels(ds, path: Path) -> np.ndarray:
    """Pixel data in physical units, float32, one 2-D slice."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: {ds.SamplesPerPixel}-sample (e.g. RGB) image; MDRN needs greyscale MR slices")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); give single-frame slices")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        if ts in UNCOMPRESSED:
            raise InputError(f"{path}: cannot decode pixel data ({first_line(exc)}); the file may be truncated") from None
        name = getattr(ds.file_meta.TransferSyntaxUID, "name", ts)
        raise InputError(
            f"{path}: cannot decode pixel data compressed as {name}; install a decoder (pip install pylibjpeg "
            "pylibjpeg-libjpeg pylibjpeg-openjpeg) or decompress it first (gdcmconv --raw)"
        ) from None
    if arr.ndim != 2:
        raise InputError(f"{path}: pixel data has shape {arr.shape}; expected one 2-D slice")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _slice_order_key(ds) -> float:
    """Position along the slice normal (ImagePositionPatient . normal); InstanceNumber where geometry is absent."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is not None and ipp is not None:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return float(np.dot(normal, np.asarray(ipp, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


def group_series(files: list[Path]) -> dict[str, list[tuple[Path, object]]]:
    """Read every header and group by SeriesInstanceUID (order of first appearance)."""
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path in files:
        ds = _read_header(path)
        groups[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    return dict(groups)


def series_label(items: list[tuple[Path, object]]) -> str:
    ds = items[0][1]
    return f"{ds.get('SeriesNumber', '?')} '{ds.get('SeriesDescription', '')}' ({len(items)} files)"


def volume_from_datasets(items: list[tuple[Path, object]]) -> Volume:
    """Stack one series' slices in spatial order; the headers keep everything but the pixels."""
    items = sorted(items, key=lambda item: _slice_order_key(item[1]))
    slices = [_pixels(ds, path) for path, ds in items]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"{items[0][0].parent}: slices of different sizes {sorted(shapes)} in one series")
    headers = []
    for _, ds in items:
        del ds.PixelData
        headers.append(ds)
    first = headers[0]
    return Volume(
        data=np.stack(slices),
        kind="dicom",
        sources=[path for path, _ in items],
        headers=headers,
        meta={"description": str(first.get("SeriesDescription", "")), "series_uid": str(first.get("SeriesInstanceUID", ""))},
    )


def read_dicom_series(inputs: Iterable[str | Path]) -> Volume:
    """Read exactly one series from folders and/or files; a mixture of series is refused, naming them."""
    inputs = list(inputs)
    groups = group_series(list_dicom_files(inputs))
    if len(groups) > 1:
        names = "; ".join(series_label(items) for items in groups.values())
        raise InputError(f"{', '.join(map(str, inputs))}: {len(groups)} series mixed ({names}); give one series folder")
    return volume_from_datasets(next(iter(groups.values())))


def read_dicom_study(inputs: Iterable[str | Path]) -> list[Volume]:
    """Every series found in the inputs, one Volume each (a whole study, handled series by series)."""
    return [volume_from_datasets(items) for items in group_series(list_dicom_files(list(inputs))).values()]
