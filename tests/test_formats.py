"""Issue 11, pixel formats, value ranges and resource claims: every input either comes out right (in its own stored
units, its own range) or is one line with a non-zero exit, the input byte-identical and nothing under OUT.
Full and unwritable disks are real: a file-size limit (RLIMIT_FSIZE) and a path under /proc, where nothing can be
created, not even by root."""

import resource
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from corpus import all_files, digest, make_series, mr_small

INFER = [sys.executable, "-m", "mdrn_edge.cli.infer"]


def run(*args, limit=None):
    """mdrn-infer in its own process, optionally under a resource limit ``(RLIMIT_x, bytes)``."""
    setup = (lambda: resource.setrlimit(limit[0], (limit[1], limit[1]))) if limit else None
    return subprocess.run([*INFER, *map(str, args), "--no-progress"], capture_output=True, text=True,
                          preexec_fn=setup, timeout=300)


def refused(res, code, *words):
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and not line.startswith("model ")]
    assert res.returncode == code and len(lines) == 1 and lines[0].startswith("Error: "), res.stdout + res.stderr
    assert "Traceback" not in res.stderr and all(w in lines[0] for w in words), lines[0]


def physical(path):
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def slice_volume(values: np.ndarray, path, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.stack([values] * 3, -1).astype(dtype), np.eye(4)), path)
    return path


# --- pixel formats ---------------------------------------------------------------------------------------------

def test_a_big_endian_series_is_read_and_written_as_valid_little_endian(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small_bigendian.dcm"), src / "1.dcm")
    before = digest(all_files(src))
    res = run(src, "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    out = pydicom.dcmread(tmp_path / "out" / "0001.dcm")
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian and out.HighBit == 15
    assert out.Rows == 4 * 64 and abs(out.pixel_array.mean() / pydicom.dcmread(src / "1.dcm").pixel_array.mean() - 1) < 0.05
    if shutil.which("dciodvfy"):
        check = subprocess.run(["dciodvfy", str(tmp_path / "out" / "0001.dcm")], capture_output=True, text=True)
        assert "Error" not in check.stdout + check.stderr, check.stderr
    assert digest(all_files(src)) == before


def test_one_bit_pixels_are_one_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(mr_small())
    mask = np.packbits(ds.pixel_array > 500).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PixelData = 1, 1, 0, 0, mask
    ds.save_as(src / "1.dcm")
    refused(run(src, "--output", tmp_path / "out"), 2, "BitsAllocated 1")
    assert not (tmp_path / "out").exists()


def test_signed_data_keeps_its_negative_values_within_its_own_range(tmp_path):
    """CT_small: signed pixels with RescaleIntercept -1024, physical values down to -896."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "1.dcm")
    res = run(src, "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    before, after = physical(src / "1.dcm"), physical(tmp_path / "out" / "0001.dcm")
    assert before.min() < -800 and after.min() < -800  # not clipped to 0 as before
    assert before.min() <= after.min() and after.max() <= before.max()
    assert abs(after.mean() - before.mean()) < 0.02 * (before.max() - before.min())


@pytest.mark.parametrize("offset", [0.0, -500.0], ids=["magnitude", "signed"])
def test_clip_series_bounds_overshoot_to_the_inputs_range_and_clip_none_does_not(tmp_path, offset):
    image = pydicom.dcmread(mr_small()).pixel_array.astype(np.float32) + offset
    src = slice_volume(image, tmp_path / "in.nii.gz")
    for clip in ("series", "none"):
        res = run(src, "--output", tmp_path / f"{clip}.nii.gz", "--clip", clip)
        assert res.returncode == 0, res.stderr
    bounded = np.asarray(nib.load(tmp_path / "series.nii.gz").dataobj)
    free = np.asarray(nib.load(tmp_path / "none.nii.gz").dataobj)
    assert image.min() <= bounded.min() and bounded.max() <= image.max()
    assert free.max() > image.max()  # the network overshoots at edges: the clip is real, and it is a choice
    assert (bounded.min() < 0) == (offset < 0)  # MR magnitude never negative, signed data keeps negatives


def test_complex_nifti_is_one_line_not_a_silently_dropped_imaginary_part(tmp_path):
    src = slice_volume(np.full((16, 16), 1 + 2j), tmp_path / "complex.nii.gz", np.complex64)
    before = digest([src])
    refused(run(src, "--output", tmp_path / "out.nii.gz"), 2, "complex-valued")
    assert digest([src]) == before and not (tmp_path / "out.nii.gz").exists()


# --- resource claims -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["claims.nii", "claims.nii.gz"])
def test_a_tiny_nifti_claiming_4_gib_is_refused_without_taking_the_memory(tmp_path, name):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4
    path = tmp_path / name
    if name.endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    # 2 GiB of address space: enough for the runtime, not for the 4 GiB the header claims
    res = run(path, "--output", tmp_path / "out.nii", limit=(resource.RLIMIT_AS, 2 << 30))
    refused(res, 2, "claims", "file holds")
    assert not (tmp_path / "out.nii").exists()


def test_a_dicom_header_claiming_more_pixels_than_the_file_holds_is_one_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(mr_small())
    ds.Rows = ds.Columns = 65535
    ds.save_as(src / "1.dcm")
    refused(run(src, "--output", tmp_path / "out", limit=(resource.RLIMIT_AS, 2 << 30)), 2, "Rows x Columns", "holds")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    src = make_series(tmp_path / "in", 3)
    before = digest(all_files(src))
    # files may not grow past 20 kB: each 256x256 16-bit output slice is 128 kB, so the first write fails as on
    # a full disk (EFBIG where ENOSPC would be; Python ignores SIGXFSZ, so the write raises)
    res = run(src, "--output", tmp_path / "out", limit=(resource.RLIMIT_FSIZE, 20_000))
    refused(res, 5, "File too large", "free space or choose a writable path")
    assert digest(all_files(src)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging folder left behind


def test_an_unwritable_output_location_is_one_line(tmp_path):
    src = make_series(tmp_path / "in", 1)
    refused(run(src, "--output", "/proc/mdrn-edge-out"), 5, "writable path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


# --- model files -----------------------------------------------------------------------------------------------

MODEL_FILE_CASES = {
    "scale_text": (lambda info: info.update(scale="four"), "scale must be a positive integer"),
    "unknown_key": (lambda info: info.update(colour="red"), "unknown model info keys"),
    "bad_normaliser": (lambda info: info.update(normalizer={"mode": "zscore"}), "normaliser mode"),
    "not_json": ("{not json", "not JSON"),
    "no_metadata": (None, "not an mdrn-edge model"),
}


@pytest.mark.parametrize("case", sorted(MODEL_FILE_CASES))
def test_bad_model_metadata_is_one_line(tmp_path, case):
    import json

    import onnx

    from mdrn_edge.runtime import resolve_model_file

    edit, expected = MODEL_FILE_CASES[case]
    model = onnx.load(resolve_model_file("mdrn-x4", None))
    prop = next(p for p in model.metadata_props if p.key == "mdrn_edge")
    if edit is None:
        model.metadata_props.remove(prop)
    elif isinstance(edit, str):
        prop.value = edit
    else:
        info = json.loads(prop.value)
        edit(info)
        prop.value = json.dumps(info)
    onnx.save(model, tmp_path / "model.onnx")
    res = run(mr_small(), "--output", tmp_path / "out", "--model", tmp_path / "model.onnx")
    refused(res, 3, expected)
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_a_cuda_provider_is_one_line_not_a_silent_cpu_run(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: --device cuda runs on the GPU here")
    res = run(mr_small(), "--output", tmp_path / "out", "--device", "cuda")
    refused(res, 4, "--device cuda", "no CUDA provider")
    assert not (tmp_path / "out").exists()
