"""Write a super-resolved volume back in the input's own format: a derived DICOM series, or NIfTI.

DICOM, after highdicom's conventions: same patient and study; a new series with UIDs from pydicom's generator;
ImageType DERIVED\\SECONDARY with DerivationDescription and SourceImageSequence for provenance; Rows/Columns
times s, PixelSpacing divided by s and ImagePositionPatient moved to the new first pixel centre; values back in
the input's stored units; explicit VR little endian.

Marked as an AI-derived image the way the standard allows: a ContributingEquipmentSequence item for mdrn-edge
(version, model name and the model file's SHA-256, purpose 109102 "Processing Equipment"), DerivationCodeSequence
113085 "Spatial resampling", BurnedInAnnotation NO. SyntheticData (0008,001C) is left out: Debian's dciodvfy
reports it as an error. Each instance carries its slice's checks (:mod:`mdrn_edge.runtime.checks`) in
ImageComments, for a person at a viewer, and in the private block :data:`PRIVATE_CREATOR` of group
:data:`PRIVATE_GROUP`, for software: consistency_db (DS), grid_energy (DS), uncertainty (DS, when computed),
flagged (CS YES/NO), reason (LT), enforced (CS YES/NO); see :data:`PRIVATE_ELEMENTS`. Where asked, a second
derived series holds each slice's uncertainty map (:class:`UncertaintyMapWriter`).
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import mdrn_edge
from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError

LO_MAX = 64  # SeriesDescription is LO
US_MAX = 65535  # Rows and Columns are US
IS_MAX = 2**31 - 1  # SeriesNumber is IS
SERIES_NUMBER_OFFSET = 1000  # the derived series' number: the source's + 1000, where that stays within IS
STORED_DTYPES = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0077, "MDRN-EDGE CHECKS 1"
PRIVATE_ELEMENTS = {"consistency_db": (0x10, "DS"), "grid_energy": (0x11, "DS"), "uncertainty": (0x12, "DS"),
                    "flagged": (0x13, "CS"), "reason": (0x14, "LT"), "enforced": (0x15, "CS")}
LT_MAX = 10240


def check_derivable(volume: Volume, scale: int) -> None:
    """Refuse, before any inference, a DICOM series whose derived series could not be written: every problem
    is one line naming the file and the field (storable pixel formats, the output's size; the numeric fields the
    writer reads were checked by the reader, :func:`~mdrn_edge.data.dicom.clean_header`)."""
    for path, ds in zip(volume.sources, volume.headers):
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not str(ds.get(keyword, "")).strip():
                raise InputError(f"{path}: no {keyword}; a derived series must reference its source, fix the header")
        key = (int(ds.get("BitsAllocated", 0) or 0), int(ds.get("PixelRepresentation", 0) or 0) == 1)
        if key not in STORED_DTYPES:
            raise InputError(f"{path}: BitsAllocated {key[0]} cannot be written back (8 or 16 bits only); convert the "
                             "series (e.g. to NIfTI) and super-resolve that")
        rows, cols = int(ds.Rows) * scale, int(ds.Columns) * scale
        if max(rows, cols) > US_MAX:
            raise InputError(f"{path}: the x{scale} output would be {rows}x{cols}, beyond DICOM's {US_MAX} rows/columns; "
                             "use a smaller scale or NIfTI output")


def subpixel_shift(scale: int) -> float:
    """Offset, in input pixels, from an input pixel centre to the centre of the first of its s x s output pixels."""
    return -(scale - 1) / (2 * scale)


def to_stored(values: np.ndarray, ds) -> np.ndarray:
    """Physical values -> stored integers: undo RescaleSlope/Intercept, round, clip to the BitsStored range."""
    slope = float(ds.get("RescaleSlope", 1) or 1)  # checked by the reader
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = STORED_DTYPES[(int(ds.BitsAllocated), signed)]
    return np.clip(np.rint((values - intercept) / slope), lo, hi).astype(dtype)


def _remove_stale(ds) -> None:
    """Drop what no longer describes the new pixels: overlays, icons, pixel extremes."""
    for tag in list(ds.keys()):
        if 0x6000 <= tag.group <= 0x60FF:
            del ds[tag]
    for keyword in ("IconImageSequence", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)


def _code(value: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def mark_ai_derived(ds, scale: int, model_name: str, model_sha256: str, now: datetime) -> None:
    """Say in standard attributes that mdrn-edge derived the image: contributing equipment, derivation code,
    no burned-in annotation (see the module docstring)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.Manufacturer = "mdrn-edge"
    item.ManufacturerModelName = model_name[:LO_MAX]
    item.SoftwareVersions = mdrn_edge.__version__
    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = (f"Super-resolution x{scale} by the model {model_name}"
                                    + (f", model file SHA-256 {model_sha256}" if model_sha256 else ""))
    item.PurposeOfReferenceCodeSequence = [_code("109102", "Processing Equipment")]
    ds.ContributingEquipmentSequence = [*ds.get("ContributingEquipmentSequence", []), item]
    ds.DerivationCodeSequence = [_code("113085", "Spatial resampling")]
    ds.BurnedInAnnotation = "NO"


def _ds(value: float) -> str:
    """A number as a DICOM DS (16 characters at most)."""
    return f"{value:.6g}"[:16]


def record_checks(ds, check) -> None:
    """One slice's checks (:class:`~mdrn_edge.runtime.checks.SliceCheck`) in ImageComments and our private block."""
    spread = "not computed" if check.uncertainty is None else f"{check.uncertainty:.4g}"
    line = (f"mdrn-edge checks: consistency {check.consistency_db:.1f} dB, grid energy {check.grid_energy:.3f}, "
            f"uncertainty {spread}" + (", consistency enforced" if check.enforced else "")
            + (f"; FLAGGED: {check.reason}" if check.flagged else "; not flagged"))
    earlier = str(ds.get("ImageComments", "") or "")
    ds.ImageComments = (f"{earlier} | {line}" if earlier else line)[-LT_MAX:]
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    values = {"consistency_db": _ds(check.consistency_db), "grid_energy": _ds(check.grid_energy),
              "uncertainty": None if check.uncertainty is None else _ds(check.uncertainty),
              "flagged": "YES" if check.flagged else "NO", "reason": check.reason[:LT_MAX] or None,
              "enforced": "YES" if check.enforced else "NO"}
    for name, (element, vr) in PRIVATE_ELEMENTS.items():
        if values[name] is not None:
            block.add_new(element, vr, values[name])


def derived_slice(src, scale: int, series_uid: str, description: str, derivation: str, now: datetime,
                  number_offset: int = SERIES_NUMBER_OFFSET):
    """The derived slice's header (everything but PixelData, which :func:`save_with_pixels` appends); its
    SeriesNumber is the source's + ``number_offset`` where that stays within IS."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    ds = copy.deepcopy(src)
    _remove_stale(ds)
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(src.SOPInstanceUID)])  # deterministic, as the series'
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_uid, series_uid
    ds.SeriesDescription = description
    ds.ImageType = ["DERIVED", "SECONDARY", *list(src.get("ImageType", []))[2:]]
    ds.DerivationDescription = derivation
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    ds.SourceImageSequence = [ref]
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if "SeriesNumber" in src and src.SeriesNumber not in (None, ""):
        number = int(float(src.SeriesNumber))
        ds.SeriesNumber = number + number_offset if number + number_offset <= IS_MAX else number
    ds.Rows, ds.Columns = int(src.Rows) * scale, int(src.Columns) * scale
    if "PixelSpacing" in src:
        row_sp, col_sp = (float(v) for v in src.PixelSpacing)
        ds.PixelSpacing = [f"{row_sp / scale:.10g}", f"{col_sp / scale:.10g}"]
        if "ImagePositionPatient" in src and "ImageOrientationPatient" in src:
            iop = np.asarray(src.ImageOrientationPatient, float)
            shift = subpixel_shift(scale)
            ipp = np.asarray(src.ImagePositionPatient, float) + iop[:3] * col_sp * shift + iop[3:] * row_sp * shift
            ds.ImagePositionPatient = [f"{v:.10g}" for v in ipp]
    for tag in [t for t in ds.keys() if t.group > PIXEL_DATA_GROUP]:  # e.g. digital signatures of the source
        del ds[tag]
    return ds


PIXEL_DATA_GROUP = 0x7FE0


def save_with_pixels(ds, pixels: np.ndarray, path: Path) -> None:
    """Write ``ds`` with ``pixels`` (stored integers) as its PixelData, explicit VR little endian.

    pydicom holds several copies of the pixel data while it writes (an 8192 x 8192 slice: four of 128 MB); here
    pydicom writes the header and the pixels follow straight from the array: PixelData is the last element of the
    data set, (7FE0,0010) with VR OW (OB for 8-bit) and an explicit 32-bit length."""
    import struct

    from pydicom.filewriter import dcmwrite

    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    vr = b"OW" if pixels.itemsize > 1 else b"OB"
    with open(path, "wb") as f:
        dcmwrite(f, ds, enforce_file_format=True)
        f.write(struct.pack("<HH2sHI", PIXEL_DATA_GROUP, 0x0010, vr, 0, pixels.nbytes + pixels.nbytes % 2))
        f.write(memoryview(pixels).cast("B"))
        if pixels.nbytes % 2:
            f.write(b"\0")  # DICOM values have even length


def derived_series_uid(source_series_uid: str, model_name: str, scale: int, kind: str = "") -> str:
    """The derived series' SeriesInstanceUID, a function of its source series and the model (and ``kind``, for a
    series other than the SR slices: ``uncertainty``): the same series super-resolved again by the same model gets
    the same UIDs, so a PACS replaces instead of duplicating, and a node can ask Orthanc whether it already holds
    the result (``mdrn-node`` with a new state folder)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["mdrn-edge derived series", source_series_uid, model_name, f"x{scale}",
                                      *([kind] if kind else [])])


class DicomSeriesWriter:
    """Writes one derived DICOM file per slice into an existing folder, slice by slice as results arrive."""

    kind = ""  # what the series holds besides the SR slices (its UID's and description's difference)
    number_offset = SERIES_NUMBER_OFFSET

    def __init__(self, volume: Volume, scale: int, folder: Path, model_name: str, backend: str,
                 model_sha256: str = "") -> None:
        self.volume, self.scale, self.folder = volume, scale, folder
        self.model_name, self.model_sha256 = model_name, model_sha256
        self.checks: dict[int, Any] = {}  # slice index -> its SliceCheck, told before the slice is written
        self.series_uid = derived_series_uid(str(volume.headers[0].get("SeriesInstanceUID", "")), model_name, scale,
                                             self.kind)
        self.now = datetime.now()
        suffix = f" SR x{scale} MDRN" + (f" {self.kind.upper()}" if self.kind else "")
        self.description = (str(volume.headers[0].get("SeriesDescription", ""))[: LO_MAX - len(suffix)] + suffix).strip()
        self.derivation = (f"Super-resolved x{scale} by mdrn-edge {mdrn_edge.__version__} ({model_name}, {backend}); "
                           "not for primary diagnosis")
        self.files: list[Path] = []

    def report(self, check) -> None:
        """Keep a slice's checks for its file (the pipeline reports them before the slice is written)."""
        self.checks[check.index] = check

    def encode(self, k: int, values: np.ndarray) -> np.ndarray:
        """Physical values of slice ``k`` (or some of its rows) as the integers its file stores."""
        return to_stored(values, self.volume.headers[k])

    def write(self, first: int, slices: np.ndarray) -> None:
        """Write slices ``first, first + 1, ...`` given as stored integers (see :meth:`encode`)."""
        for k, pixels in enumerate(slices, start=first):
            self._save(self.header(k), pixels, k)

    def header(self, k: int):
        """Slice ``k``'s derived header, marked and with its checks where known."""
        ds = derived_slice(self.volume.headers[k], self.scale, self.series_uid, self.description, self.derivation,
                           self.now, self.number_offset)
        mark_ai_derived(ds, self.scale, self.model_name, self.model_sha256, self.now)
        if k in self.checks:
            record_checks(ds, self.checks[k])
        return ds

    def _save(self, ds, pixels: np.ndarray, k: int) -> None:
        path = self.folder / f"{k + 1:04d}.dcm"
        save_with_pixels(ds, pixels, path)
        self.files.append(path)


UNCERTAINTY_FOLDER = "uncertainty"  # the map series' folder, inside its SR series' folder


class UncertaintyMapWriter(DicomSeriesWriter):
    """The self-ensemble's per-pixel spread of each SR slice as a second derived series a viewer can overlay on the
    SR series: the same geometry, frame of reference and study, its own series UID (a function of the source, the
    model and ``uncertainty``), one instance per slice carrying that slice's checks.

    Pixels are the standard deviation over the 8 flips/rotations in the input's physical units, through
    RescaleSlope (``stored x slope``, unsigned, all the stored bits): the slope spends the stored range on the
    series' value range, so a spread of a few units keeps its resolution; MONOCHROME2 (brighter is less certain)
    and a window per instance up to its 99.5th percentile. An MR source makes the map an MR instance with a Modality
    LUT, which dciodvfy reports as a warning ("not expected ... in standard MR IOD"), not an error."""

    kind = "uncertainty"
    number_offset = 2 * SERIES_NUMBER_OFFSET  # apart from the SR series'

    def __init__(self, volume: Volume, scale: int, folder: Path, model_name: str, backend: str,
                 model_sha256: str = "") -> None:
        super().__init__(volume, scale, folder, model_name, backend, model_sha256)
        low, high = volume.value_range
        self.span = max(high - low, 1e-6)
        self.derivation = (f"Uncertainty of the x{scale} super-resolution by mdrn-edge {mdrn_edge.__version__} "
                           f"({model_name}, {backend}): per-pixel standard deviation over the 8 flips/rotations of the "
                           "input (self-ensemble); not for primary diagnosis")

    def write_map(self, check, values: np.ndarray) -> None:
        """Write slice ``check.index``'s map from its spread in the input's physical units."""
        k = check.index
        self.checks[k] = check
        ds = self.header(k)
        bits = int(ds.BitsAllocated)
        top = (1 << bits) - 1
        slope = self.span / top
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), "0"
        for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit", "VOILUTSequence", "WindowCenterWidthExplanation",
                        "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
        width = max(float(np.percentile(values, 99.5)), slope)
        ds.WindowCenter, ds.WindowWidth = _ds(width / 2), _ds(width)
        stored = np.clip(np.rint(values / float(ds.RescaleSlope)), 0, top).astype(STORED_DTYPES[(bits, False)])
        self._save(ds, stored, k)


NIFTI_MARK = "mdrn-edge super-resolved"


def is_our_nifti(path: Path) -> bool:
    """Whether ``path`` is a NIfTI file mdrn-infer wrote (its header's description carries our mark)."""
    import nibabel as nib

    try:
        return bytes(nib.load(str(path)).header["descrip"]).startswith(NIFTI_MARK.encode())
    except Exception:
        return False


def write_nifti(volume: Volume, sr: np.ndarray, scale: int, path: Path, dtype: str = "keep") -> Path:
    """NIfTI with in-plane voxels divided by ``scale`` and the affine moved so the volume stays where it was.

    ``keep`` stores the values as the input stored them: its data type, its scl_slope/scl_inter (none when it had
    none: integer input comes back as integers of the same type, rounded, within the type's range), and its qform
    and sform codes (scanner stays scanner); ``float32`` writes float32 values."""
    import nibabel as nib

    header, affine = volume.headers
    zoom = np.diag([1.0 / scale, 1.0 / scale, 1.0, 1.0])
    zoom[:2, 3] = subpixel_shift(scale)  # new voxel centres in old voxel coordinates
    new_affine = affine @ zoom
    data = np.moveaxis(sr, 0, 2)
    header = header.copy()
    header.set_data_shape(data.shape)
    stored = np.dtype(header.get_data_dtype())
    slope, inter = volume.meta.get("scaling", (1.0, 0.0))
    if dtype == "float32" or stored.kind == "f":
        img = nib.Nifti1Image(data.astype(np.float32 if dtype == "float32" else stored), new_affine, header=header)
    else:  # the input's own integers: undo its scaling, round, clip to its type
        limits = np.iinfo(stored)
        ints = np.clip(np.rint((data - inter) / slope), limits.min, limits.max).astype(stored)
        img = nib.Nifti1Image(ints, new_affine, header=header)
        if (slope, inter) != (1.0, 0.0):
            img.header.set_slope_inter(slope, inter)
    img.set_qform(new_affine, code=int(header["qform_code"]))
    img.set_sform(new_affine, code=int(header["sform_code"]))
    zooms = list(header.get_zooms())
    img.header.set_zooms((zooms[0] / scale, zooms[1] / scale, *zooms[2:]))
    if dtype == "float32":
        img.set_data_dtype(np.float32)
    img.header["descrip"] = f"{NIFTI_MARK} x{scale}".encode()[:79]  # how --overwrite knows the file is ours
    nib.save(img, str(path))
    return path
