import hashlib
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from corpus import all_files, bad_inputs, digest, make_series, mr_small, shared_files
from helpers import free_port, start_orthanc
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.runtime.openvino import openvino_unavailable_reason

DCIODVFY = shutil.which("dciodvfy")


def infer(*args):
    return CliRunner().invoke(infer_cli, [*map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def series_out(tmp_path_factory):
    """The real VS-SEG series when present (3 slices to keep CI fast), else a series of the bundled slice."""
    tmp = tmp_path_factory.mktemp("infer")
    from corpus import SHARED_SERIES

    if SHARED_SERIES.is_dir():
        src = tmp / "in"
        src.mkdir()
        for f in shared_files(60, 62):
            shutil.copy(f, src / f.name)
    else:
        src = make_series(tmp / "in", 3)
    before = digest(all_files(src))
    res = infer(src, "--output", tmp / "out", "--json")
    assert res.exit_code == 0, res.output
    assert digest(all_files(src)) == before, "inputs must never be modified"
    return src, tmp / "out", json.loads(res.output)


def test_json_summary(series_out):
    _, out, result = series_out
    assert {"output", "n_slices", "backend", "seconds", "scale"} <= set(result)
    default = "onnxruntime" if openvino_unavailable_reason() else "openvino"  # the measured default on a CPU
    assert result["n_slices"] == 3 and result["scale"] == 4 and result["backend"] == default
    assert len(list(out.glob("*.dcm"))) == 3


def test_derived_series_geometry_uids_and_units(series_out):
    src, out, _ = series_out
    inputs = sorted((pydicom.dcmread(f) for f in src.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    outputs = [pydicom.dcmread(f) for f in sorted(out.glob("*.dcm"))]
    assert len({o.SeriesInstanceUID for o in outputs}) == 1
    assert outputs[0].SeriesInstanceUID != inputs[0].SeriesInstanceUID
    assert len({o.SOPInstanceUID for o in outputs} | {i.SOPInstanceUID for i in inputs}) == 6
    for i, o in zip(inputs, outputs):
        assert (o.StudyInstanceUID, o.PatientID, o.FrameOfReferenceUID) == (i.StudyInstanceUID, i.PatientID, i.FrameOfReferenceUID)
        assert (o.Rows, o.Columns) == (i.Rows * 4, i.Columns * 4)
        assert np.allclose([float(v) for v in o.PixelSpacing], [float(v) / 4 for v in i.PixelSpacing])
        iop = np.asarray(i.ImageOrientationPatient, float)
        sp = [float(v) for v in i.PixelSpacing]
        expected = np.asarray(i.ImagePositionPatient, float) - 3 / 8 * (iop[:3] * sp[1] + iop[3:] * sp[0])
        assert np.allclose(np.asarray(o.ImagePositionPatient, float), expected, atol=1e-6)
        assert list(o.ImageType[:2]) == ["DERIVED", "SECONDARY"] and "SR x4 MDRN" in o.SeriesDescription
        assert "mdrn-edge" in o.DerivationDescription and o.SourceImageSequence[0].ReferencedSOPInstanceUID == i.SOPInstanceUID
        assert o.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        hi = (1 << int(i.BitsStored)) - 1
        assert o.pixel_array.max() <= hi
        # values back in stored units: the mean intensity is preserved by super-resolution
        assert o.pixel_array.mean() == pytest.approx(i.pixel_array.mean(), rel=0.05)


@pytest.mark.skipif(not DCIODVFY, reason="dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
def test_output_has_no_dciodvfy_error_the_input_lacks(series_out):
    src, out, _ = series_out

    def errors(path):
        res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        return {line.strip() for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")}

    for i, o in zip(sorted(src.glob("*.dcm")), sorted(out.glob("*.dcm"))):
        new = errors(o) - errors(i)
        assert not new, new


@pytest.fixture
def orthanc(tmp_path):
    server = start_orthanc(tmp_path / "orthanc")
    yield server.dest, server.url
    server.stop()


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_a_real_pacs_accepts_the_series(tmp_path, orthanc):
    dest, base = orthanc
    src = make_series(tmp_path / "in", 2)
    res = infer(src, "--output", tmp_path / "out", "--send", dest, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["sent"] == 2
    sent = [pydicom.dcmread(f) for f in sorted((tmp_path / "out").glob("*.dcm"))]
    series = [_get(f"{base}/series/{sid}") for sid in _get(f"{base}/series")]
    assert len(series) == 1 and series[0]["MainDicomTags"]["SeriesInstanceUID"] == sent[0].SeriesInstanceUID
    assert len(series[0]["Instances"]) == 2
    tags = _get(f"{base}/instances/{series[0]['Instances'][0]}/simplified-tags")
    assert (int(tags["Rows"]), int(tags["Columns"])) == (256, 256)
    assert tags["SOPInstanceUID"] in {d.SOPInstanceUID for d in sent}
    assert tags["StudyInstanceUID"] == sent[0].StudyInstanceUID


def test_an_unreachable_pacs_is_found_before_inference_in_one_line(tmp_path):
    res = infer(mr_small(), "--output", tmp_path / "out", "--send", f"NOBODY@127.0.0.1:{free_port()}")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 8 and len(lines) == 1 and "unreachable after 3 tries" in lines[0]
    assert not (tmp_path / "out").exists()  # checked with C-ECHO first: no inference, nothing written


def test_nifti_in_nifti_out_keeps_the_world_position(tmp_path):
    vol = pydicom.dcmread(mr_small()).pixel_array.astype(np.int16)
    data = np.stack([vol.T, vol.T[::-1]], axis=2)  # (X, Y, Z)
    affine = np.array([[0.8, 0, 0, -30], [0, 0.7, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "in.nii.gz")
    res = infer(tmp_path / "in.nii.gz", "--output", tmp_path / "out.nii.gz", "--scale", "4")
    assert res.exit_code == 0, res.output
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == (256, 256, 2) and out.get_data_dtype() == np.int16
    assert np.allclose(out.header.get_zooms(), (0.2, 0.175, 3.0))
    corner = lambda img: img.affine @ np.array([-0.5, -0.5, 0, 1])  # noqa: E731  (outer corner of voxel 0)
    far = lambda img, n: img.affine @ np.array([n - 0.5, n - 0.5, 1, 1])  # noqa: E731
    assert np.allclose(corner(out), corner(nib.load(tmp_path / "in.nii.gz")))
    assert np.allclose(far(out, 256), far(nib.load(tmp_path / "in.nii.gz"), 64))
    res = infer(tmp_path / "in.nii.gz", "--output", tmp_path / "f.nii", "--nifti-dtype", "float32")
    assert nib.load(tmp_path / "f.nii").get_data_dtype() == np.float32


def test_a_study_is_handled_series_by_series(tmp_path):
    make_series(tmp_path / "study" / "a", 2, description="first")
    make_series(tmp_path / "study" / "b", 1, description="second")
    res = infer(tmp_path / "study", "--output", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["n_slices"] == 3 and len(result["series"]) == 2
    assert sorted(len(list(Path(s["output"]).glob("*.dcm"))) for s in result["series"]) == [1, 2]


def test_existing_output_is_refused_and_overwrite_replaces_only_our_own(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    res = infer(mr_small(), "--output", tmp_path / "out")
    assert res.exit_code != 0 and "already exists" in res.output and (tmp_path / "out" / "keep.txt").exists()
    res = infer(mr_small(), "--output", tmp_path / "out", "--overwrite")  # a user's folder: never replaced
    assert res.exit_code == 2 and "not written by mdrn-edge" in res.output and (tmp_path / "out" / "keep.txt").exists()
    assert infer(mr_small(), "--output", tmp_path / "sr").exit_code == 0
    first = (tmp_path / "sr" / "0001.dcm").stat().st_ino
    uid = pydicom.dcmread(tmp_path / "sr" / "0001.dcm").SOPInstanceUID
    res = infer(mr_small(), "--output", tmp_path / "sr", "--overwrite")  # an earlier result of ours: replaced
    assert res.exit_code == 0 and sorted(p.name for p in (tmp_path / "sr").iterdir()) == [".mdrn-edge-output", "0001.dcm"]
    assert (tmp_path / "sr" / "0001.dcm").stat().st_ino != first  # a new file: really rewritten
    assert pydicom.dcmread(tmp_path / "sr" / "0001.dcm").SOPInstanceUID == uid  # same source, same model: same UIDs


def _corpus_extra(tmp: Path) -> dict[str, Path]:

    cases = bad_inputs(tmp)
    big = np.zeros((6000, 6000, 1), np.uint8)
    big[::7, ::5] = 200
    nib.save(nib.Nifti1Image(big, np.eye(4)), tmp / "huge.nii.gz")
    cases["too_large_without_tile"] = tmp / "huge.nii.gz"
    return cases


def _foreign_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    onnx.save(helper.make_model(graph), path)
    return path


INPUT_CASES = {
    "not_dicom": "not a DICOM file", "truncated": "truncated", "compressed": "cannot decode pixel data",
    "no_pixel_data": "no pixel data", "two_series": None, "rgb": "RGB", "multi_frame": "multi-frame",
    "nan_nifti": "NaN/Inf", "nifti_4d": "4-D", "one_pixel": "too small", "too_large_without_tile": "--tile",
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_bad_input_corpus(tmp_path, case):
    path = _corpus_extra(tmp_path / "corpus")[case]
    before = digest(all_files(path))
    out = tmp_path / ("out.nii.gz" if "nifti" in case or "large" in case else "out")
    res = infer(path, "--output", out, *(["--tile", "off"] if case == "too_large_without_tile" else []))
    assert digest(all_files(path)) == before
    if INPUT_CASES[case] is None:  # two series in one folder: each is processed into its own folder
        assert res.exit_code == 0 and len([p for p in out.iterdir() if p.is_dir()]) == 2
        return
    lines = [line for line in res.output.splitlines() if line.strip() and not line.startswith("model ")]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert INPUT_CASES[case] in lines[0] and "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("model,expected", [
    ("missing", "no such file or shipped model"),
    ("corrupt", "cannot read it" if not openvino_unavailable_reason() else "ONNX Runtime cannot load it"),
    ("foreign", "not an mdrn-edge model"),
    ("engine", "TensorRT"),
])
def test_bad_model_files(tmp_path, model, expected):
    path = {"missing": tmp_path / "nope.onnx", "corrupt": tmp_path / "bad.onnx", "foreign": tmp_path / "relu.onnx",
            "engine": tmp_path / "m.engine"}[model]
    if model == "corrupt":
        path.write_bytes(b"\x08\x07garbage")
    elif model == "foreign":
        _foreign_onnx(path)
    elif model == "engine":
        path.write_bytes(b"plan")
        sidecar = {"format": "mdrn-edge-engine", "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
                   "engine_sha256": hashlib.sha256(b"plan").hexdigest(), "model": {"arch": "mdrn", "scale": 4, "normalizer": {"mode": "percentile", "percentile": 99.5}}}
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    res = infer(mr_small(), "--output", tmp_path / "out", "--model", path)
    assert res.exit_code != 0 and expected in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_scale_disagreeing_with_the_model_is_refused(tmp_path):
    res = infer(mr_small(), "--output", tmp_path / "out", "--model", "mdrn-x4", "--scale", "2")
    assert res.exit_code != 0 and ("x4 model" in res.output or "shipped" in res.output)


from mdrn_edge.runtime.tensorrt import tensorrt_unavailable_reason  # noqa: E402


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(tensorrt_unavailable_reason()), reason=f"TensorRT engine cannot run here: {tensorrt_unavailable_reason()}")
def test_infer_on_a_native_tensorrt_engine_matches_onnx_runtime(tmp_path):
    from mdrn_edge.cli.export import command as export_cli

    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--fp16", "--engine", "--output", str(tmp_path / "e"), "--json"])
    assert res.exit_code == 0, res.output
    engine = json.loads(res.output)["engine"]
    src = make_series(tmp_path / "in", 2)
    res = infer(src, "--output", tmp_path / "trt", "--model", engine, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["backend"] == "tensorrt"
    assert infer(src, "--output", tmp_path / "ort", "--json").exit_code == 0
    for a, b in zip(sorted((tmp_path / "trt").glob("*.dcm")), sorted((tmp_path / "ort").glob("*.dcm"))):
        diff = np.abs(pydicom.dcmread(a).pixel_array.astype(float) - pydicom.dcmread(b).pixel_array)
        assert diff.mean() < 2.0  # stored units; FP16 engine against FP32 ONNX Runtime
