"""Issue 11, header fields: malformed or unwritable headers are one line before any inference, never a traceback;
the input stays byte-identical and nothing appears under OUT."""

import struct

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataelem import DataElement
from pydicom.uid import generate_uid

from corpus import all_files, digest, mr_small
from mdrn_edge.cli.infer import command as infer_cli


def _variant(folder, edit):
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(mr_small())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    patch = edit(ds)
    path = folder / "1.dcm"
    ds.save_as(path, enforce_file_format=False)
    if patch:  # a value pydicom would not write: patch the bytes of a valid placeholder of the same length
        good, bad = patch
        data = path.read_bytes()
        assert data.count(good) == 1
        path.write_bytes(data.replace(good, bad))
    return path


def _raw(tag, vr, value):
    """Set ``tag`` to ``value`` as the file's bytes (malformed values included): a valid placeholder of the same
    length is written, then its bytes, found by the element's explicit-VR header, are replaced."""
    value += " " * (len(value) % 2)  # DICOM values have even length
    placeholder = "1" * len(value)

    def edit(ds):
        ds[tag] = DataElement(tag, vr, placeholder)
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode() + struct.pack("<H", len(value))
        return head + placeholder.encode(), head + value.encode()
    return edit


CASES = {
    "pixel_spacing_text": (_raw(0x00280030, "DS", "abc\\1"), "PixelSpacing"),
    "pixel_spacing_one_value": (_raw(0x00280030, "DS", "0.5"), "PixelSpacing"),
    "orientation_short": (_raw(0x00200037, "DS", "1\\0\\0"), "ImageOrientationPatient"),
    "series_number_text": (_raw(0x00200011, "IS", "x1"), "SeriesNumber"),
    "rescale_slope_text": (_raw(0x00281053, "DS", "slope"), "RescaleSlope"),
    "rescale_slope_zero": (_raw(0x00281053, "DS", "0"), "RescaleSlope is 0"),
    "no_sop_class": (lambda ds: delattr(ds, "SOPClassUID"), "SOPClassUID"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_header_fields_are_one_line_before_any_work(tmp_path, case):
    edit, expected = CASES[case]
    src = _variant(tmp_path / "in", edit).parent
    before = digest(all_files(src))
    res = CliRunner().invoke(infer_cli, [str(src), "--output", str(tmp_path / "out"), "--no-progress"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert expected in lines[0] and "Traceback" not in res.output
    assert digest(all_files(src)) == before and not (tmp_path / "out").exists()


def test_a_series_number_at_the_top_of_the_is_range_stays_in_range(tmp_path):
    src = _variant(tmp_path / "in", _raw(0x00200011, "IS", "2147483000")).parent
    res = CliRunner().invoke(infer_cli, [str(src), "--output", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert int(pydicom.dcmread(tmp_path / "out" / "0001.dcm").SeriesNumber) <= 2**31 - 1


def test_an_output_beyond_dicoms_rows_and_columns_is_refused_before_inference(tmp_path):
    def wide(ds):
        ds.PixelData = np.zeros((8, 8192), np.int16).tobytes()
        ds.Rows, ds.Columns = 8, 8192

    src = _variant(tmp_path / "in", wide).parent
    res = CliRunner().invoke(infer_cli, [str(src), "--output", str(tmp_path / "out"), "--scale", "8", "--no-progress"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "beyond DICOM's 65535" in lines[0], res.output
    assert not (tmp_path / "out").exists()


def test_32_bit_pixels_are_one_line(tmp_path):
    def bits32(ds):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.PixelData = np.zeros((64, 64), np.int32).tobytes()

    src = _variant(tmp_path / "in", bits32).parent
    res = CliRunner().invoke(infer_cli, [str(src), "--output", str(tmp_path / "out"), "--no-progress"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "BitsAllocated 32" in lines[0], res.output
    assert not (tmp_path / "out").exists()
