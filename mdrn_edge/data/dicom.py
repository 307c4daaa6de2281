"""Read one DICOM series into a :class:`Volume` with pydicom, refusing what cannot be a slice stack."""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError, first_line
from mdrn_edge.fileio import OUTPUT_MARKER

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}

log = logging.getLogger(__name__)


def _walk(folder: Path) -> list[Path]:
    """Every entry below ``folder``. A sub-folder that cannot be listed (permission) is an OS error naming it,
    never a silent hole in the series (``Path.rglob`` skips such folders without a word)."""
    def refuse(exc: OSError) -> None:
        raise exc

    entries = []
    for root, dirs, names in os.walk(folder, onerror=refuse):
        entries += [Path(root) / name for name in (*dirs, *names)]
    return entries


def list_dicom_files(inputs: Iterable[str | Path], skipped: Counter | None = None) -> list[Path]:
    """Expand folders (recursively; hidden files, DICOMDIR indexes and mdrn-edge's own earlier outputs skipped,
    the latter counted in ``skipped``) and keep files, and entries that cannot be read as files (a broken link):
    the reader decides whether those are missing slices. A missing path is an error."""
    skipped = Counter() if skipped is None else skipped
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = _walk(item)
            marked = {p.parent for p in entries if p.name == OUTPUT_MARKER}  # earlier mdrn-edge outputs
            found = [p for p in entries if not p.is_dir() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"]
            ours = [p for p in found if marked.intersection(p.parents)]
            skipped["mdrn-edge output"] += len(ours)
            files += sorted(set(found) - set(ours))
        elif item.is_file():
            files.append(item)
        elif item.is_symlink():
            raise InputError(f"{item}: a symbolic link that leads nowhere (or to itself); give the real file or folder")
        else:
            raise InputError(f"{item}: no such file or folder; check the path")
    if not files:
        raise InputError(f"{', '.join(map(str, inputs))}: no files found; give a DICOM folder or files")
    return files


class NotAnImage(InputError):
    """A file that is not a DICOM image at all (a README, a report): skipped inside a folder."""


class MissingSlice(InputError):
    """A file that should be a slice and cannot be read: empty, truncated, a broken link, or named like DICOM but
    not DICOM. Inside a folder it is refused (a series is a clinical unit) unless the caller allows missing slices,
    and it is always named."""


DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ".dc3"}  # a file named so that is not DICOM is a damaged slice


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MissingSlice(f"{path}: cannot be read ({exc.strerror or first_line(exc)})") from None
    if size == 0:
        raise MissingSlice(f"{path}: is empty (0 bytes)")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise MissingSlice(f"{path}: truncated or damaged ({size} bytes, no DICOM header)") from None
        raise NotAnImage(f"{path}: not a DICOM file (no DICM preamble); remove it or give DICOM files only") from None
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InputError(f"{path}: unreadable DICOM ({first_line(exc)}); the file may be truncated") from None
    if "PixelData" not in ds:
        raise NotAnImage(f"{path}: has no pixel data (SOP class {ds.get('SOPClassUID', '?')}); give image files only")
    clean_header(ds, path)
    return ds


# every numeric field the reader and the writer compute with, and its count of values: one rule for all of them
NUMERIC_FIELDS = {"Rows": 1, "Columns": 1, "SamplesPerPixel": 1, "BitsAllocated": 1, "BitsStored": 1,
                  "PixelRepresentation": 1, "NumberOfFrames": 1, "RescaleSlope": 1, "RescaleIntercept": 1,
                  "PixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6, "InstanceNumber": 1,
                  "SeriesNumber": 1, "SliceThickness": 1, "SpacingBetweenSlices": 1, "SliceLocation": 1}


def clean_header(ds, path: Path) -> None:
    """The reader's rule for header values: a numeric field that is present but empty counts as absent (it is
    removed, so nothing downstream meets an empty value); one that is not the numbers it must be is one line
    naming the file, the field and the value (:func:`header_numbers`)."""
    for keyword, count in NUMERIC_FIELDS.items():
        if keyword in ds and header_numbers(ds, keyword, count, path) is None:
            del ds[keyword]


def header_numbers(ds, keyword: str, count: int, path: Path) -> list[float] | None:
    """The ``count`` finite numbers of a header field, None where it is absent or empty; anything else is one
    line naming the file, the field and its value (malformed headers are common in real archives)."""
    if keyword not in ds:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of invalid values in several lines; ours is one
        try:
            value = ds.get(keyword)
            values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
            numbers = [float(v) for v in values]
        except (TypeError, ValueError, OverflowError):
            value, numbers = ds.get_item(keyword).value, []
    if value is None or value == "" or value == b"":
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        raise InputError(f"{path}: {keyword} {text.strip()[:40]!r} is not {count} number(s); fix the header or drop the file")
    return numbers


def _rescale(ds, path: Path) -> tuple[float, float]:
    slope = (header_numbers(ds, "RescaleSlope", 1, path) or [1.0])[0]
    if slope == 0:
        raise InputError(f"{path}: RescaleSlope is 0 (every value would be the intercept); fix the header")
    return slope, (header_numbers(ds, "RescaleIntercept", 1, path) or [0.0])[0]


def _pixels(ds, path: Path) -> np.ndarray:
    """Pixel data in physical units, float32, one 2-D slice."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: {ds.SamplesPerPixel}-sample (e.g. RGB) image; MDRN needs greyscale MR slices")
    if int((header_numbers(ds, "NumberOfFrames", 1, path) or [1])[0]) > 1:
        raise InputError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); give single-frame slices")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (8, 16, 32):
        raise InputError(f"{path}: BitsAllocated {bits} (a 1-bit mask or an unusual format), not a greyscale MR "
                         "slice; give 8-, 16- or 32-bit images")
    if ts in UNCOMPRESSED:  # the size the header claims, against the bytes the file holds, before decoding
        claimed = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * bits // 8
        held = len(ds.get_item("PixelData").value or b"")
        if claimed == 0 or held < claimed:
            raise InputError(f"{path}: Rows x Columns {ds.get('Rows')}x{ds.get('Columns')} claims {claimed} bytes of "
                             f"pixels, the file holds {held}; the header or the file is damaged")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's multi-line warnings; anything wrong is our one line
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
    slope, intercept = _rescale(ds, path)
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _slice_order_key(item: tuple[Path, object]) -> float:
    """Position along the slice normal (ImagePositionPatient . normal); InstanceNumber where geometry is absent."""
    path, ds = item
    iop = header_numbers(ds, "ImageOrientationPatient", 6, path)
    ipp = header_numbers(ds, "ImagePositionPatient", 3, path)
    if iop is not None and ipp is not None:
        normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
        return float(np.dot(normal, np.asarray(ipp)))
    return (header_numbers(ds, "InstanceNumber", 1, path) or [0.0])[0]


WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # binary VRs whose words are stored in the file's byte order


def little_endian(ds):
    """A header read from a big-endian file, re-encoded so it can be written as explicit VR little endian (the
    derived series' transfer syntax; pydicom refuses to convert on writing): every element decoded while the
    original byte order is known, binary words swapped, unknown-VR (UN) elements, whose layout cannot be known,
    dropped."""
    if ds.original_encoding[1] is not False:
        return ds
    for elem in list(ds.iterall()):  # decodes each raw element with the big-endian encoding it was read with
        if elem.VR in WORD_BYTES and isinstance(elem.value, bytes):
            size = WORD_BYTES[elem.VR]
            elem.value = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()
    for elem in [e for e in ds.iterall() if e.VR == "UN"]:
        _drop(ds, elem.tag)
    ds.set_original_encoding(False, True)
    return ds


def _drop(ds, tag) -> None:
    if tag in ds:
        del ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _drop(item, tag)


def is_derived_by_us(ds) -> bool:
    return "mdrn-edge" in str(ds.get("DerivationDescription", ""))


def group_series(files: list[Path], given: Iterable[Path] = (), skipped: Counter | None = None,
                 allow_missing: bool = False) -> dict[str, list[tuple[Path, object]]]:
    """Read every header and group by SeriesInstanceUID (order of first appearance).

    Files found inside a folder that are not DICOM (a README, a LICENSE) are skipped and counted, as real
    archives have them; a file given by name that is not DICOM is an error. A file that should be a slice and
    cannot be read (:class:`MissingSlice`) is refused, naming it, unless ``allow_missing``: then it is left out
    and named in ``skipped``. Series mdrn-edge derived are skipped (super-resolving a result again is never what
    was meant). A duplicated instance is refused."""
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    skipped = Counter() if skipped is None else skipped
    given, seen, missing = set(given), {}, []
    for path in files:
        try:
            ds = _read_header(path)
        except MissingSlice as exc:
            if path in given or not allow_missing:
                raise MissingSlice(f"{exc}; a series is never written short of a slice: restore the file, or pass "
                                   "--allow-missing to write the series without it") from None
            missing.append(path.name)
            continue
        except NotAnImage:
            if path in given:
                raise
            skipped["not DICOM"] += 1
            continue
        if is_derived_by_us(ds):
            skipped["mdrn-edge output"] += 1
            continue
        uid = str(ds.get("SOPInstanceUID", "")) or str(path)
        if uid in seen:
            raise InputError(f"{path}: duplicates instance {uid} of {seen[uid]}; remove the copy and run again")
        seen[uid] = path
        groups[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    if missing:
        skipped[f"missing slices left out as asked: {', '.join(missing)}"] += len(missing)
    if not groups:
        raise InputError(f"{len(files)} file(s) found, none a DICOM image to super-resolve ({skipped_line(skipped)}); "
                         "give the original series")
    return dict(groups)


def skipped_line(skipped: Counter) -> str:
    """``skipped 2 files (not DICOM), 3 files (mdrn-edge output)``: the one summary line of what was left out."""
    return "skipped " + ", ".join(f"{n} file(s) ({why})" for why, n in sorted(skipped.items()) if n) if any(skipped.values()) else ""


def series_label(items: list[tuple[Path, object]]) -> str:
    ds = items[0][1]
    return f"{ds.get('SeriesNumber', '?')} '{ds.get('SeriesDescription', '')}' ({len(items)} files)"


def volume_from_datasets(items: list[tuple[Path, object]]) -> Volume:
    """Stack one series' slices in spatial order; the headers keep everything but the pixels."""
    items = sorted(items, key=_slice_order_key)
    slices = [_pixels(ds, path) for path, ds in items]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"{items[0][0].parent}: slices of different sizes {sorted(shapes)} in one series")
    headers = []
    for _, ds in items:
        del ds.PixelData
        headers.append(little_endian(ds))
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
    skipped: Counter = Counter()
    groups = group_series(list_dicom_files(inputs, skipped), _given_files(inputs), skipped)
    if any(skipped.values()):
        log.warning("%s", skipped_line(skipped))
    if len(groups) > 1:
        names = "; ".join(series_label(items) for items in groups.values())
        raise InputError(f"{', '.join(map(str, inputs))}: {len(groups)} series mixed ({names}); give one series folder")
    return volume_from_datasets(next(iter(groups.values())))


def read_dicom_study(inputs: Iterable[str | Path], skipped: Counter | None = None,
                     allow_missing: bool = False) -> list[Volume]:
    """Every series found in the inputs, one Volume each (a whole study, handled series by series); what was left
    out is counted in ``skipped`` (see :func:`group_series` for ``allow_missing``)."""
    inputs, skipped = list(inputs), Counter() if skipped is None else skipped
    groups = group_series(list_dicom_files(inputs, skipped), _given_files(inputs), skipped, allow_missing)
    return [volume_from_datasets(items) for items in groups.values()]


def _given_files(inputs: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in inputs if Path(p).is_file()]
