import nibabel as nib
import numpy as np
import pydicom
import pytest

from corpus import bad_inputs, make_series, mr_small, shared_files
from mdrn_edge.data import read_volume
from mdrn_edge.data.dicom import read_dicom_study
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import InputError


def test_reads_the_bundled_slice_in_physical_units():
    v = read_volume([mr_small()])
    ds = pydicom.dcmread(mr_small())
    assert v.data.shape == (1, 64, 64) and v.data.dtype == np.float32
    assert np.array_equal(v.data[0], ds.pixel_array.astype(np.float32))
    assert "PixelData" not in v.headers[0] and v.headers[0].SOPInstanceUID == ds.SOPInstanceUID


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    ds = pydicom.dcmread(mr_small())
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.save_as(tmp_path / "r.dcm")
    assert np.array_equal(read_volume([tmp_path / "r.dcm"]).data[0], ds.pixel_array * 2.0 - 100)


def test_slices_are_ordered_along_the_normal_not_by_file_name(tmp_path):
    folder = make_series(tmp_path / "s", 4)
    files = sorted(folder.iterdir())
    # scramble: give the file names the reverse of their positions
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0, 0, float(10 - k)]
        ds.PixelData = np.full((64, 64), k, np.int16).tobytes()
        ds.save_as(f)
    v = read_volume([folder])
    assert [int(s[0, 0]) for s in v.data] == [3, 2, 1, 0]


def test_instance_number_is_the_fallback_order(tmp_path):
    folder = make_series(tmp_path / "s", 3)
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.InstanceNumber = 3 - k
        ds.PixelData = np.full((64, 64), k, np.int16).tobytes()
        ds.save_as(f)
    assert [int(s[0, 0]) for s in read_volume([folder]).data] == [2, 1, 0]


def test_reads_the_real_vs_seg_series_in_slice_order(shared_series):
    v = read_volume(shared_files(1, 5))
    assert v.data.shape == (5, 512, 512) and v.data.max() <= 1826
    z = [float(h.ImagePositionPatient[2]) for h in v.headers]
    assert z == sorted(z)


def test_a_study_folder_is_split_into_series(tmp_path):
    make_series(tmp_path / "study" / "a", 2, description="first")
    make_series(tmp_path / "study" / "b", 3, description="second")
    vols = read_dicom_study([tmp_path / "study"])
    assert sorted(v.n_slices for v in vols) == [2, 3]


def test_nifti_volume_reads_axial_slices(tmp_path):
    arr = np.random.default_rng(0).random((20, 24, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([0.5, 0.5, 2, 1])), tmp_path / "v.nii.gz")
    v = read_volume([tmp_path / "v.nii.gz"])
    assert v.data.shape == (5, 20, 24) and np.allclose(v.data[2], arr[:, :, 2])


EXPECTED = {
    "not_dicom": "not a DICOM file",
    "truncated": "truncated",
    "compressed": "cannot decode pixel data",
    "no_pixel_data": "has no pixel data",
    "rgb": "RGB",
    "multi_frame": "multi-frame",
    "two_series": "2 series mixed",
    "nan_nifti": "NaN/Inf",
    "nifti_4d": "4-D",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input_is_refused_with_one_clear_line(tmp_path, case):
    path = bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as err:
        read_volume([path])
    message = str(err.value)
    assert EXPECTED[case] in message and "\n" not in message
    assert str(path.name) in message or str(path) in message


def test_fixed_normaliser_is_the_papers_clip_and_divide():
    x = np.array([-5, 0, 1000, 2000, 2500], np.float32)
    n = Normalizer.paper().fit(x)
    assert np.allclose(n.normalize(x), [0, 0, 0.5, 1, 1])
    inside = np.array([0, 123.5, 1999], np.float32)
    assert np.allclose(n.denormalize(n.normalize(inside)), inside)


def test_percentile_normaliser_fits_inverts_exactly_and_round_trips():
    vol = np.random.default_rng(0).gamma(2, 300, (4, 32, 32)).astype(np.float32)
    n = Normalizer().fit(vol)
    assert float(n.scale) == pytest.approx(np.percentile(vol, 99.5))
    assert np.allclose(n.denormalize(n.normalize(vol)), vol, rtol=1e-6)
    assert Normalizer.from_dict(Normalizer().to_dict()) == Normalizer()
    with pytest.raises(ValueError, match="unknown normaliser keys"):
        Normalizer.from_dict({**Normalizer().to_dict(), "gain": 2})


def test_minmax_normaliser_is_per_slice_and_inverts_chunk_by_chunk():
    vol = np.stack([np.linspace(-100, 300, 64).reshape(8, 8), np.linspace(5, 7, 64).reshape(8, 8)]).astype(np.float32)
    n = Normalizer.minmax().fit(vol)
    x = n.normalize(vol)
    assert np.allclose(x.min(axis=(1, 2)), 0) and np.allclose(x.max(axis=(1, 2)), 1)
    assert np.allclose(n.denormalize(x[1:], first=1), vol[1:], atol=1e-4)  # the second slice alone
    assert np.allclose(n.denormalize(x), vol, atol=1e-4)


def test_percentile_normaliser_maps_different_scanners_to_the_same_range():
    rng = np.random.default_rng(0)
    a = rng.gamma(2, 300, (2, 32, 32)).astype(np.float32)
    b = a * 7.3  # the same anatomy from a scanner with another value range
    na, nb = Normalizer().fit(a).normalize(a), Normalizer().fit(b).normalize(b)
    assert np.allclose(na, nb, atol=1e-5)
