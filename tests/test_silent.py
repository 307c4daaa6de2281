"""Issue 25's classes: what still ended in a traceback, a line that was not ours, a forged line or a silently short
series. Each case runs the real command in a fresh process (so that C-level and library output is seen too) and
asserts the exit code, one line, inputs byte-identical and nothing partial."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from corpus import all_files, digest, make_series, mr_small
from helpers import start_orthanc


def run(*args, tool="infer"):
    """``mdrn <tool> ARGS`` in a fresh process: (exit code, non-empty stderr lines, stdout)."""
    res = subprocess.run([sys.executable, "-m", f"mdrn_edge.cli.{tool}", *map(str, args)], capture_output=True, text=True,
                         timeout=600)
    return res.returncode, [line for line in res.stderr.splitlines() if line.strip()], res.stdout


def refused(code, lines, expected_code, *words):
    return code == expected_code and len(lines) == 1 and lines[0].startswith("Error: ") and all(w in lines[0] for w in words)


def edited_series(folder: Path, **fields) -> Path:
    """A 3-slice series with header fields set: ``""`` makes a field present but empty; a text where numbers are
    expected is stored with a text VR, as archives hold them."""
    make_series(folder, 3)
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, value in fields.items():
            if value and not value[0].isdigit():
                ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "LO", value)
            else:
                setattr(ds, keyword, value)
        ds.save_as(f)
    return folder


# --- headers: one rule for empty and ill-typed values ------------------------------------------------------------

@pytest.mark.parametrize("field", ["PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
                                   "NumberOfFrames", "InstanceNumber", "SeriesNumber"])
def test_a_present_but_empty_numeric_field_counts_as_absent(tmp_path, field):
    src = edited_series(tmp_path / "in", **{field: ""})
    before = digest(all_files(src))
    code, lines, _ = run(src, "--output", tmp_path / "out", "--no-progress")
    ours = ("model ", "checks: no slice flagged")  # what every run says: its model, and its checks (none flagged)
    assert code == 0 and not [line for line in lines if not line.startswith(ours)], lines
    out = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(out) == 3 and digest(all_files(src)) == before
    for f in out:
        ds = pydicom.dcmread(f)
        assert all(np.isfinite(float(v)) for v in ds.get("ImagePositionPatient", []))  # never NaN in a header


@pytest.mark.parametrize("field,value", [("NumberOfFrames", "abc"), ("InstanceNumber", "x1"), ("PixelSpacing", "a\\b")])
def test_a_numeric_field_that_is_not_a_number_is_one_line_naming_it(tmp_path, field, value):
    src = edited_series(tmp_path / "in", **{field: value})
    code, lines, _ = run(src, "--output", tmp_path / "out", "--no-progress")
    assert refused(code, lines, 2, field, "slice00.dcm"), lines
    assert not (tmp_path / "out").exists()


def test_a_slice_narrower_than_the_tile_overlap_runs_under_tile_auto(tmp_path):
    src = make_series(tmp_path / "in", 1)
    f = next(src.glob("*.dcm"))
    ds = pydicom.dcmread(f)
    arr = np.ascontiguousarray(np.tile(ds.pixel_array, (5, 1))[:300, :6])
    ds.PixelData, (ds.Rows, ds.Columns) = arr.tobytes(), arr.shape
    ds.save_as(f)
    code, lines, _ = run(src, "--output", tmp_path / "out", "--no-progress", "--scale", "2")
    assert code == 0, lines
    assert pydicom.dcmread(next((tmp_path / "out").glob("*.dcm"))).pixel_array.shape == (600, 12)


# --- paths and model files ------------------------------------------------------------------------------------------

def test_a_symbolic_link_loop_as_input_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code, lines, _ = run(tmp_path / "loop", "--output", tmp_path / "out")
    assert refused(code, lines, 2, "symbolic"), lines


def _model(tmp_path: Path, kind: str) -> Path:
    import onnx

    from mdrn_edge.runtime import resolve_model_file

    model = onnx.load(str(resolve_model_file(None, 4)))
    if kind == "fixed":
        for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 1, 64, 64)):
            dim.ClearField("dim_param")
            dim.dim_value = size
    else:
        model.graph.input[0].name = "image"
        for node in model.graph.node:
            node.input[:] = ["image" if name == "lr" else name for name in node.input]
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind,words", [("fixed", "1x1x64x64"), ("renamed", "'image'")])
def test_a_model_graph_unlike_its_metadata_is_one_line(tmp_path, backend, kind, words):
    from mdrn_edge.runtime.openvino import openvino_unavailable_reason

    if backend == "openvino" and openvino_unavailable_reason():
        pytest.skip(openvino_unavailable_reason())
    code, lines, _ = run(mr_small(), "--output", tmp_path / "out", "--model", _model(tmp_path, kind), "--backend", backend)
    assert refused(code, lines, 3, words, "re-export"), lines
    assert not (tmp_path / "out").exists()


def test_an_engine_sidecar_that_is_json_but_not_an_object_is_one_line(tmp_path):
    (tmp_path / "m.engine").write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text("[1, 2]")
    code, lines, _ = run(mr_small(), "--output", tmp_path / "out", "--model", tmp_path / "m.engine")
    assert refused(code, lines, 3, "not an mdrn-edge engine sidecar"), lines


def test_a_compressed_slice_that_cannot_be_decoded_is_our_line_alone(tmp_path):
    from pydicom.data import get_testdata_file

    code, lines, _ = run(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), "--output", tmp_path / "out")
    assert refused(code, lines, 2, "cannot decode"), lines


# --- a series is never written short in silence -------------------------------------------------------------------

def _damage(src: Path, how: str) -> str:
    victim = sorted(src.glob("*.dcm"))[1]
    if how == "empty":
        victim.write_bytes(b"")
    elif how == "truncated":
        victim.write_bytes(victim.read_bytes()[:100])
    else:  # a slice in a sub-folder that cannot be read: a link to nothing
        victim.unlink()
        (src / "sub").mkdir()
        victim = src / "sub" / victim.name
        victim.symlink_to(src / "gone.dcm")
    return victim.name


@pytest.mark.parametrize("how", ["empty", "truncated", "broken link"])
def test_a_series_missing_a_slice_is_refused_naming_it_or_written_only_when_asked(tmp_path, how):
    src = make_series(tmp_path / "in", 3)
    name = _damage(src, how)
    before = digest(all_files(src))
    code, lines, _ = run(src, "--output", tmp_path / "out", "--no-progress")
    assert refused(code, lines, 2, name, "--allow-missing"), lines
    assert not (tmp_path / "out").exists()
    code, lines, stdout = run(src, "--output", tmp_path / "out", "--no-progress", "--allow-missing", "--json")
    assert code == 0, lines
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2 and any(name in line for line in lines)
    assert name in json.loads(stdout)["skipped"]
    assert digest(all_files(src)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root, which reads every folder: a permission-denied "
                                              "sub-folder cannot be made (the broken-link case covers the rule)")
def test_a_sub_folder_that_cannot_be_listed_is_one_line(tmp_path):
    src = make_series(tmp_path / "in", 2)
    (src / "locked").mkdir()
    (src / "locked").chmod(0)
    try:
        code, lines, _ = run(src, "--output", tmp_path / "out")
        assert refused(code, lines, 5, "locked"), lines
    finally:
        (src / "locked").chmod(0o755)


# --- untrusted text never forges a line ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a\nError: forged.txt", "b\r\x1b[2Kc.txt"])
def test_a_file_name_with_control_characters_stays_on_one_line(tmp_path, name):
    bad = tmp_path / name
    bad.write_text("not an image")
    code, lines, _ = run(bad, "--output", tmp_path / "out")
    assert refused(code, lines, 2, "not a DICOM file"), lines
    assert "\\n" in lines[0] or "\\r" in lines[0]


def test_a_usage_error_listing_choices_is_one_line():
    code, lines, _ = run("x", tool="main")
    code, lines, _ = run("eval", "x", tool="main")
    assert code == 2 and len(lines) == 1 and "--scale" in lines[0], lines


# --- export and training leave nothing behind ----------------------------------------------------------------------

def test_a_failed_fp16_gate_names_the_final_file_and_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "exports"
    code, lines, _ = run("mdrn-x4", "--fp16", "--max-psnr-drop", "-1", "--no-engine", "--output", out, "--json", tool="export")
    assert refused(code, lines, 6, str(out / "mdrn-x4.fp16.onnx"), "nothing was written"), lines
    assert ".mdrn-export-" not in lines[0] and not (tmp_path / "new").exists()


def test_a_refused_pickled_checkpoint_is_named_and_makes_no_run_folder(tmp_path):
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"format": "mdrn-edge-checkpoint", "x": Payload()}, tmp_path / "evil.pt")
    code, lines, _ = run("--data", mr_small(), "--val", mr_small(), "--init-from", tmp_path / "evil.pt", "--output",
                         tmp_path / "run", "--iterations", "2", "--patch", "32", "--no-progress", tool="train")
    assert refused(code, lines, 3, "evil.pt", "system"), lines
    assert not (tmp_path / "run").exists()


# --- the PACS and NIfTI storage ---------------------------------------------------------------------------------------

def test_a_pacs_that_refuses_c_echo_but_accepts_stores_gets_the_series(tmp_path):
    pacs = start_orthanc(tmp_path / "pacs", "PACS", config={"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": True})
    try:
        src = make_series(tmp_path / "in", 2)
        code, lines, stdout = run(src, "--output", tmp_path / "out", "--send", pacs.dest, "--no-progress")
        assert code == 0, lines
        assert any("refused C-ECHO" in line and "trying the store" in line for line in lines)
        assert "stored 2" in stdout and len(pacs.get("/instances")) == 2
    finally:
        pacs.stop()


def test_nifti_output_is_stored_as_the_input_was(tmp_path):
    import nibabel as nib

    data = (np.asarray(pydicom.dcmread(mr_small()).pixel_array)[:, :, None] * np.ones((1, 1, 3))).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, tmp_path / "in.nii.gz")
    code, lines, _ = run(tmp_path / "in.nii.gz", "--output", tmp_path / "out.nii.gz", "--scale", "2", "--no-progress")
    assert code == 0, lines
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.get_data_dtype() == np.int16 and (out.dataobj.slope, out.dataobj.inter) == (1.0, 0.0)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    assert np.asarray(out.dataobj).max() <= data.max()  # within the input's own range, as integers


def test_a_pacs_that_takes_stores_only_from_known_senders_is_told_our_title(tmp_path):
    """Orthanc storing only from declared modalities: C-ECHO passes, the C-STORE is cut off. The line says which
    calling AE title was used and how to change it; the output is kept and goes through with --calling-aet."""
    pacs = start_orthanc(tmp_path / "pacs", "PACS", {"KNOWN": ["KNOWN", "127.0.0.1", 4000]},
                         config={"DicomAlwaysAllowStore": False, "DicomCheckModalityHost": False})
    try:
        src = make_series(tmp_path / "in", 2)
        code, lines, _ = run(src, "--output", tmp_path / "out", "--send", pacs.dest, "--no-progress")
        errors = [line for line in lines if not line.startswith("model ")]
        assert code == 8 and len(errors) == 1 and "MDRN_EDGE" in errors[0] and "--calling-aet" in errors[0], lines
        assert len(list((tmp_path / "out").glob("*.dcm"))) == 2 and not pacs.get("/instances")  # kept, nothing sent
        code, lines, stdout = run("send", tmp_path / "out", "--to", pacs.dest, "--calling-aet", "KNOWN", tool="main")
        assert code == 0 and "stored 2" in stdout and len(pacs.get("/instances")) == 2, lines
    finally:
        pacs.stop()


def test_an_association_rejected_for_our_title_says_so(tmp_path):
    pacs = start_orthanc(tmp_path / "pacs", "PACS", {"KNOWN": ["KNOWN", "127.0.0.1", 4000]},
                         config={"DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
                                 "DicomCheckModalityHost": False})
    try:
        code, lines, _ = run(mr_small(), "--output", tmp_path / "out", "--send", pacs.dest, "--calling-aet", "STRANGER")
        assert refused(code, lines, 8, "from STRANGER", "calling AE title not recognised"), lines
        assert not (tmp_path / "out").exists()  # checked before any inference
    finally:
        pacs.stop()


# --- what the user reads (#26) -----------------------------------------------------------------------------------

def test_a_missing_torch_names_what_installs_it_from_a_clone(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mdrn_edge.cli.main import main\n"
            f"main(['eval', {str(mr_small())!r}, '--scale', '4'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 4 and len(lines) == 1, res.stderr
    assert "pip install torch==2.13.0" in lines[0] and "[train]'" in lines[0] and "mdrn-edge[train]" not in lines[0]


@pytest.mark.parametrize("tool,absent,present", [("train", "%%", "50 % and 75 %"), ("node", "one machine-readable",
                                                                                     "one per line")])
def test_help_says_what_the_tool_does(tool, absent, present):
    code, lines, stdout = run("--help", tool=tool)
    text = " ".join(stdout.split())
    assert code == 0 and absent not in text and present in text


@pytest.mark.parametrize("args,code_expected,words", [(["--trt-ep", "--device", "cpu"], 2, "leave out --device cpu"),
                                                      (["--trt-ep", "--json"], 4, "--trt-ep")])
def test_the_tensorrt_ep_asked_for_is_never_a_silent_fallback(tmp_path, args, code_expected, words):
    """#24 item 2: --trt-ep where ONNX Runtime cannot run TensorRT is one line, and --json's stdout stays JSON."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers() and "--json" in args:
        pytest.skip("this onnxruntime has the TensorRT EP: the refusal of a missing one cannot be seen here")
    code, lines, stdout = run(mr_small(), "--output", tmp_path / "out", *args)
    assert refused(code, lines, code_expected, words), lines
    if "--json" in args:
        assert json.loads(stdout)["exit_code"] == code_expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("built,run_on,compatible,ok", [
    ("10.3.0", "10.3.0", False, True), ("10.3.0", "10.4.0", False, False), ("10.3.0", "10.8.0", True, True),
    ("10.3.0", "11.0.1", True, True), ("10.3.0", "12.0.0", True, False), ("8.6.1", "10.3.0", True, True),
    ("8.6.1", "11.0.0", True, False), ("10.3.0", "10.2.0", True, False)])
def test_version_compatible_plans_run_on_the_next_major_only(built, run_on, compatible, ok):
    """#24 item 8: TensorRT supports 8 -> 10 and 10 -> 11 for version-compatible plans, "no other combination"."""
    from mdrn_edge.errors import ModelFileError
    from mdrn_edge.runtime.sidecar import check_compatible

    sidecar = {"tensorrt_version": built, "version_compatible": compatible, "gpu": {"compute_capability": "8.7"}}
    device = {"compute_capability": "8.7", "name": "Orin"}
    if ok:
        check_compatible(sidecar, run_on, device, "m.engine")
    else:
        with pytest.raises(ModelFileError, match=f"built with TensorRT {built}, this is TensorRT {run_on}"):
            check_compatible(sidecar, run_on, device, "m.engine")


def test_an_engine_at_an_opset_past_the_parser_is_refused_before_any_work(tmp_path):
    """#24 item 10: TensorRT 10's ONNX parser documents opsets up to 20."""
    code, lines, _ = run("mdrn-x4", "--engine", "--opset", "21", "--output", tmp_path / "out", tool="export")
    assert refused(code, lines, 2, "--opset 21", "up to 20"), lines
    assert not (tmp_path / "out").exists()
