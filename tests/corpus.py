"""Real test inputs, and a corpus of bad ones made from them (each exercises one refusal of the readers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
SHARED_SERIES = ROOT.parent / "shared" / "data" / "vs-seg-001-t1"
SHARED_REASON = f"{SHARED_SERIES} is absent (a clone without ../shared): the real VS-SEG series cannot be read"


def mr_small() -> Path:
    """pydicom's bundled MR_small.dcm: a real 64 x 64 T2 head slice (MIT)."""
    return Path(get_testdata_file("MR_small.dcm"))


def shared_files(first: int, last: int) -> list[Path]:
    return [SHARED_SERIES / f"1-{i:03d}.dcm" for i in range(first, last + 1)]


def real_series(folder: Path, first: int = 60, last: int = 62) -> Path:
    """Real VS-SEG slices ``first``..``last`` (512 x 512) copied into ``folder`` where ../shared is present, else as
    many slices of the bundled real slice (a lone clone)."""
    if not SHARED_SERIES.is_dir():
        return make_series(folder, last - first + 1)
    folder.mkdir(parents=True)
    for f in shared_files(first, last):
        shutil.copy(f, folder / f.name)
    return folder


def make_series(folder: Path, n: int = 3, size: int | None = None, series_uid: str | None = None,
                description: str = "sample") -> Path:
    """A small real-data series: MR_small repeated as ``n`` slices 1 mm apart (optionally cropped to ``size``)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    base = pydicom.dcmread(mr_small())
    for k in range(n):
        ds = base.copy()
        if size:
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:size, :size]).tobytes()
            ds.Rows = ds.Columns = size
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + k]
        ds.save_as(folder / f"slice{k:02d}.dcm", enforce_file_format=True)
    return folder


def noise_series(folder: Path, n: int = 2) -> Path:
    """MR headers holding pure noise: an input unlike anything the model was trained on."""
    make_series(folder, n)
    rng = np.random.default_rng(3)
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PixelData = rng.integers(0, 2000, ds.pixel_array.shape).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(f, enforce_file_format=True)
    return folder


def bad_inputs(tmp: Path) -> dict[str, Path]:
    """Name -> an input that the readers must refuse with one clear line."""
    import nibabel as nib

    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    (tmp / "notes.txt").write_text("not an image\n")
    out["not_dicom"] = tmp / "notes.txt"
    data = mr_small().read_bytes()
    (tmp / "truncated.dcm").write_bytes(data[: len(data) // 2])
    out["truncated"] = tmp / "truncated.dcm"
    out["compressed"] = Path(shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp / "jpegls.dcm"))
    ds = pydicom.dcmread(mr_small())
    del ds.PixelData
    ds.save_as(tmp / "nopixels.dcm", enforce_file_format=True)
    out["no_pixel_data"] = tmp / "nopixels.dcm"
    out["rgb"] = Path(shutil.copy(get_testdata_file("SC_rgb.dcm"), tmp / "rgb.dcm"))
    out["multi_frame"] = Path(shutil.copy(get_testdata_file("emri_small.dcm"), tmp / "multiframe.dcm"))
    mixed = tmp / "mixed"
    make_series(mixed / "a", 2, description="first")
    make_series(mixed / "b", 2, description="second")
    out["two_series"] = mixed
    out["one_pixel"] = make_series(tmp / "onepixel", 1, size=1)
    vol = np.ones((8, 8, 4), np.float32)
    vol[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp / "nan.nii.gz")
    out["nan_nifti"] = tmp / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.float32), np.eye(4)), tmp / "4d.nii.gz")
    out["nifti_4d"] = tmp / "4d.nii.gz"
    return out


def digest(paths) -> dict[str, str]:
    """SHA-256 of each file: inputs must come out of every run byte-identical."""
    import hashlib

    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def all_files(path: Path) -> list[Path]:
    return sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
